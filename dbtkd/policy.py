"""The daemon's states and its restart policy (DESIGN §2), as values and a pure decision.

``State`` is what ``status`` reports and what the supervisor is in. ``RestartPolicy.on_exit``
decides what follows a worker's exit, from what is known about that worker, with the clock and
the random source passed in so every rule is tested in microseconds:

- a worker that had become ready is restarted at once (``Restart``); one that stayed ready
  ``HEALTHY_AFTER`` first clears the record of failed starts and the backoff;
- a worker that exited with the fatal configuration status is not retried (``Fail``);
- one that died before it was ready is retried after a backoff (``Backoff``: 0.1 s, doubling
  to 10 s, ±20 % so several daemons do not retry in step), until more than
  ``START_FAILURE_BUDGET`` such failures fall within ``START_FAILURE_WINDOW`` (``Fail``).

Leaving ``failed`` (``dbtkctl restart``) starts afresh: ``clear``.
"""

from __future__ import annotations

import collections
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from dbtkd.units import SECONDS

BACKOFF_FIRST = 0.1 * SECONDS
BACKOFF_MAX = 10 * SECONDS
BACKOFF_JITTER = 0.2
START_FAILURE_BUDGET = 5
START_FAILURE_WINDOW = 60 * SECONDS
HEALTHY_AFTER = 10 * SECONDS


class State(enum.StrEnum):
    """The daemon's state; its value is what ``status`` and the state file say."""

    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass(frozen=True)
class Restart:
    """Start the next worker now."""


@dataclass(frozen=True)
class Backoff:
    """Start the next worker after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True)
class Fail:
    """Stop retrying: go to ``failed``. ``fatal``: the worker said retrying cannot help."""

    fatal: bool
    failures: int  # failed starts within the window, for the message


Decision = Restart | Backoff | Fail


class RestartPolicy:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._clock = clock
        self._jitter = jitter
        self._backoff = BACKOFF_FIRST
        self._failures: collections.deque[float] = collections.deque()

    @property
    def failures(self) -> int:
        return len(self._failures)

    def clear(self) -> None:
        self._backoff = BACKOFF_FIRST
        self._failures.clear()

    def on_exit(self, *, ready_since: float | None, fatal: bool) -> Decision:
        """What to do now that a worker exited. ``ready_since``: when it became ready (a
        ``clock`` value), None if it never did; ``fatal``: it exited with the status that
        means a configuration retrying cannot fix."""
        now = self._clock()
        if ready_since is not None:
            if now - ready_since >= HEALTHY_AFTER:
                self.clear()
            return Restart()
        if fatal:
            failures = self.failures + 1
            self._backoff = BACKOFF_FIRST
            return Fail(fatal=True, failures=failures)
        self._failures.append(now)
        while self._failures and now - self._failures[0] > START_FAILURE_WINDOW:
            self._failures.popleft()
        if len(self._failures) > START_FAILURE_BUDGET:
            self._backoff = BACKOFF_FIRST
            return Fail(fatal=False, failures=len(self._failures))
        delay = self._backoff * self._jitter(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        return Backoff(delay)
