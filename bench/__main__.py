"""``bench/run`` (= ``python -m bench``): every figure measured in one run, printed as one table.

Creates the baseline's virtual environment if missing (cached in ``bench/.venv-baseline/``),
then runs cold start, warm port, memory and restart gap, each side by side with the
per-window backend (or ``python -c pass``), then the figures of issue 3 that have no
per-window counterpart (restart storm, handoff gap, watchdog detection), and prints
``figure | dbtkd | baseline | ratio | budget | ok?``. Progress goes to stderr. Every process
started is stopped by pid on the way out, Ctrl-C included.

Exit status: 0 measured (budgets met or not, unless ``--check``), 1 error, 3 a budget missed
with ``--check``, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import (
    cold_start,
    half_open,
    handoff_gap,
    memory,
    restart_gap,
    restart_storm,
    warm_port,
    watchdog_detect,
)
from bench.common import (
    DEFAULT_BASELINE,
    DEFAULT_VENV,
    Bench,
    BenchError,
    FigureResult,
    Measure,
    Row,
    add_worker_start,
    ensure_baseline_venv,
    format_table,
    machine_info,
    progress,
    terminate_as_interrupt,
)

FIGURES: dict[str, Measure] = {
    "cold": cold_start.measure,
    "warm": warm_port.measure,
    "memory": memory.measure,
    "restart": restart_gap.measure,
    "restart_storm": restart_storm.measure,
    "handoff_gap": handoff_gap.measure,
    "watchdog_detect": watchdog_detect.measure,
    "half_open": half_open.measure,
}
BUDGET_MISSED = 3
BUSY_LOAD_PER_CPU = 0.5
INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Measure dbtkd against the per-window backend; print one table of ratios.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to run (default: all of {','.join(FIGURES)})",
    )
    parser.add_argument(
        "--samples",
        action="append",
        default=[],
        metavar="FIGURE=N",
        help=(
            "override one figure's sample count (e.g. cold=20, warm=60, memory=5, restart=20, "
            "restart_storm=50 kills, handoff_gap=5, watchdog_detect=5 of each hang)"
        ),
    )
    parser.add_argument(
        "--check", action="store_true", help=f"exit {BUDGET_MISSED} if a budget is missed"
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs)")
    add_worker_start(parser)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the project venv")
    parser.add_argument(
        "--baseline", type=Path, default=DEFAULT_BASELINE, help="per_window_backend.py"
    )
    return parser


def _parse_samples(items: list[str]) -> dict[str, int]:
    samples: dict[str, int] = {}
    for item in items:
        name, _, count = item.partition("=")
        if name not in FIGURES or not count.isdigit() or int(count) < 1:
            raise BenchError(
                f"--samples {item!r}: expected FIGURE=N with FIGURE in {list(FIGURES)}"
            )
        samples[name] = int(count)
    return samples


def _dbtkd_version(bench: Bench) -> str:
    done = bench.run([bench.dbtkctl, "version", "--json"], home=bench.new_home(), timeout=30)
    return str(json.loads(done.stdout)["client"]["version"]) if done.returncode == 0 else "?"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    started = time.time()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if load_at_start[0] > (os.cpu_count() or 1) * BUSY_LOAD_PER_CPU:
        progress(
            f"warning: load average {load_at_start[0]} on {os.cpu_count()} CPUs: the machine "
            "is busy, times will be inflated and noisy (ratios less so)"
        )
    results: list[FigureResult] = []
    with terminate_as_interrupt():
        try:
            unknown = [name for name in names if name not in FIGURES]
            if unknown:
                raise BenchError(
                    f"--only: unknown figure(s) {unknown}; choose from {list(FIGURES)}"
                )
            samples = _parse_samples(args.samples)
            baseline = ensure_baseline_venv(args.venv)
            with Bench(
                project_venv=args.venv,
                baseline_script=args.baseline,
                quick=args.quick,
                keep_temp=args.keep_temp,
                worker_start=args.worker_start,
            ) as bench:
                if args.keep_temp:
                    progress(f"temp dir (kept): {bench.workdir}")
                version = _dbtkd_version(bench)
                for name in names:
                    results.append(FIGURES[name](bench, samples.get(name)))
        except KeyboardInterrupt:
            progress("interrupted; every process started was stopped")
            return INTERRUPTED
        except BenchError as exc:
            progress(f"error: {exc}")
            return 1
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            progress(f"error: {type(exc).__name__}: {exc}")
            return 1
    rows: list[Row] = [row for result in results for row in result.rows]
    missed = [row.figure for row in rows if row.ok is False]
    info: dict[str, Any] = {
        "machine": machine_info() | {"load_average_at_start": load_at_start},
        "dbtkd_version": version,
        "baseline": {"script": str(args.baseline), **baseline},
        "quick": args.quick,
        "duration_s": round(time.time() - started, 1),
    }
    if args.json:
        document = {
            **info,
            "rows": [asdict(row) for row in rows],
            "budgets_missed": missed,
            "figures": {result.name: result.data for result in results},
        }
        print(json.dumps(document, indent=2))
    else:
        packages = ", ".join(f"{k} {v}" for k, v in baseline["packages"].items())
        machine = info["machine"]
        print(
            f"dbtkd {version} vs per-window backend ({packages}); python {machine['python']}, "
            f"{machine['cpus']} CPUs, {machine['platform']}; load average "
            f"{load_at_start[0]} at start, {machine['load_average'][0]} at end; "
            f"{'quick, ' if args.quick else ''}{info['duration_s']} s"
        )
        print(format_table(rows))
        if missed:
            print(f"budgets missed: {len(missed)}")
    return BUDGET_MISSED if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
