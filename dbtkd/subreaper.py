"""The supervisor as the child subreaper of every program its workers start (Linux).

``PR_SET_CHILD_SUBREAPER`` makes the kernel hand the supervisor, instead of init, any process
below it whose parent dies. Each program a worker starts is a subreaper too
(``dbtkd.app.programs``), so what a program starts stays under it while it runs, and reaches
the supervisor only when the program is gone: it exited, was killed with its job, or died with
a worker killed by ``kill -9`` (``PR_SET_PDEATHSIG``). So the rule is simple: **every child of
the supervisor that is not one of its workers is left over from a program that has ended**.
``Subreaper.sweep`` SIGKILLs each one that runs and reaps each one that has exited.

A sweep runs when the worker exits, on SIGCHLD (an adopted process died, or one was handed
over already dead), when the worker says one of its programs exited (its leftovers arrived
silently: adopting a live process sends no signal), and until none is left when the
supervisor stops. Each killed process dies into SIGCHLD, which sweeps again and takes the
processes it had started in turn, so a tree of any depth goes in a few milliseconds.

Only pids read as our children are touched: the kernel reparents nothing but our own
descendants to us, and a child's pid cannot be reused until we reap it, so the pid read is
the process signalled. The worker's exit status is never taken: its pid is skipped, and every
wait here names one pid (``waitpid(pid)``, never ``-1``), so ``dbtkd.workerhandle`` still
collects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable

from dbtkd import proctree

PR_SET_CHILD_SUBREAPER = 36
LINUX = sys.platform.startswith("linux")
NAMES_LOGGED = 10  # a fork bomb's leftovers must not flood the log line

log = logging.getLogger("dbtkd.supervisor")


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants; False where there is none."""
    if not LINUX:
        return False
    import ctypes

    return bool(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class Subreaper:
    """Kills and reaps the processes the supervisor adopted; ``workers`` says which of its
    children are workers (never touched)."""

    def __init__(self, workers: Callable[[], Iterable[int]]) -> None:
        self._workers = workers
        self._scheduled = False
        self._settled = asyncio.Event()  # set by a sweep that found nothing running

    def sweep(self) -> int:
        """SIGKILL every adopted child that runs, reap every one that has exited; returns how
        many were running (0: nothing is left but what this sweep reaped)."""
        if sys.platform == "win32":  # Linux only: a Windows worker's job object does this
            raise NotImplementedError("the subreaper is Linux's")
        keep = set(self._workers())
        me = os.getpid()
        adopted = [p for p in proctree.children_of(proctree.snapshot(), me) if p.pid not in keep]
        running = [proc for proc in adopted if not proc.exited]
        for proc in adopted:
            if proc.exited:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, os.WNOHANG)
        killed = []
        for proc in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(proc.describe())
        if killed:
            more = f" and {len(killed) - NAMES_LOGGED} more" if len(killed) > NAMES_LOGGED else ""
            log.warning(
                "killed %d process(es) left running by a program that ended: %s%s",
                len(killed),
                ", ".join(killed[:NAMES_LOGGED]),
                more,
            )
        if running:
            self._settled.clear()  # each dies into a SIGCHLD, and a sweep that goes on
        else:
            self._settled.set()
        return len(running)

    def schedule(self) -> None:
        """Sweep soon, once however many requests (SIGCHLD, notices) arrive meanwhile."""
        if self._scheduled:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._scheduled_sweep)

    def _scheduled_sweep(self) -> None:
        self._scheduled = False
        self.sweep()

    async def drain(self, within: float) -> None:
        """Sweep until nothing adopted is left (or ``within`` seconds have passed).

        Needs ``schedule`` on SIGCHLD: each death sweeps again, until a sweep finds none.
        """
        if self.sweep():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), within)
