"""Electron figures (issue 5): warm ``ensureBackend`` and 8 Node windows from cold.

The measuring is done in Node by ``bench/electron_bench.js`` (the module under test is Node);
this adapter runs it with ``--json`` and turns its rows into the table's rows, so the figures
join ``bench/run``. The script stops every process it starts itself.

Budgets (issue 5): warm ``ensureBackend`` ≤ 10 ms median; 8 windows from cold: all ready
≤ 0.35x the per-window design, backend PSS ≤ 0.15x.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from bench.common import BENCH_DIR, Bench, BenchError, FigureResult, Row, progress, standalone

SCRIPT = BENCH_DIR / "electron_bench.js"
# Five cold rounds of 8 windows on each side, plus the warm figure: about a minute.
RUN_TIMEOUT = 600.0


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    node = shutil.which("node")
    if node is None:
        raise BenchError("node is not on PATH (the Electron figures need Node 20+)")
    argv = [node, str(SCRIPT), "--json"]
    if bench.quick:
        argv.append("--quick")
    if samples:
        argv += ["--samples", str(samples)]
    env = {
        **bench.env(),
        "DBTKCTL": str(bench.dbtkctl),
        "DBTK_BASELINE_PYTHON": str(bench.baseline_python),
        "DBTK_BASELINE_SCRIPT": str(bench.baseline_script),
    }
    progress("electron: node bench/electron_bench.js --json")
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, check=False
    )
    if done.stderr:
        for line in done.stderr.splitlines():
            progress(line.removeprefix("bench: "))
    if done.returncode != 0:
        raise BenchError(f"electron_bench.js exited {done.returncode}")
    try:
        document = json.loads(done.stdout)
    except ValueError as exc:
        raise BenchError(f"electron_bench.js printed no JSON document: {done.stdout!r}") from exc
    rows = [Row(**row) for row in document["rows"]]
    return FigureResult("electron", rows, document["data"])


if __name__ == "__main__":
    os.chdir(BENCH_DIR.parent)
    standalone(measure, (__doc__ or "").splitlines()[0])
