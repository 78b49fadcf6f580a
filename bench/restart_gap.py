"""Worker restart gap: ``kill -9`` of the worker until the new worker answers ``GET /health``.

A client thread sends ``GET /health`` to 127.0.0.1:PORT in a tight loop, a new connection
each time (``http.client``, 5 s timeout), and records each attempt's start, end and outcome:
200, another status, refused (``ConnectionRefusedError``), reset (a connection the killed
worker had accepted: ``ConnectionResetError``, which includes ``RemoteDisconnected``,
``BrokenPipeError`` or ``IncompleteRead``), timeout or other error. After
some traffic the worker (pid from ``dbtkctl status --json``) gets SIGKILL. The gap is the time
from the kill until the first 200 to a request that *started* after the kill: that one cannot
have been answered by the killed worker (a request already queued in the listening socket's
backlog at the kill may be answered by the new worker a little earlier, so this errs long,
by at most one request's duration). Between rounds the bench waits until status shows a new
running worker. Each round counts every outcome.

Budget (issue 2): median gap ≤ 150 ms and 0 refused connections.

The same rounds are run again with ``GET /api/v1/status`` and the token instead of /health,
reported without a budget: a new worker answers /health while it still imports the app
(``dbtkd.app.loading``), and this is when the app itself is back.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    HTTP_TIMEOUT,
    Bench,
    BenchError,
    FigureResult,
    Row,
    Summary,
    progress,
    standalone,
)

DEFAULT_ROUNDS = 10
QUICK_ROUNDS = 3
LEAD_IN = 0.2  # seconds of traffic to the old worker before the kill
RECOVERY_DEADLINE = 15.0
NEW_WORKER_DEADLINE = 15.0
STATUS_POLL = 0.05
BUDGET_S = 0.150
OK = "200"


@dataclass
class Attempt:
    start: float
    end: float
    outcome: str


HEALTH = "/health"
API = "/api/v1/status"


def probe(port: int, path: str = HEALTH, headers: dict[str, str] | None = None) -> str:
    """One ``GET path`` on a new connection; the outcome as a short word."""
    conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return OK if response.status == 200 else f"status {response.status}"
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError, http.client.IncompleteRead):
        return "reset"
    except TimeoutError:
        return "timeout"
    except (OSError, http.client.HTTPException) as exc:
        return f"error {type(exc).__name__}"
    finally:
        conn.close()


class Hammer(threading.Thread):
    """The client: ``probe`` in a loop until told to stop.

    Sets ``recovered`` at the first 200 to a request started at or after ``kill_at``.
    """

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        super().__init__(name="hammer", daemon=True)
        self.port = port
        self.path = path
        self.headers = headers
        self.attempts: list[Attempt] = []
        self.kill_at: float | None = None
        self.first_ok = threading.Event()
        self.recovered = threading.Event()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            start = time.perf_counter()
            outcome = probe(self.port, self.path, self.headers)
            end = time.perf_counter()
            self.attempts.append(Attempt(start, end, outcome))
            if outcome == OK:
                self.first_ok.set()
                if self.kill_at is not None and start >= self.kill_at:
                    self.recovered.set()


def _wait_new_worker(bench: Bench, home: Path, old: int) -> dict[str, Any]:
    deadline = time.perf_counter() + NEW_WORKER_DEADLINE
    while True:
        status = bench.status(home)
        if status["state"] == "running" and status["worker_pid"] not in (None, old):
            return status
        if time.perf_counter() > deadline:
            raise BenchError(f"no new running worker after killing {old}: {status}")
        time.sleep(STATUS_POLL)


def one_round(
    bench: Bench, home: Path, port: int, path: str = HEALTH, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    status = bench.status(home)
    if status["state"] != "running":
        raise BenchError(f"daemon not running: {status}")
    old = int(status["worker_pid"])
    hammer = Hammer(port, path, headers or {})
    hammer.start()
    try:
        if not hammer.first_ok.wait(RECOVERY_DEADLINE):
            raise BenchError(f"no 200 from the worker before the kill: {hammer.attempts[-3:]}")
        time.sleep(LEAD_IN)
        hammer.kill_at = kill_at = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        recovered = hammer.recovered.wait(RECOVERY_DEADLINE)
    finally:
        hammer.halt.set()
        hammer.join(HTTP_TIMEOUT + 1)
    attempts = list(hammer.attempts)
    if not recovered:
        raise BenchError(f"no 200 within {RECOVERY_DEADLINE} s of the kill: {attempts[-3:]}")
    first = next(a for a in attempts if a.outcome == OK and a.start >= kill_at)
    outcomes = Counter(a.outcome for a in attempts)
    new = _wait_new_worker(bench, home, old)
    return {
        "gap_s": first.end - kill_at,
        "old_worker": old,
        "new_worker": new["worker_pid"],
        "requests": len(attempts),
        "refused": outcomes["refused"],
        "reset": outcomes["reset"],
        "other": sum(
            n for outcome, n in outcomes.items() if outcome not in (OK, "refused", "reset")
        ),
        "outcomes": dict(outcomes),
        "failures_ms_from_kill": [
            {
                "start_ms": (a.start - kill_at) * 1000,
                "end_ms": (a.end - kill_at) * 1000,
                "outcome": a.outcome,
            }
            for a in attempts
            if a.outcome != OK
        ],
        "restarts": new.get("restarts"),
    }


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    n = samples or (QUICK_ROUNDS if bench.quick else DEFAULT_ROUNDS)
    home = bench.new_home()
    rounds: list[dict[str, Any]] = []
    api_rounds: list[dict[str, Any]] = []
    try:
        started = bench.start_daemon(home)
        port = int(started["port"])
        for i in range(n):
            progress(f"restart gap: round {i + 1}/{n}")
            rounds.append(one_round(bench, home, port))
        token = {"Authorization": f"Bearer {started['token']}"}
        for i in range(n):
            progress(f"restart gap, {API}: round {i + 1}/{n}")
            api_rounds.append(one_round(bench, home, port, API, token))
    finally:
        bench.stop_daemon(home)
    gap = Summary.of([r["gap_s"] for r in rounds])
    api_gap = Summary.of([r["gap_s"] for r in api_rounds])
    refused = sum(r["refused"] for r in rounds)
    reset = sum(r["reset"] for r in rounds)
    other = sum(r["other"] for r in rounds)
    requests = sum(r["requests"] for r in rounds)
    not_applicable = "n/a (no restart)"
    rows = [
        Row(
            figure=f"restart gap after kill -9 of worker (median of {n}, min-max)",
            dbtkd=gap.text(),
            baseline=not_applicable,
            budget=f"<= {BUDGET_S * 1000:.0f} ms",
            ok=gap.median <= BUDGET_S,
        ),
        Row(
            figure=f"refused connections during {n} restarts",
            dbtkd=f"{refused} (resets {reset}, other {other}; {requests} requests)",
            baseline=not_applicable,
            budget="0",
            ok=refused == 0,
        ),
        Row(
            figure=f"restart gap to GET {API} 200 (median of {n}, min-max)",
            dbtkd=api_gap.text(),
            baseline=not_applicable,
        ),
    ]
    data = {
        "rounds": rounds,
        "api_rounds": api_rounds,
        "api_gap_s": vars(api_gap),
        "gap_s": vars(gap),
        "refused_total": refused,
        "reset_total": reset,
        "other_total": other,
        "requests_total": requests,
        "budget_s": BUDGET_S,
    }
    return FigureResult("restart_gap", rows, data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
