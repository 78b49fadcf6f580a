"""The lease table (dbtkd/leases.py) on its own: attach, release, carry over a handoff with its
grace, what status lists and what a handoff carries; the real-daemon tests (test_leases.py,
tests/e2e/test_handoff.py) check the wiring."""

from __future__ import annotations

from typing import Any, cast

from dbtkd.control import Stream
from dbtkd.leases import Leases


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def stream(name: str) -> Stream:
    return cast(Stream, name)  # the table only hands streams back


def test_attach_and_release() -> None:
    leases = Leases(Clock())
    assert not leases.held()
    first = leases.attach("window-1", 101, stream("s1"))
    second = leases.attach("window-2", 102, stream("s2"))
    assert (first.id, second.id) == (1, 2)
    assert len(leases) == 2
    assert leases.held()
    assert leases.streams() == ["s1", "s2"]
    assert leases.release(first.id) is first
    assert leases.release(first.id) is None  # twice is harmless
    assert [c["pid"] for c in leases.clients()] == [102]
    leases.release(second.id)
    assert not leases.held()


def test_carried_leases_hold_for_the_grace_and_give_way_to_a_reattach() -> None:
    clock = Clock()
    leases = Leases(clock)
    carried: list[dict[str, Any]] = [
        {"name": "window-1", "pid": 101, "since": 1.0},
        {"name": "window-2", "pid": 102, "since": 2.0},
    ]
    leases.carry_over(carried, grace=10)
    assert len(leases) == 0  # carried ones are not clients yet
    assert leases.held()
    assert [(c["pid"], c.get("carried")) for c in leases.clients()] == [(101, True), (102, True)]
    leases.attach("window-1", 101, stream("s1"))  # re-attached: no longer carried
    assert [(c["pid"], c.get("carried")) for c in leases.clients()] == [(101, None), (102, True)]
    assert leases.snapshot() == [
        {"name": "window-1", "pid": 101, "since": leases.clients()[0]["since"]}
    ]
    leases.release(1)
    clock.now += 10.5  # past the grace: window-2 never came back
    assert not leases.held()
    assert leases.clients() == []
