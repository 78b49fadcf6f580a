"""Memory and CPU of a process, read from ``/proc`` behind one seam.

``read(pid)`` is the only function that touches the OS; metrics and ``dbtkctl status`` call it
for the supervisor and the worker. Where ``/proc`` does not exist (macOS, Windows) it returns
what ``resource`` knows about ourselves and None for the rest, so callers never branch on the
OS. PSS (proportional set size) is the honest figure for two processes sharing a runtime: each
shared page is split between them instead of counted twice as RSS would.
"""

from __future__ import annotations

import os
from typing import TypedDict

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ProcStats(TypedDict):
    rss_bytes: int | None
    pss_bytes: int | None
    cpu_seconds: float | None


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
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rpartition(")")[2].split()
        # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
        stats["cpu_seconds"] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        if pid == os.getpid():
            import resource

            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return stats
