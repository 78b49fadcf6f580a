"""DESIGN §2's jobs policy, with a real daemon and a real ``pg_dump`` held on a locked table.

``dbtkctl stop`` during a backup lists it, cancels it after ``--timeout`` (no child process
left, no partial file, ``failed: interrupted by stop``); ``--wait`` lets it finish; a worker
killed with ``kill -9`` takes its dump with it and the next worker records ``failed: worker
restarted``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import (
    backup_files,
    dump_child,
    gone,
    hold_table,
    stored_jobs,
    wait_job,
)
from tests.support import DBTKCTL, Daemon, control_call, pid_alive, wait_until


def start_held_backup(daemon: Daemon, postgres: DbServer) -> tuple[Api, dict[str, Any]]:
    """A connection with a table ``held`` (which the test locks, so pg_dump waits on it)
    and the body of a request to back it up."""
    api = Api(daemon)
    connection = api.create(postgres)
    api.run(connection, "CREATE TABLE held (n INTEGER)")
    api.run(connection, "INSERT INTO held VALUES (1), (2)")
    return api, {"connection_id": connection, "name": "held backup"}


def test_stop_lists_a_running_backup_then_cancels_it_after_the_timeout(
    daemon: Daemon, postgres: DbServer
) -> None:
    api, body = start_held_backup(daemon, postgres)
    with hold_table(postgres, "held"):
        started = api.ok("POST", "/api/v1/backups", body, 202)
        dump = dump_child(daemon.worker_pid, "pg_dump")
        assert api.ok("GET", f"/api/v1/backups/{started['id']}")["status"] == "in_progress"
        result = daemon.ctl("stop", "--timeout", "0.5")
        assert result.code == 0, result.err
        assert "1 job(s) running" in result.err
        assert f"backup 'held backup' (id {started['id']})" in result.err
        assert not pid_alive(daemon.pid)
        assert gone(dump)
    record = stored_jobs(daemon)[started["id"]]
    assert (record["status"], record["error"]) == ("failed", "interrupted by stop")
    assert (record["pgids"], record["partial_files"]) == ([], [])
    assert backup_files(daemon) == []  # the partial file went with it


def test_stop_with_wait_lets_the_backup_finish(daemon: Daemon, postgres: DbServer) -> None:
    api, body = start_held_backup(daemon, postgres)
    with hold_table(postgres, "held"):
        started = api.ok("POST", "/api/v1/backups", body, 202)
        dump = dump_child(daemon.worker_pid, "pg_dump")
        stop = subprocess.Popen(
            [DBTKCTL, "stop", "--wait"],
            env=daemon.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            log = daemon.home / "logs" / "dbtkd.log"
            wait_until(lambda: "stop requested with 1 running job" in log.read_text(), 10)
            assert pid_alive(dump)  # still running: the stop waits for it
        except BaseException:
            stop.kill()
            raise
    _, err = stop.communicate(timeout=30)
    assert stop.returncode == 0, err
    assert "until they finish" in err
    assert not pid_alive(daemon.pid)
    record = stored_jobs(daemon)[started["id"]]
    assert record["status"] == "completed", record["error"]
    assert f"{started['id']}.dump" in backup_files(daemon)


def test_a_worker_killed_mid_backup_takes_its_dump_and_the_next_marks_the_job_failed(
    daemon: Daemon, postgres: DbServer
) -> None:
    api, body = start_held_backup(daemon, postgres)
    with hold_table(postgres, "held"):
        started = api.ok("POST", "/api/v1/backups", body, 202)
        old_worker = daemon.worker_pid
        dump = dump_child(old_worker, "pg_dump")
        os.kill(old_worker, signal.SIGKILL)
        wait_until(lambda: gone(dump), 5, what="the dump to die with its worker")
        wait_until(
            lambda: (
                control_call(daemon.home, "status")["worker_pid"] not in (None, old_worker)
                and control_call(daemon.home, "status")["state"] == "running"
            ),
            20,
        )
        daemon.reaper.track(daemon.worker_pid)
        record = wait_job(api, started["id"])
    assert (record["status"], record["error"]) == ("failed", "worker restarted")
    assert backup_files(daemon) == []
    # The daemon works on: a new backup of the same table completes.
    again = api.ok("POST", "/api/v1/backups", body, 202)
    assert wait_job(api, again["id"])["status"] == "completed"


def test_running_jobs_show_in_the_workers_pong_and_can_be_cancelled(
    daemon: Daemon, postgres: DbServer
) -> None:
    api, body = start_held_backup(daemon, postgres)
    with hold_table(postgres, "held"):
        started = api.ok("POST", "/api/v1/backups", body, 202)
        dump_child(daemon.worker_pid, "pg_dump")

        def activity_with_one_job() -> dict[str, Any]:
            worker: dict[str, Any] = control_call(daemon.home, "metrics")["worker"] or {}
            return worker if worker.get("jobs") == 1 else {}

        worker = wait_until(activity_with_one_job, 10, what="a pong reporting the job")
        assert [job["id"] for job in worker["job_list"]] == [started["id"]]
        assert worker["job_list"][0]["kind"] == "backup"
        cancelled = api.ok("POST", f"/api/v1/jobs/{started['id']}/cancel")
        assert (cancelled["status"], cancelled["error"]) == ("failed", "cancelled by the user")
    assert backup_files(daemon) == []
