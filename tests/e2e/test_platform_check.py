"""``tools/platform_check.py``, the script a maintainer runs first on Windows or macOS, run
here: it must pass on Linux, and it must notice when a step fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import env_for, run_ctl

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "platform_check.py"


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, str(SCRIPT), "--home", str(home), "--json", *args],
            capture_output=True,
            text=True,
            timeout=100,
            env=env_for(home),
        )
    finally:
        run_ctl(home, "stop")  # whatever happened, no daemon outlives the test


def test_the_check_passes_every_step_here(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert report["passed"] is True
    assert [s["step"] for s in report["steps"]] == [
        "dbtkctl version",
        "start",
        "port and /health",
        "worker killed, replaced",
        "stop",
        "nothing left running",
    ]
    assert all(step["ok"] for step in report["steps"])


def test_a_failing_step_fails_the_check_and_keeps_the_profile(tmp_path: Path) -> None:
    # A frozen-build folder without executables: the very first step cannot run.
    done = _run(tmp_path, "--bin", str(tmp_path / "no-such-build"))
    assert done.returncode == 1
    report = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert report["passed"] is False
    assert report["steps"][0]["ok"] is False
    assert "kept the profile" in done.stderr
