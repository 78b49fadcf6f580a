"""Watchdog detection: a hung worker until its replacement runs, for a blocked loop and SIGSTOP.

One daemon, ``dbtkd --port-range 0 --watchdog-timeout 2`` started directly (like the
watchdog tests) with ``DBTK_TEST_FAULTS=block``, which adds ``POST /api/v1/_test/block``.
Rounds alternate two hangs, 5 of each (``--quick`` 2):

- **blocked loop**: a thread sends ``POST /api/v1/_test/block?seconds=60`` with the token
  (``http.client``, new connection); the handler sleeps on the worker's event loop, so the
  worker stops answering the supervisor's pings. The request is cut when the worker is killed.
  The clock starts just before the request is sent.
- **SIGSTOP**: the worker (pid from ``dbtkctl status --json``) gets SIGSTOP; the clock starts
  just before ``os.kill``.

The clock stops at the end of the first ``dbtkctl status --json`` showing ``running`` with
another worker pid; the new worker has then answered its readiness probe. Status is polled
from the watchdog timeout on (nothing can replace the worker earlier, and polling meanwhile
would only take CPU from the restart), 50 ms apart, so the figure errs long by at most one
poll step: a status call plus 50 ms (the largest is shown as "poll step"; ``resolution_s`` per
round). Expected: the watchdog timeout (2 s; silence is checked every
timeout/4, so 2-2.5 s) + the 1 s wait for a stack dump + the restart. Each round checks that
status counts one more ``watchdog`` restart.

No budget: issue 3 sets none for this figure (item 2 asks only that the hung worker be
replaced); the per-window backend has no watchdog, so nothing replaces it there.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    MS,
    START_DEADLINE,
    Bench,
    BenchError,
    FigureResult,
    Row,
    Summary,
    progress,
    read_line,
    standalone,
)

WATCHDOG_TIMEOUT = 2.0
DUMP_WAIT = 1.0  # dbtkd.workerhandle.DUMP_WAIT: how long the supervisor waits for a stack dump
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2
BLOCK_SECONDS = 60
BLOCK_TIMEOUT = 30.0
DETECT_DEADLINE = 20.0
STATUS_POLL = 0.05
PORT_PREFIX = "BACKEND_PORT:"
BLOCK, STOP = "blocked loop", "SIGSTOP"


def _block(port: int, token: str) -> None:
    """``POST /api/v1/_test/block``: the worker is killed under it, so any end is expected."""
    conn = http.client.HTTPConnection(HOST, port, timeout=BLOCK_TIMEOUT)
    try:
        conn.request(
            "POST",
            f"/api/v1/_test/block?seconds={BLOCK_SECONDS}",
            headers={"Authorization": f"Bearer {token}"},
        )
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()


def _replaced(bench: Bench, home: Path, old: int, started: float) -> dict[str, Any]:
    """Poll status until a new worker runs; the time from ``started`` and the poll's step."""
    deadline = started + DETECT_DEADLINE
    # Nothing replaces a hung worker before the timeout: polling meanwhile only burns CPU.
    time.sleep(max(0.0, started + WATCHDOG_TIMEOUT - time.perf_counter()))
    previous_end = time.perf_counter()
    while True:
        status = bench.status(home)
        end = time.perf_counter()
        if status["state"] == "running" and status["worker_pid"] not in (None, old):
            return {
                "detect_s": end - started,
                "resolution_s": end - previous_end,
                "new_worker": status["worker_pid"],
                "restarts": status.get("restarts", {}),
            }
        if end > deadline:
            raise BenchError(f"worker {old} not replaced within {DETECT_DEADLINE} s: {status}")
        previous_end = end
        time.sleep(STATUS_POLL)


