"""Memory: PSS (and RSS) of all the daemon's processes vs 1, 4 and 8 per-window backends.

Read from ``/proc/PID/smaps_rollup``. The daemon is started with ``dbtkctl port`` in a fresh
temp ``DBTK_HOME``; its pids come from ``dbtkctl status --json`` (``pid``, ``worker_pid``); it
first serves a few requests (``/health``, ``/api/v1/health``, ``/api/v1/status``). Each
per-window backend also serves a few ``/api/v1/health`` requests first, and the sum covers
every process of each backend (its process tree: one process each). The two sides are never
running at the same time, so they do not share page-cache pages with each other. A few
rounds, alternating which side goes first; the table shows the median of each sum.

PSS splits a shared page between the processes mapping it, so other Python processes on the
machine (this bench's own interpreter included) lower both sides slightly; USS (private pages)
is in the JSON output beside PSS and RSS.

Budget (issue 2): supervisor + worker PSS ≤ 1.0x one per-window backend's PSS (so ≤ 0.13x
eight of them).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import (
    MIB,
    Bench,
    BenchError,
    FigureResult,
    Row,
    http_get,
    memory_of,
    pids_with_env,
    process_tree,
    progress,
    standalone,
)

BACKEND_COUNTS = (1, 4, 8)
REQUESTS = 5
SETTLE = 0.5  # seconds after the last request, before reading smaps_rollup
DEFAULT_ROUNDS = 3
QUICK_ROUNDS = 1
BUDGET_VS_ONE = 1.0
BUDGET_VS_EIGHT = 0.13


def _get_200(port: int, path: str, headers: dict[str, str] | None = None) -> None:
    status, body = http_get(port, path, headers=headers)
    if status != 200:
        raise BenchError(f"GET {path} on port {port}: {status} {body[:200]!r}")


def daemon_memory(bench: Bench) -> dict[str, Any]:
    """Every process of the daemon (supervisor, worker, zygote), after a few requests."""
    home: Path = bench.new_home()
    try:
        document = bench.start_daemon(home)
        port = int(document["port"])
        auth = {"Authorization": f"Bearer {document['token']}"}
        for _ in range(REQUESTS):
            _get_200(port, "/health")
            _get_200(port, "/api/v1/health", auth)
            _get_200(port, "/api/v1/status", auth)
        time.sleep(SETTLE)
        status = bench.status(home)
        # Every process of the daemon: supervisor, worker and (Linux) the worker fork server.
        pids = sorted(
            {int(status["pid"]), int(status["worker_pid"])}
            | set(pids_with_env("DBTK_HOME", str(home)))
        )
        memory = memory_of(pids)
        memory["process_count"] = len(pids)
        return memory
    finally:
        bench.stop_daemon(home)


def baseline_memory(bench: Bench, count: int) -> dict[str, Any]:
    """``count`` per-window backends running at once, each after a few requests."""
    backends = bench.start_baselines(count)
    try:
        for backend in backends:
            for _ in range(REQUESTS):
                _get_200(backend.port, "/api/v1/health")
        time.sleep(SETTLE)
        pids = [pid for backend in backends for pid in process_tree(backend.proc.pid)]
        memory = memory_of(pids)
        memory["backends"] = count
        return memory
    finally:
        for backend in backends:
            bench.reap(backend.proc)


def _mib(kib: float) -> str:
    return f"{kib / MIB:.1f} MiB"


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    rounds = samples or (QUICK_ROUNDS if bench.quick else DEFAULT_ROUNDS)
    daemon: list[dict[str, Any]] = []
    baseline: dict[int, list[dict[str, Any]]] = {count: [] for count in BACKEND_COUNTS}
    for i in range(rounds):
        progress(f"memory: round {i + 1}/{rounds}")
        if i % 2 == 1:
            daemon.append(daemon_memory(bench))
        for count in BACKEND_COUNTS:
            baseline[count].append(baseline_memory(bench, count))
        if i % 2 == 0:
            daemon.append(daemon_memory(bench))

    def median(items: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(item[key] for item in items))

    pss = median(daemon, "pss_kib")
    rss = median(daemon, "rss_kib")
    # Per-process split of the round closest to the median, for the table.
    typical = min(daemon, key=lambda m: abs(m["pss_kib"] - pss))
    split = " + ".join(_mib(p["pss_kib"]) for p in typical["processes"].values())
    rows = []
    for count in BACKEND_COUNTS:
        theirs = median(baseline[count], "pss_kib")
        ratio = pss / theirs
        budget = {1: BUDGET_VS_ONE, 8: BUDGET_VS_EIGHT}.get(count)
        rows.append(
            Row(
                figure=f"PSS of the daemon vs {count} per-window backend{'s' * (count > 1)}",
                dbtkd=_mib(pss) + (f" ({split})" if count == 1 else ""),
                baseline=_mib(theirs),
                ratio=ratio,
                budget="" if budget is None else f"<= {budget:.2f}x",
                ok=None if budget is None else ratio <= budget,
            )
        )
    uss = median(daemon, "uss_kib")
    for kind, ours in (("RSS", rss), ("USS", uss)):
        for count in (1, 8):
            theirs = median(baseline[count], f"{kind.lower()}_kib")
            rows.append(
                Row(
                    figure=f"{kind} of the daemon vs {count} per-window backend{'s' * (count > 1)}",
                    dbtkd=_mib(ours),
                    baseline=_mib(theirs),
                    ratio=ours / theirs,
                )
            )
    data = {
        "rounds": rounds,
        "dbtkd": daemon,
        "baseline": {str(count): items for count, items in baseline.items()},
        "median_kib": {
            "dbtkd": {"pss": pss, "rss": rss, "uss": uss},
            **{
                f"baseline_{count}": {
                    key: median(baseline[count], f"{key}_kib") for key in ("pss", "rss", "uss")
                }
                for count in BACKEND_COUNTS
            },
        },
        "budget": {"vs_1": BUDGET_VS_ONE, "vs_8": BUDGET_VS_EIGHT},
    }
    return FigureResult("memory", rows, data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
