"""The processes under one of ours, read from ``/proc``, and killing exactly those.

``snapshot`` reads every ``/proc/PID/stat`` once into ``Proc`` rows (parent, process group,
session, state, start time); ``children_of`` and ``descendants`` follow the parent links from
a pid. ``kill`` sends SIGKILL to the process a row describes and to no other: it opens a
pidfd first and then checks the start time again, so a pid that was reused since the row was
read (the old process exited and was reaped) is never signalled. Linux only: elsewhere a
snapshot is empty and callers fall back to process groups.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NamedTuple

from dbtkd.procstats import PGRP, PPID, SESSION, START_TIME, STATE, stat_entry

LINUX = sys.platform.startswith("linux")
# States of a process that has exited: a zombie (Z) waits for its parent's wait(); X is the
# moment it is being removed.
EXITED = ("Z", "X")


class Proc(NamedTuple):
    """One process as ``/proc/PID/stat`` described it when it was read."""

    pid: int
    ppid: int
    pgrp: int
    session: int
    state: str
    start_ticks: int  # clock ticks after boot: with the pid, tells it from a reused pid
    name: str

    @property
    def exited(self) -> bool:
        return self.state in EXITED

    def describe(self) -> str:
        return f"{self.name} ({self.pid})"


def read(pid: int) -> Proc | None:
    """``pid`` as it is now, or None if there is no such process (or no ``/proc``)."""
    entry = stat_entry(pid) if LINUX else None
    if entry is None:
        return None
    name, fields = entry
    try:
        return Proc(
            pid,
            int(fields[PPID]),
            int(fields[PGRP]),
            int(fields[SESSION]),
            fields[STATE],
            int(fields[START_TIME]),
            name,
        )
    except (IndexError, ValueError):
        return None


def snapshot() -> dict[int, Proc]:
    """Every process, by pid (empty where there is no ``/proc``)."""
    if not LINUX:
        return {}
    table = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                proc = read(int(name))
                if proc is not None:  # it exited between listdir and read: not there
                    table[proc.pid] = proc
    return table


def children_of(table: dict[int, Proc], parent: int) -> list[Proc]:
    return [proc for proc in table.values() if proc.ppid == parent]


def descendants(table: dict[int, Proc], root: int) -> list[Proc]:
    """Children of ``root``, their children, and so on (``root`` itself not included)."""
    by_parent: dict[int, list[Proc]] = {}
    for proc in table.values():
        by_parent.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    parents = [root]
    while parents:
        children = [child for pid in parents for child in by_parent.get(pid, ())]
        found += children
        parents = [child.pid for child in children]
    return found


def kill(proc: Proc) -> bool:
    """SIGKILL the process ``proc`` describes, if it still runs; True if a signal was sent.

    A pidfd pins the process: once it is open, checking the start time proves the pidfd is
    the process that was read, and a signal through it cannot reach anyone else.
    """
    if not sys.platform.startswith("linux"):  # snapshot() finds nothing elsewhere
        raise NotImplementedError("proctree reads /proc (Linux)")
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # a kernel before 5.3: the check and kill(2), as before
        pidfd = -1
    try:
        now = read(proc.pid)
        if now is None or now.start_ticks != proc.start_ticks or now.exited:
            return False
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False  # gone meanwhile, or it became another user's (a setuid program)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
