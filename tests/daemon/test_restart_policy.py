"""Every rule of the restart policy (dbtkd/policy.py), with a hand-driven clock and no jitter,
in microseconds; the real-process tests (test_crash_policy.py) check the supervisor follows it."""

from __future__ import annotations

import pytest

from dbtkd.policy import (
    BACKOFF_FIRST,
    BACKOFF_JITTER,
    BACKOFF_MAX,
    HEALTHY_AFTER,
    START_FAILURE_BUDGET,
    START_FAILURE_WINDOW,
    Backoff,
    Fail,
    Restart,
    RestartPolicy,
    State,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: Clock, factor: float = 1.0) -> RestartPolicy:
    return RestartPolicy(clock=clock, jitter=lambda low, high: factor)


def test_a_worker_that_was_ready_is_restarted_at_once() -> None:
    clock = Clock()
    assert policy(clock).on_exit(ready_since=clock.now - 1, fatal=False) == Restart()


def test_failed_starts_back_off_doubling_to_the_cap() -> None:
    clock = Clock()
    rules = policy(clock)
    delays = []
    for _ in range(START_FAILURE_BUDGET):
        decision = rules.on_exit(ready_since=None, fatal=False)
        assert isinstance(decision, Backoff)
        delays.append(decision.delay)
        clock.now += 100  # outside the window: never failed
    assert delays == [BACKOFF_FIRST * 2**n for n in range(START_FAILURE_BUDGET)]
    for _ in range(10):
        decision = rules.on_exit(ready_since=None, fatal=False)
        clock.now += 100
    assert decision == Backoff(BACKOFF_MAX)


@pytest.mark.parametrize("factor", [1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER])
def test_the_jitter_is_twenty_percent_either_way(factor: float) -> None:
    clock = Clock()
    seen: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        seen.append((low, high))
        return factor

    decision = RestartPolicy(clock=clock, jitter=jitter).on_exit(ready_since=None, fatal=False)
    assert seen == [(0.8, 1.2)]
    assert decision == Backoff(BACKOFF_FIRST * factor)


def test_the_sixth_failed_start_within_a_minute_is_failed() -> None:
    clock = Clock()
    rules = policy(clock)
    for _ in range(START_FAILURE_BUDGET):
        assert isinstance(rules.on_exit(ready_since=None, fatal=False), Backoff)
        clock.now += 1
    assert rules.on_exit(ready_since=None, fatal=False) == Fail(
        fatal=False, failures=START_FAILURE_BUDGET + 1
    )


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    rules = policy(clock)
    for _ in range(START_FAILURE_BUDGET):
        rules.on_exit(ready_since=None, fatal=False)
        clock.now += 1
    clock.now += START_FAILURE_WINDOW  # all of them now older than a minute
    assert isinstance(rules.on_exit(ready_since=None, fatal=False), Backoff)
    assert rules.failures == 1


def test_a_fatal_configuration_exit_fails_at_once() -> None:
    clock = Clock()
    assert policy(clock).on_exit(ready_since=None, fatal=True) == Fail(fatal=True, failures=1)


def test_a_worker_ready_long_enough_resets_backoff_and_failures() -> None:
    clock = Clock()
    rules = policy(clock)
    for _ in range(3):
        rules.on_exit(ready_since=None, fatal=False)
    assert rules.failures == 3
    ready_at = clock.now
    clock.now += HEALTHY_AFTER
    assert rules.on_exit(ready_since=ready_at, fatal=False) == Restart()
    assert rules.failures == 0
    assert rules.on_exit(ready_since=None, fatal=False) == Backoff(BACKOFF_FIRST)


def test_a_worker_ready_briefly_keeps_the_record() -> None:
    clock = Clock()
    rules = policy(clock)
    for _ in range(3):
        rules.on_exit(ready_since=None, fatal=False)
    ready_at = clock.now
    clock.now += HEALTHY_AFTER - 0.001
    assert rules.on_exit(ready_since=ready_at, fatal=False) == Restart()
    assert rules.failures == 3
    assert rules.on_exit(ready_since=None, fatal=False) == Backoff(BACKOFF_FIRST * 8)


def test_leaving_failed_starts_afresh() -> None:
    clock = Clock()
    rules = policy(clock)
    for _ in range(START_FAILURE_BUDGET + 1):
        decision = rules.on_exit(ready_since=None, fatal=False)
    assert isinstance(decision, Fail)
    rules.clear()
    assert rules.on_exit(ready_since=None, fatal=False) == Backoff(BACKOFF_FIRST)


def test_states_are_their_names_on_the_wire() -> None:
    assert [str(s) for s in State] == ["starting", "running", "failed", "stopping"]
    assert State.RUNNING == "running"
