"""Restart storm: 50 ``kill -9`` of the ready worker in a row, under 4 hammering clients.

One daemon (``dbtkctl port --port-range 0``). Four client threads send ``GET /health`` to
127.0.0.1:PORT in a tight loop for the whole storm, a new connection per request
(``restart_gap.probe``: ``http.client``, 5 s timeout), each recording every attempt's start,
end and outcome. The bench then repeats, 50 times (``--quick`` 10): wait until
``dbtkctl status --json`` shows a running (hence ready) worker that was not killed yet, let
0.1 s of traffic reach it, SIGKILL it.

Per kill the gap is the time from the kill to the end of the first 200 to a request (from
any of the four threads) that *started* after the kill, so it cannot have come from the
killed worker (as in ``restart_gap``, this errs long by at most one request). Over the whole
storm, every request is counted once by outcome: refused (``ConnectionRefusedError``), reset
(``ConnectionResetError``, which includes ``RemoteDisconnected``, ``BrokenPipeError``, or
``IncompleteRead``: a request the killed worker had accepted), delayed (a 200 that took more
than 50 ms: typically one waiting in the listening socket's backlog for the new worker), fast
200, other. The requests of each kill are those started between it and the next one.

Budget (issue 3): median gap ≤ 150 ms and 0 refused connections.
"""

from __future__ import annotations

import bisect
import os
import signal
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    HTTP_TIMEOUT,
    MS,
    Bench,
    BenchError,
    FigureResult,
    Row,
    Summary,
    progress,
    standalone,
)
from bench.restart_gap import OK, probe

DEFAULT_KILLS = 50
QUICK_KILLS = 10
CLIENTS = 4
LEAD_IN = 0.1  # seconds of traffic to each new worker before it is killed
DELAYED_S = 0.050
RECOVERY_DEADLINE = 15.0
NEW_WORKER_DEADLINE = 15.0
STATUS_POLL = 0.02
BUDGET_S = 0.150
DELAYED = "delayed"

# One request: (start, end, outcome), perf_counter seconds.
Attempt = tuple[float, float, str]


