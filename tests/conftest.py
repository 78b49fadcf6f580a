"""Shared fixtures: a private ``DBTK_HOME`` per test and a reaper for every process started.

``daemon`` starts a real ``dbtkd`` (supervisor + worker) in the foreground on an OS-assigned
loopback port and stops it after the test, even when the test fails.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Daemon, ProcessReaper, reaping


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: the control socket must fit in sun_path (the fallback has its own test).
    with tempfile.TemporaryDirectory(prefix="dbtk-") as path:
        os.chmod(path, 0o755)  # so tests that drop to another uid can reach their subdirs
        yield Path(path)


@pytest.fixture
def reaper() -> Iterator[ProcessReaper]:
    with reaping() as r:
        yield r


@pytest.fixture
def daemon(home: Path, reaper: ProcessReaper) -> Daemon:
    return reaper.start(home)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# In CI (CI=true) a skipped test is a check that did not run: it fails instead, except the frozen
# tests, which .ci/run runs in their own pass against the build.
SKIPS_ALLOWED_IN_CI = ("frozen pass only",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("CI") != "true":
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if not any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"skipped with CI=true, where every check must run: {reason}"
