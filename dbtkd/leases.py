"""The clients holding the daemon: one lease per attached window, in one place.

A lease lasts as long as its ``attach`` connection (the window's process). While any lease is
held the daemon does not exit for idleness. After a version handoff the successor starts with
the predecessor's leases *carried*: held for ``handoff.LEASE_GRACE`` so its windows have time to
re-attach, each dropped as soon as the same pid attaches again. Status lists both kinds; a
handoff hands on the active ones (``snapshot``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbtkd.control import Stream
from dbtkd.wire import LeaseRecord


@dataclass
class Lease:
    id: int
    name: str
    pid: int
    since: float  # wall-clock time of the attach
    stream: Stream

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "pid": self.pid, "since": self.since}


class Leases:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._active: dict[int, Lease] = {}
        self._carried: list[dict[str, Any]] = []  # {name, pid, since, until (clock)}
        self._ids = 0

    def __len__(self) -> int:
        """Active leases (carried ones are not clients yet)."""
        return len(self._active)

    def attach(self, name: str, pid: int, stream: Stream) -> Lease:
        self._ids += 1
        lease = self._active[self._ids] = Lease(self._ids, name, pid, time.time(), stream)
        # A window re-attaching after a handoff replaces the lease carried over for it.
        self._carried = [c for c in self._carried if c["pid"] != pid]
        return lease

    def release(self, lease_id: int) -> Lease | None:
        return self._active.pop(lease_id, None)

    def carry_over(self, carried: list[dict[str, Any]], grace: float) -> None:
        """The predecessor's leases (``snapshot``), held ``grace`` seconds from now."""
        until = self._clock() + grace
        self._carried = [
            {"name": c["name"], "pid": c["pid"], "since": c["since"], "until": until}
            for c in carried
        ]

    def held(self) -> bool:
        """Whether any lease, active or carried (not yet expired), keeps the daemon up."""
        now = self._clock()
        self._carried = [c for c in self._carried if c["until"] > now]
        return bool(self._active or self._carried)

    def snapshot(self) -> list[LeaseRecord]:
        """What a handoff carries to the successor."""
        return [
            {"name": lease.name, "pid": lease.pid, "since": lease.since}
            for lease in self._active.values()
        ]

    def clients(self) -> list[dict[str, Any]]:
        """Status's ``clients``: active leases, then carried ones (``carried: true``)."""
        return [lease.public() for lease in self._active.values()] + [
            {"name": c["name"], "pid": c["pid"], "since": c["since"], "carried": True}
            for c in self._carried
        ]

    def streams(self) -> list[Stream]:
        """Where to tell every attached window about a state change."""
        return [lease.stream for lease in self._active.values()]
