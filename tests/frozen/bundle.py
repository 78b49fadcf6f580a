"""The frozen build under test: where it is, the skip for the source pass, its self-test.

The frozen pass sets ``DBTK_BIN_DIR`` to the folder ``./build-backend.sh`` made
(``dist/db-toolkit-backend``); ``tests/support.py`` then points ``DBTKD`` and ``DBTKCTL`` at
its executables. Without it every test in ``tests/frozen/`` is skipped, saying how to run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import BIN, DBTKD

REPO = Path(__file__).resolve().parents[2]
FROZEN = bool(os.environ.get("DBTK_BIN_DIR"))
# The folder PyInstaller puts beside the executables; its absence means DBTK_BIN_DIR points at
# something else (a venv's bin/), which would make the frozen pass test the source install.
INTERNAL = BIN / "_internal"

SKIP_REASON = (
    "frozen pass only: run ./build-backend.sh, then "
    "DBTK_BIN_DIR=dist/db-toolkit-backend pytest tests/frozen"
)


def assert_is_a_frozen_bundle() -> None:
    assert INTERNAL.is_dir(), (
        f"DBTK_BIN_DIR={BIN} is not a frozen build (no _internal/ beside the executables); "
        "run ./build-backend.sh and point DBTK_BIN_DIR at dist/db-toolkit-backend"
    )


def python_free_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` without any way to reach a Python installation: the frozen binaries need none."""
    env = {k: v for k, v in base.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def selftest(*modules: str, argv0: str = DBTKD, switch: bool = True) -> tuple[int, str, str]:
    """Run ``dbtkd _selftest MODULE...``; (exit code, stdout, stderr)."""
    env = python_free_env(dict(os.environ))
    env.pop("DBTK_FROZEN_SELFTEST", None)
    if switch:
        env["DBTK_FROZEN_SELFTEST"] = "1"
    proc = subprocess.run(
        [argv0, "_selftest", *modules],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout, proc.stderr


def source_selftest() -> dict[str, Any]:
    """The self-test's report from the source install: what the frozen build must match."""
    env = {**os.environ, "DBTK_FROZEN_SELFTEST": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dbtkd", "_selftest"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"the source install fails its own self-test:\n{proc.stdout}"
    report: dict[str, Any] = json.loads(proc.stdout)
    return report
