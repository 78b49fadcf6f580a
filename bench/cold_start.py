"""Cold start: ``dbtkctl port`` until the port is printed and ``GET /health`` answers 200.

No daemon running (a fresh temp ``DBTK_HOME`` per sample, ``--port-range 0``), page cache warm
after one unmeasured run of each side. The daemon is stopped with ``dbtkctl stop`` after each
sample, outside the measured interval. Compared with one per-window backend: spawn, parse
``BACKEND_PORT:<port>`` from its stdout, then poll ``GET /api/v1/health`` until 200 (refused
connections are retried every 1 ms; the same probe is used for both sides). Samples of the
two sides are interleaved, alternating which goes first.

Budget (issue 2): median ≤ 0.8x the per-window backend's median; issue 18 asks ≤ 0.7x.

A second figure, with no budget, is what the app itself waits for before its first call:
``dbtkctl port --json`` (port and token), then ``GET /api/v1/status`` with the token until 200.
The worker answers /health before it has imported the app (``dbtkd.app.loading``); this one
needs the whole app loaded and its jobs started. It is set against the same baseline figure,
whose backend has nothing but a health route.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from typing import Any

from bench.common import (
    START_DEADLINE,
    STOP_GRACE,
    Bench,
    BenchError,
    FigureResult,
    Row,
    Summary,
    progress,
    read_line,
    standalone,
    wait_http_200,
)

DEFAULT_SAMPLES = 10
QUICK_SAMPLES = 3
BUDGET = 0.8


def dbtkd_sample(bench: Bench, *, api: bool = False) -> dict[str, Any]:
    """One cold ``dbtkctl port --port-range 0`` → port line → ``GET /health`` 200; with ``api``,
    ``port --json`` → ``GET /api/v1/status`` with the token → 200."""
    home = bench.new_home()
    try:
        start = time.perf_counter()
        deadline = start + START_DEADLINE
        argv = [str(bench.dbtkctl), "port", "--port-range", "0", *(["--json"] if api else [])]
        proc = bench.popen(argv, home=home, name="dbtkctl-port")
        assert proc.stdout is not None
        try:
            line = read_line(proc.stdout, deadline)
        except BenchError as exc:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_GRACE)
            raise BenchError(f"dbtkctl port: {exc}\n{bench.stderr_of(proc)}") from None
        printed = time.perf_counter()
        if api:
            found = json.loads(line)
            headers = {"Authorization": f"Bearer {found['token']}"}
            attempts = wait_http_200(
                found["port"], "/api/v1/status", deadline=deadline, headers=headers
            )
        else:
            attempts = wait_http_200(int(line), "/health", deadline=deadline)
        healthy = time.perf_counter()
        code = proc.wait(START_DEADLINE)
        bench.reap(proc)
        if code != 0:
            raise BenchError(f"dbtkctl port exited {code}: {bench.stderr_of(proc)}")
        return {"total_s": healthy - start, "port_s": printed - start, "attempts": attempts}
    finally:
        bench.stop_daemon(home)


def baseline_sample(bench: Bench) -> dict[str, Any]:
    """One per-window backend: spawn → ``BACKEND_PORT:`` parsed → ``GET /api/v1/health`` 200."""
    start = time.perf_counter()
    deadline = start + START_DEADLINE
    proc = bench.spawn_baseline()
    try:
        port = bench.baseline_port(proc, deadline)
        printed = time.perf_counter()
        attempts = wait_http_200(port, "/api/v1/health", deadline=deadline)
        healthy = time.perf_counter()
    finally:
        bench.reap(proc)
    return {"total_s": healthy - start, "port_s": printed - start, "attempts": attempts}


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    n = samples or (QUICK_SAMPLES if bench.quick else DEFAULT_SAMPLES)
    progress("cold start: one unmeasured run of each side (page cache warm)")
    dbtkd_sample(bench)
    baseline_sample(bench)
    dbtkd: list[dict[str, Any]] = []
    api: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    for i in range(n):
        progress(f"cold start: sample {i + 1}/{n}")
        if i % 2 == 0:
            dbtkd.append(dbtkd_sample(bench))
            api.append(dbtkd_sample(bench, api=True))
            baseline.append(baseline_sample(bench))
        else:
            baseline.append(baseline_sample(bench))
            api.append(dbtkd_sample(bench, api=True))
            dbtkd.append(dbtkd_sample(bench))
    ours = Summary.of([s["total_s"] for s in dbtkd])
    ours_api = Summary.of([s["total_s"] for s in api])
    theirs = Summary.of([s["total_s"] for s in baseline])
    ratio = ours.median / theirs.median
    rows = [
        Row(
            figure=f"cold port -> health 200 (median of {n}, min-max)",
            dbtkd=ours.text(),
            baseline=theirs.text(),
            ratio=ratio,
            budget=f"<= {BUDGET:.2f}x",
            ok=ratio <= BUDGET,
        ),
        Row(
            figure=f"cold port --json -> /api/v1/status 200 (median of {n})",
            dbtkd=ours_api.text(),
            baseline=theirs.text(),
            ratio=ours_api.median / theirs.median,
        ),
    ]
    data = {
        "samples": n,
        "dbtkd": {"summary_s": vars(ours), "samples": dbtkd},
        "dbtkd_api": {"summary_s": vars(ours_api), "samples": api},
        "baseline": {"summary_s": vars(theirs), "samples": baseline},
        "ratio": ratio,
        "budget": BUDGET,
    }
    return FigureResult("cold_start", rows, data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