class Storm:
    """``CLIENTS`` threads running ``probe`` in a loop until ``halt``.

    ``recovered`` is set at the first 200 to a request started at or after ``kill_at``.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts: list[list[Attempt]] = [[] for _ in range(CLIENTS)]
        self.kill_at = float("inf")
        self.recovered = threading.Event()
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"storm-{i}", daemon=True)
            for i in range(CLIENTS)
        ]

    def _loop(self, index: int) -> None:
        mine = self.attempts[index]
        while not self.halt.is_set():
            start = time.perf_counter()
            outcome = probe(self.port)
            end = time.perf_counter()
            mine.append((start, end, outcome))
            if outcome == OK and start >= self.kill_at:
                self.recovered.set()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(HTTP_TIMEOUT + 1)

    def all_attempts(self) -> list[Attempt]:
        return sorted(attempt for mine in self.attempts for attempt in list(mine))


def _kind(attempt: Attempt) -> str:
    start, end, outcome = attempt
    if outcome == OK:
        return DELAYED if end - start > DELAYED_S else OK
    return outcome if outcome in ("refused", "reset") else "other"


def _ready_worker(bench: Bench, home: Path, killed: set[int]) -> int:
    """The pid of a running worker not killed yet (``running`` means it answered its probe)."""
    deadline = time.perf_counter() + NEW_WORKER_DEADLINE
    while True:
        status = bench.status(home)
        pid = status.get("worker_pid")
        if status["state"] == "running" and pid is not None and pid not in killed:
            return int(pid)
        if time.perf_counter() > deadline:
            raise BenchError(f"no new running worker after {len(killed)} kills: {status}")
        time.sleep(STATUS_POLL)


def _storm(bench: Bench, home: Path, port: int, kills: int) -> tuple[list[Attempt], list[float]]:
    storm = Storm(port)
    killed: set[int] = set()
    kill_times: list[float] = []
    storm.start()
    try:
        for i in range(kills):
            worker = _ready_worker(bench, home, killed)
            time.sleep(LEAD_IN)
            if i % 10 == 0:
                progress(f"restart storm: kill {i + 1}/{kills}")
            storm.kill_at = float("inf")  # no thread may set recovered for the last kill
            storm.recovered.clear()
            storm.kill_at = kill_at = time.perf_counter()
            os.kill(worker, signal.SIGKILL)
            killed.add(worker)
            kill_times.append(kill_at)
            if not storm.recovered.wait(RECOVERY_DEADLINE):
                raise BenchError(f"kill {i + 1}: no 200 within {RECOVERY_DEADLINE} s")
        _ready_worker(bench, home, killed)
    finally:
        storm.stop()
    return storm.all_attempts(), kill_times


def _per_kill(attempts: list[Attempt], kill_times: list[float]) -> list[dict[str, Any]]:
    """Each kill's gap, and the outcomes of the requests that *ended* before the next kill."""
    ended: list[list[Attempt]] = [[] for _ in kill_times]
    for attempt in attempts:
        index = bisect.bisect_right(kill_times, attempt[1]) - 1
        if index >= 0:
            ended[index].append(attempt)
    kills = []
    for i, kill_at in enumerate(kill_times):
        first = next((a for a in ended[i] if a[2] == OK and a[0] >= kill_at), None)
        if first is None:
            raise BenchError(f"kill {i + 1}: no 200 to a request started after it")
        kills.append(
            {
                "gap_s": first[1] - kill_at,
                "requests": len(ended[i]),
                "outcomes": dict(Counter(_kind(a) for a in ended[i])),
                "not_fast_ms_from_kill": [
                    {
                        "start_ms": round((a[0] - kill_at) * MS, 2),
                        "end_ms": round((a[1] - kill_at) * MS, 2),
                        "outcome": _kind(a),
                    }
                    for a in ended[i]
                    if _kind(a) != OK
                ],
            }
        )
    return kills


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    n = samples or (QUICK_KILLS if bench.quick else DEFAULT_KILLS)
    home = bench.new_home()
    try:
        port = int(bench.start_daemon(home)["port"])
        attempts, kill_times = _storm(bench, home, port, n)
        final = bench.status(home)
    finally:
        bench.stop_daemon(home)
    if final["port"] != port:
        raise BenchError(f"the port changed during the storm: {port} -> {final['port']}")
    kills = _per_kill(attempts, kill_times)
    gaps = [k["gap_s"] for k in kills]
    gap = Summary.of(gaps)
    kinds = Counter(_kind(a) for a in attempts)
    slowest = max(end - start for start, end, _ in attempts)
    not_applicable = "n/a (no restart)"
    rows = [
        Row(
            figure=f"restart storm: gap per kill -9, {CLIENTS} clients (median of {n}, min-max)",
            dbtkd=gap.text(),
            baseline=not_applicable,
            budget=f"<= {BUDGET_S * MS:.0f} ms",
            ok=gap.median <= BUDGET_S,
        ),
        Row(
            figure=f"restart storm: refused / reset / delayed >{DELAYED_S * MS:.0f} ms ({n} kills)",
            dbtkd=(
                f"{kinds['refused']} / {kinds['reset']} / {kinds[DELAYED]} "
                f"(other {kinds['other']}; {len(attempts)} requests)"
            ),
            baseline=not_applicable,
            budget="0 refused",
            ok=kinds["refused"] == 0,
        ),
    ]
    data = {
        "kills": kills,
        "gap_s": vars(gap),
        "gap_p90_s": statistics.quantiles(gaps, n=10)[-1] if len(gaps) > 1 else gaps[0],
        "clients": CLIENTS,
        "requests_total": len(attempts),
        "refused_total": kinds["refused"],
        "reset_total": kinds["reset"],
        "delayed_total": kinds[DELAYED],
        "other_total": kinds["other"],
        "ok_fast_total": kinds[OK],
        "slowest_request_s": slowest,
        "delayed_threshold_s": DELAYED_S,
        "restarts": final.get("restarts"),
        "final_state": final["state"],
        "port": port,
        "budget_s": BUDGET_S,
    }
    return FigureResult("restart_storm", rows, data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