def one_round(bench: Bench, home: Path, port: int, token: str, hang: str) -> dict[str, Any]:
    status = bench.status(home)
    if status["state"] != "running":
        raise BenchError(f"daemon not running: {status}")
    old = int(status["worker_pid"])
    watchdog_before = int(status.get("restarts", {}).get("watchdog", 0))
    blocker: threading.Thread | None = None
    result: dict[str, Any] | None = None
    try:
        if hang == BLOCK:
            blocker = threading.Thread(target=_block, args=(port, token), daemon=True)
            started = time.perf_counter()
            blocker.start()
        else:
            started = time.perf_counter()
            os.kill(old, signal.SIGSTOP)
        result = _replaced(bench, home, old, started)
    finally:
        if hang == STOP and result is None:
            # Not replaced: let the stopped worker go on (it is killed with its home anyway).
            # Once replaced it was killed and reaped, and its pid may belong to another process.
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGCONT)
        if blocker is not None:
            blocker.join(BLOCK_TIMEOUT + 1)
    watchdog_after = int(result["restarts"].get("watchdog", 0))
    if watchdog_after != watchdog_before + 1:
        raise BenchError(
            f"{hang}: expected one more watchdog restart, got {result['restarts']} "
            f"(before: {watchdog_before})"
        )
    return {"hang": hang, "old_worker": old, **result}


def _start(bench: Bench, home: Path) -> subprocess.Popen[bytes]:
    """Start dbtkd in the foreground with the test switch (not waiting for it)."""
    return bench.popen(
        [
            bench.project_venv / "bin" / "dbtkd",
            "--port-range",
            "0",
            "--watchdog-timeout",
            f"{WATCHDOG_TIMEOUT:g}",
        ],
        home=home,
        name="dbtkd-watchdog",
        extra_env={"DBTK_TEST_FAULTS": "block"},
    )


def _port_and_token(bench: Bench, home: Path, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Wait for ``BACKEND_PORT:`` on the daemon's stdout, then ask ``dbtkctl port`` the token."""
    assert proc.stdout is not None
    deadline = time.perf_counter() + START_DEADLINE
    while True:
        try:
            line = read_line(proc.stdout, deadline)
        except BenchError as exc:
            raise BenchError(f"dbtkd: {exc}\n{bench.stderr_of(proc)}") from None
        if line.startswith(PORT_PREFIX):
            break
    port = int(line.removeprefix(PORT_PREFIX))
    document = bench.start_daemon(home)  # the daemon runs: this only asks for port and token
    if int(document["port"]) != port:
        raise BenchError(f"dbtkctl port says {document['port']}, dbtkd printed {port}")
    return port, str(document["token"])


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    n = samples or (QUICK_ROUNDS if bench.quick else DEFAULT_ROUNDS)
    home = bench.new_home()
    rounds: list[dict[str, Any]] = []
    proc = _start(bench, home)
    try:
        port, token = _port_and_token(bench, home, proc)
        for i in range(n):
            for hang in (BLOCK, STOP):
                progress(f"watchdog detect: round {i + 1}/{n}, {hang}")
                rounds.append(one_round(bench, home, port, token, hang))
    finally:
        bench.stop_daemon(home)
        bench.reap(proc)
    rows = []
    data: dict[str, Any] = {
        "rounds": rounds,
        "watchdog_timeout_s": WATCHDOG_TIMEOUT,
        "dump_wait_s": DUMP_WAIT,
    }
    for hang, what in ((BLOCK, "POST _test/block"), (STOP, "SIGSTOP of the worker")):
        mine = [r for r in rounds if r["hang"] == hang]
        detect = Summary.of([r["detect_s"] for r in mine])
        resolution = max(r["resolution_s"] for r in mine)
        data[hang] = {"detect_s": vars(detect), "worst_resolution_s": resolution}
        rows.append(
            Row(
                figure=(
                    f"watchdog {WATCHDOG_TIMEOUT:g} s: {what} -> new worker running "
                    f"(median of {n}, min-max)"
                ),
                dbtkd=(
                    f"{detect.text(unit='s', scale=1.0, digits=2)}; "
                    f"poll step <= {resolution * MS:.0f} ms"
                ),
                baseline="n/a (no watchdog)",
                budget=f"none (expect ~{WATCHDOG_TIMEOUT + DUMP_WAIT:g} s + restart)",
            )
        )
    return FigureResult("watchdog_detect", rows, data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
