"""A full or read-only data directory is a temporary condition (issue 11 item 6).

On bdb7a18 a full disk made saving a connection answer 500 (pointing at a log that could not be
written) and a worker restart sent the daemon to ``failed`` for good (the worker's start-up
probe exited 78, "fatal configuration error"), until someone ran ``dbtkctl restart``. Now saves
answer 507 (full) or 503 (read-only) naming the directory and the cause, reads keep working,
the worker restarts normally, and everything works again by itself once space returns.

The data dir is a small tmpfs this test mounts (root only; skipped with a reason otherwise).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.db.support import Api
from tests.support import Daemon, ProcessReaper, wait_for_restarts

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
CONNECTION = {"name": "full", "db_type": "sqlite", "database": "/nowhere/full.db"}


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_data_dir(home: Path) -> Iterator[Path]:
    data = home / "data"
    data.mkdir(mode=0o700)
    mounted = mount("-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(data))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield data
    finally:
        mount("-o", "remount,rw", str(data))
        subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write until the file system is full; returns the filler file."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as file:
        while True:
            file.write(b"x" * 4096)
            file.flush()
    return filler


def restart_worker(daemon: Daemon, restarts: int) -> None:
    os.kill(daemon.worker_pid, signal.SIGKILL)
    status = wait_for_restarts(daemon.home, {"signal": restarts})
    daemon.reaper.track(status["worker_pid"])
    assert status["state"] == "running"


@needs_root
def test_a_full_data_dir_refuses_saves_with_507_serves_reads_and_recovers_alone(
    home: Path, small_data_dir: Path, reaper: ProcessReaper
) -> None:
    # A write interrupted before this daemon started left a temporary file with a password.
    leftover = small_data_dir / ".connections.json.k3j_x9a2.tmp"
    leftover.write_text('{"password": "left behind"}')
    api = Api(reaper.start(home))
    assert not leftover.exists(), "an interrupted write was not removed at start"
    saved = api.ok("POST", "/api/v1/connections", CONNECTION, 201)

    filler = fill(small_data_dir)
    status, refused = api.call("POST", "/api/v1/connections", CONNECTION)
    assert status == 507, refused
    assert refused["error"] == "storage_full"
    assert f"cannot save to {small_data_dir}: the disk is full" in refused["detail"]
    assert saved["id"] in [c["id"] for c in api.ok("GET", "/api/v1/connections")]  # reads work

    restart_worker(api.daemon, 1)  # not `failed`: a full disk is temporary
    assert saved["id"] in [c["id"] for c in api.ok("GET", "/api/v1/connections")]
    assert api.call("POST", "/api/v1/connections", CONNECTION)[0] == 507

    filler.unlink()  # space returns: saving works again, with no restart by anyone
    again = api.ok("POST", "/api/v1/connections", CONNECTION, 201)
    listed = [c["id"] for c in api.ok("GET", "/api/v1/connections")]
    assert {saved["id"], again["id"]} <= set(listed)


@needs_root
def test_a_read_only_data_dir_refuses_saves_with_503_and_recovers_alone(
    home: Path, small_data_dir: Path, reaper: ProcessReaper
) -> None:
    api = Api(reaper.start(home))
    saved = api.ok("POST", "/api/v1/connections", CONNECTION, 201)
    assert mount("-o", "remount,ro", str(small_data_dir)).returncode == 0

    status, refused = api.call("PUT", f"/api/v1/connections/{saved['id']}", {"name": "x"})
    assert status == 503, refused
    assert refused["error"] == "storage_read_only"
    assert f"cannot save to {small_data_dir}: the disk is read-only" in refused["detail"]
    assert api.ok("GET", f"/api/v1/connections/{saved['id']}")["name"] == "full"
    restart_worker(api.daemon, 1)
    assert api.ok("GET", f"/api/v1/connections/{saved['id']}")["name"] == "full"

    assert mount("-o", "remount,rw", str(small_data_dir)).returncode == 0
    assert api.ok("PUT", f"/api/v1/connections/{saved['id']}", {"name": "x"})["name"] == "x"


@needs_root
def test_a_daemon_starts_on_a_read_only_data_dir_and_serves_what_it_holds(
    home: Path, small_data_dir: Path, reaper: ProcessReaper
) -> None:
    first = reaper.start(home)
    saved = Api(first).ok("POST", "/api/v1/connections", CONNECTION, 201)
    assert first.ctl("stop").code == 0
    first.proc.wait(timeout=30)
    assert mount("-o", "remount,ro", str(small_data_dir)).returncode == 0
    api = Api(reaper.start(home))
    assert saved["id"] in [c["id"] for c in api.ok("GET", "/api/v1/connections")]
    assert api.call("POST", "/api/v1/connections", CONNECTION)[0] == 503
