"""A crowd of clients changing one store at once, over HTTP, while the worker is ``kill -9``ed.

``Client.send`` sends a request until it is answered: a request that gets no answer (the
worker died with it) is sent again, and counted as unanswered, so its first try may or may not
have been applied. Only an answered 2xx is acknowledged. ``Ledger`` records what each client
was told (created, renamed, deleted), which is what the store must show afterwards. ``Killer``
kills the worker each time the clients are a given fraction through their work, right after an
acknowledgment and while other requests are under way, and waits for the supervisor's next
worker on the same port.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tests.support import Daemon, control_call, wait_until

# A request that goes unanswered this often in a row is not a kill's fault.
MAX_UNANSWERED = 5
SECONDS = 1.0
REQUEST_TIMEOUT = 30 * SECONDS
# A worker restart takes well under a second; a loaded CI machine gets some slack.
RESTART_TIMEOUT = 20 * SECONDS


@dataclass
class Answer:
    status: int
    document: Any
    # Tries before this one that got no answer (their effect may or may not be in the store).
    unanswered: int


class Client:
    """One window of the app: JSON over HTTP to the daemon, retrying what got no answer."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def send(self, method: str, path: str, body: Any = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        for unanswered in range(MAX_UNANSWERED + 1):
            try:
                status, _, raw = self.daemon.http(
                    method, path, body=data, headers=headers, timeout=REQUEST_TIMEOUT
                )
            except (ConnectionError, http.client.HTTPException):
                continue  # the worker died with it: the next worker answers the retry
            return Answer(status, json.loads(raw) if raw else None, unanswered)
        raise AssertionError(f"{method} {path} got no answer {MAX_UNANSWERED + 1} times")

    def expect(self, status: int, method: str, path: str, body: Any = None) -> Answer:
        answer = self.send(method, path, body)
        assert answer.status == status, (method, path, answer)
        return answer


@dataclass
class Ledger:
    """What the clients were told, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # id -> name as last acknowledged (created, then renamed).
    names: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # Ids some client has taken to delete (so two clients never delete one record).
    claimed: set[str] = field(default_factory=set)
    # Names whose create got no answer at least once: such a record may exist twice.
    unanswered_creates: set[str] = field(default_factory=set)
    unanswered: int = 0
    created: int = 0

    def note_created(self, record_id: str, name: str, answer: Answer) -> int:
        """Note an acknowledged create; returns how many there have been."""
        with self.lock:
            self.names[record_id] = name
            self.created += 1
            self.unanswered += answer.unanswered
            if answer.unanswered:
                self.unanswered_creates.add(name)
            return self.created

    def claim_one(self, chooser: random.Random) -> str | None:
        """A record to delete, acknowledged and not yet taken by anyone."""
        with self.lock:
            free = sorted(set(self.names) - self.claimed)
            if not free:
                return None
            choice = chooser.choice(free)
            self.claimed.add(choice)
            return choice

    def live(self) -> dict[str, str]:
        with self.lock:
            return {k: v for k, v in self.names.items() if k not in self.deleted}


class Killer:
    """Kills the worker ``kills`` times, evenly spread over the clients' work.

    A client calls ``acknowledged(progress)`` after each acknowledged change; the one whose
    change crosses the next mark kills the worker at once (so the store must already hold what
    it was just told: nothing may be written after the answer), then waits for the next worker.
    The other clients' requests under way at that moment die with the worker.
    """

    def __init__(self, daemon: Daemon, kills: int) -> None:
        self.daemon = daemon
        self.kills = kills
        self.killed: list[int] = []
        self._lock = threading.Lock()
        self._worker = daemon.worker_pid

    def acknowledged(self, progress: float) -> None:
        with self._lock:
            if len(self.killed) >= self.kills or progress < (len(self.killed) + 1) / (
                self.kills + 1
            ):
                return
            worker = self._worker
            os.kill(worker, signal.SIGKILL)
            self.killed.append(worker)

            def next_worker() -> int:
                status = control_call(self.daemon.home, "status")
                running = status["state"] == "running" and status["worker_pid"] != worker
                return int(status["worker_pid"]) if running and status["worker_pid"] else 0

            self._worker = wait_until(
                next_worker, RESTART_TIMEOUT, 0.01, f"a new worker after kill -9 of {worker}"
            )
            self.daemon.reaper.track(self._worker)


@contextlib.contextmanager
def killing(daemon: Daemon, kills: int) -> Iterator[Killer]:
    """A ``Killer`` for the block; fails the block if it did not kill ``kills`` times."""
    killer = Killer(daemon, kills)
    yield killer
    assert len(killer.killed) == kills, f"killed {len(killer.killed)} of {kills} workers"


def run_clients(count: int, work: Callable[[int], None]) -> None:
    """``work(client_number)`` in ``count`` threads at once; re-raises the first failure."""
    with ThreadPoolExecutor(count) as pool:
        for running in [pool.submit(work, number) for number in range(count)]:
            running.result()
