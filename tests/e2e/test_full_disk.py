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
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.db.support import Api
from tests.support import Daemon, ProcessReaper, read_state, wait_for_restarts, wait_until

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
CONNECTION = {"name": "full", "db_type": "sqlite", "database": "/nowhere/full.db"}


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str, mode: str) -> Iterator[Path]:
    mounted = mount("-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(directory))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        mount("-o", "remount,rw", str(directory))
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


@pytest.fixture
def small_data_dir(home: Path) -> Iterator[Path]:
    data = home / "data"
    data.mkdir(mode=0o700)
    with small_tmpfs(data, "1m", "0700"):
        yield data


@pytest.fixture
def small_home(home: Path) -> Iterator[Path]:
    """All of DBTK_HOME (runtime dir, state file, log, data) on one 2 MiB tmpfs."""
    with small_tmpfs(home, "2m", "0755"):
        yield home


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
    # Removed at start, before the app serves its first request (the worker answers /health
    # while it loads the app, so the first request is what waits for the sweep).
    saved = api.ok("POST", "/api/v1/connections", CONNECTION, 201)
    assert not leftover.exists(), "an interrupted write was not removed at start"

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


def sqlite_database(path: Path, rows: int = 1, row_bytes: int = 8) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE t (a BLOB)")
        db.executemany("INSERT INTO t VALUES (?)", ([os.urandom(row_bytes)] for _ in range(rows)))
    return path


@needs_root
def test_on_a_full_data_dir_every_save_answers_507_and_queries_still_run(
    home: Path, small_data_dir: Path, reaper: ProcessReaper
) -> None:
    api = Api(reaper.start(home))
    database = sqlite_database(home / "outside.db")  # the database itself is not on the tmpfs
    cid = api.ok("POST", "/api/v1/connections", {**CONNECTION, "database": str(database)}, 201)[
        "id"
    ]
    schedule = {"connection_id": cid, "name": "nightly", "interval": 86400}
    sid = api.ok("POST", "/api/v1/backup-schedules", schedule, 201)["id"]
    api.ok("POST", f"/api/v1/connections/{cid}/query", {"query": "SELECT 1"})
    names = sorted(c["name"] for c in api.ok("GET", "/api/v1/connections"))
    fill(small_data_dir)

    # Every route that saves something: refused with 507 naming the dir, never a 500.
    saves = [
        ("POST", "/api/v1/connections", CONNECTION),
        ("PUT", f"/api/v1/connections/{cid}", {"name": "renamed"}),
        ("DELETE", f"/api/v1/connections/{cid}", None),
        ("DELETE", f"/api/v1/connections/{cid}/query/history", None),
        ("PUT", "/api/v1/settings", {"theme": "dark"}),
        ("POST", "/api/v1/backups", {"connection_id": cid}),
        ("POST", "/api/v1/backup-schedules", schedule),
        ("PUT", f"/api/v1/backup-schedules/{sid}", {"name": "weekly"}),
        ("POST", f"/api/v1/backup-schedules/{sid}/run", None),
        ("DELETE", f"/api/v1/backup-schedules/{sid}", None),
    ]
    for method, path, body in saves:
        status, refused = api.call(method, path, body)
        assert (status, refused["error"]) == (507, "storage_full"), (method, path, refused)
        assert f"cannot save to {small_data_dir}: the disk is full" in refused["detail"]

    # Nothing was half-saved, and reads answer.
    assert sorted(c["name"] for c in api.ok("GET", "/api/v1/connections")) == names
    assert api.ok("GET", f"/api/v1/backup-schedules/{sid}")["name"] == "nightly"
    assert api.ok("GET", "/api/v1/backups")["backups"] == []

    # A statement runs and is answered: only its history line is lost (with a warning in the
    # log). Answering 507 would make the user run an INSERT that did happen a second time.
    ran = api.ok("POST", f"/api/v1/connections/{cid}/query", {"query": "INSERT INTO t VALUES (1)"})
    assert ran["success"], ran
    assert ran["rows_affected"] == 1
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    selected = api.ok(
        "POST", f"/api/v1/connections/{cid}/query", {"query": "SELECT count(*) FROM t"}
    )
    assert selected["rows"] == [[2]], selected
    history = api.ok("GET", f"/api/v1/connections/{cid}/query/history")["history"]
    assert [h["query"] for h in history] == ["SELECT 1"]


@needs_root
def test_a_backup_that_fills_the_disk_fails_cleanly_and_frees_the_space(
    home: Path, small_data_dir: Path, reaper: ProcessReaper
) -> None:
    api = Api(reaper.start(home))
    # 1.5 MiB of random bytes: more than the 1 MiB tmpfs holds, even compressed.
    database = sqlite_database(home / "big.db", rows=1500, row_bytes=1024)
    cid = api.ok("POST", "/api/v1/connections", {**CONNECTION, "database": str(database)}, 201)[
        "id"
    ]
    backup = api.ok("POST", "/api/v1/backups", {"connection_id": cid}, 202)

    def ended() -> dict[str, object] | None:
        record = api.ok("GET", f"/api/v1/backups/{backup['id']}")
        return record if record["status"] in ("completed", "failed") else None

    record = wait_until(ended, timeout=60, what="the backup to end")
    assert record["status"] == "failed", record
    assert "full" in str(record["error"])
    assert os.listdir(small_data_dir / "backups") == []  # the partial file is gone
    assert api.daemon.status()["state"] == "running"
    api.ok("POST", "/api/v1/connections", CONNECTION, 201)  # its space is free again


@needs_root
def test_a_full_home_survives_a_worker_restart_and_its_state_file_catches_up(
    small_home: Path, reaper: ProcessReaper
) -> None:
    """Runtime dir, log and data on one full disk (as on macOS and Windows, where the runtime
    dir is under the user's home): on bdb7a18 the supervisor died rewriting its state file
    for the restarted worker, taking the control socket with it."""
    home = small_home
    api = Api(reaper.start(home))
    saved = api.ok("POST", "/api/v1/connections", CONNECTION, 201)
    filler = fill(home)
    assert api.call("POST", "/api/v1/connections", CONNECTION)[0] == 507

    first = api.daemon.worker_pid
    os.kill(first, signal.SIGKILL)
    status = wait_for_restarts(home, {"signal": 1})
    reaper.track(status["worker_pid"])
    assert api.daemon.proc.poll() is None, api.daemon.proc.stderr
    assert saved["id"] in [c["id"] for c in api.ok("GET", "/api/v1/connections")]
    state = read_state(home)
    assert state is not None
    assert state["worker_pid"] == first  # the disk refused the update

    filler.unlink()  # space returns: the state file names the new worker, saves work again
    wait_until(
        lambda: (read_state(home) or {}).get("worker_pid") == status["worker_pid"],
        timeout=15,
        what="the state file to name the restarted worker",
    )
    api.ok("POST", "/api/v1/connections", CONNECTION, 201)


@needs_root
def test_leftovers_a_read_only_data_dir_kept_at_start_go_once_it_is_writable(
    home: Path, small_data_dir: Path, reaper: ProcessReaper
) -> None:
    """A crash left a temporary file with a password; the next start finds the data dir
    read-only and cannot remove it. On bdb7a18 it stayed until the start after that."""
    leftover = small_data_dir / ".connections.json.k3j_x9a2.tmp"
    leftover.write_text('{"password": "left behind"}')
    assert mount("-o", "remount,ro", str(small_data_dir)).returncode == 0
    api = Api(reaper.start(home))
    assert api.ok("GET", "/api/v1/connections")  # serves what it holds
    assert leftover.exists()  # nothing can be removed from a read-only disk

    assert mount("-o", "remount,rw", str(small_data_dir)).returncode == 0
    wait_until(lambda: not leftover.exists(), timeout=20, what="the leftover to be removed")
    assert api.daemon.status()["restarts"] == {}  # by the running worker, not a new one


@needs_root
def test_a_dead_workers_jobs_and_due_schedules_wait_for_space_with_one_warning(
    home: Path, small_data_dir: Path, reaper: ProcessReaper
) -> None:
    """A worker died mid-backup and the disk is full: the next worker cannot record the job's
    end, nor claim a due schedule. On bdb7a18 that was a traceback at start and another every
    10 s (every 30 s for the scheduler) for as long as the disk stayed full; now one warning
    each, and the job is failed once space returns."""
    orphan = {
        "id": "0" * 32,
        "kind": "backup",
        "name": "cut short",
        "status": "in_progress",
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "worker_pid": 2**22 + 1,  # above the highest pid_max Linux allows: no such process
        "worker_ticks": 1,
    }
    (small_data_dir / "jobs.json").write_text(json.dumps({"format": 1, "jobs": [orphan]}))
    due = {
        "id": "1" * 32,
        "connection_id": "gone",
        "enabled": True,
        "interval_seconds": 86400,
        "next_run_at": "2026-01-01T00:00:00+00:00",
    }
    (small_data_dir / "schedules.json").write_text(json.dumps({"format": 1, "schedules": [due]}))
    filler = fill(small_data_dir)
    api = Api(reaper.start(home))
    log_file = home / "logs" / "dbtkd.log"
    wait_until(
        lambda: (
            "mark the jobs of a dead worker failed" in (text := log_file.read_text())
            and "the scheduler" in text
        ),
        what="the first attempts to be logged",
    )
    assert api.ok("GET", f"/api/v1/jobs/{orphan['id']}")["status"] == "in_progress"

    filler.unlink()
    wait_until(
        lambda: api.ok("GET", f"/api/v1/jobs/{orphan['id']}")["status"] == "failed",
        timeout=30,
        what="the orphan job to be failed",
    )
    log = log_file.read_text()
    assert "Traceback" not in log, log
    assert log.count("cannot mark the jobs of a dead worker failed yet") == 1, log
    assert log.count("the scheduler waits for the disk") == 1, log
