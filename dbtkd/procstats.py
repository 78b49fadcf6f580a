"""Processes as the OS reports them: alive or not, memory, CPU; ``/proc`` read in one place.

``stat_fields`` parses ``/proc/PID/stat`` (``stat_entry`` keeps the command name too);
``pid_alive`` says whether a pid still runs (a zombie has exited); ``read`` gives RSS, PSS and
CPU time for metrics and ``dbtkctl status``.
Stdlib only and typing-free at run time, because ``dbtkctl`` imports it. Where ``/proc``
does not exist (macOS, Windows) ``read`` returns what ``resource`` knows about ourselves and
None for the rest, so callers never branch on the OS. PSS (proportional set size) is the
honest figure for two processes sharing a runtime: each shared page is split between them
instead of counted twice as RSS would.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs dbtkctl ~2 ms at start-up; only annotations need it
if TYPE_CHECKING:
    from typing import TypedDict

    class ProcStats(TypedDict):
        rss_bytes: int | None
        pss_bytes: int | None
        cpu_seconds: float | None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Indexes into ``stat_fields`` (stat(5) field number minus 3: the list starts at "state").
STATE, PPID, PGRP, SESSION, UTIME, STIME, START_TIME = 0, 1, 2, 3, 11, 12, 19


def stat_entry(pid: int) -> tuple[str, list[str]] | None:
    """The command name and the fields after it of ``/proc/PID/stat``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read().decode("ascii", "replace")
    except OSError:
        return None
    # The name is in parentheses and may hold anything, ")" and spaces included.
    head, _, rest = raw.rpartition(")")
    return head.partition("(")[2], rest.split()


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (index 0 is the state), or None."""
    entry = stat_entry(pid)
    return entry[1] if entry else None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie (exited, not yet reaped by its parent) has exited.

    Never signals on Windows, where ``os.kill`` would terminate the process.
    """
    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = stat_fields(pid)
    if fields is None:
        return True  # no /proc (macOS): kill(0) is all we know
    return fields[STATE] not in ("Z", "X")


def _windows_pid_alive(pid: int) -> bool:  # pragma: no cover - Windows only, one seam
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
    process_query_limited_information = 0x1000
    still_active = 259
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return bool(kernel32.GetLastError() == 5)  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and (
            code.value == still_active
        )
    finally:
        kernel32.CloseHandle(handle)


def read(pid: int) -> ProcStats:
    """RSS, PSS and user+system CPU time of ``pid`` (None where the OS does not say)."""
    stats: ProcStats = {"rss_bytes": None, "pss_bytes": None, "cpu_seconds": None}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key == "Rss":
                    stats["rss_bytes"] = int(value.split()[0]) * 1024
                elif key == "Pss":
                    stats["pss_bytes"] = int(value.split()[0]) * 1024
        fields = stat_fields(pid)
        if fields is None:
            raise OSError(f"no /proc/{pid}/stat")
        stats["cpu_seconds"] = (int(fields[UTIME]) + int(fields[STIME])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        if pid == os.getpid() and sys.platform != "win32":
            import resource

            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return stats
