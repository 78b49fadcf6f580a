"""Warm ``dbtkctl port``: the console script asking a running daemon for its port.

Compared with ``python -c pass`` of the same interpreter (the project venv's python), which is
the floor for any Python command. Both are started the same way (``subprocess.Popen`` with
piped stdout and stderr, same environment and cwd, timed from before ``Popen`` to after
``communicate``), interleaved, alternating which goes first, after a few unmeasured runs.

Budget (issue 2): median ≤ 3x the median of ``python -c pass``.
"""

from __future__ import annotations

import time

from bench.common import (
    CTL_TIMEOUT,
    Argv,
    Bench,
    BenchError,
    FigureResult,
    Row,
    Summary,
    progress,
    standalone,
)

DEFAULT_SAMPLES = 40
QUICK_SAMPLES = 10
WARMUP = 3
BUDGET = 3.0


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    n = samples or (QUICK_SAMPLES if bench.quick else DEFAULT_SAMPLES)
    home = bench.new_home()
    try:
        port = str(bench.start_daemon(home)["port"])
        port_cmd: Argv = [bench.dbtkctl, "port"]
        pass_cmd: Argv = [bench.project_python, "-c", "pass"]

        def timed(argv: Argv) -> tuple[float, str]:
            start = time.perf_counter()
            done = bench.run(argv, home=home, timeout=CTL_TIMEOUT)
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise BenchError(f"{argv} exited {done.returncode}: {done.stderr}")
            return elapsed, done.stdout

        progress(f"warm port: {WARMUP} unmeasured runs of each")
        for _ in range(WARMUP):
            timed(port_cmd)
            timed(pass_cmd)
        ours: list[float] = []
        floor: list[float] = []
        progress(f"warm port: {n} interleaved runs of each")
        for i in range(n):
            order = (port_cmd, pass_cmd) if i % 2 == 0 else (pass_cmd, port_cmd)
            for argv in order:
                elapsed, out = timed(argv)
                if argv is port_cmd:
                    if out.strip() != port:
                        raise BenchError(f"dbtkctl port printed {out!r}, expected {port}")
                    ours.append(elapsed)
                else:
                    floor.append(elapsed)
    finally:
        bench.stop_daemon(home)
    mine = Summary.of(ours)
    base = Summary.of(floor)
    ratio = mine.median / base.median
    row = Row(
        figure=f"warm dbtkctl port vs python -c pass (median of {n})",
        dbtkd=mine.text(),
        baseline=base.text(),
        ratio=ratio,
        budget=f"<= {BUDGET:.2f}x",
        ok=ratio <= BUDGET,
    )
    data = {
        "samples": n,
        "dbtkctl_port_s": {"summary": vars(mine), "samples": ours},
        "python_c_pass_s": {"summary": vars(base), "samples": floor},
        "ratio": ratio,
        "budget": BUDGET,
    }
    return FigureResult("warm_port", [row], data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
