"""``/ws/backups``: every window sees every job's progress, and a snapshot when it connects."""

from __future__ import annotations

from typing import Any

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import (
    connect_stream,
    dump_child,
    hold_table,
    receive,
    receive_until,
    wait_job,
)


def _finished(kind: str, job_id: str) -> Any:
    def wanted(message: dict[str, Any]) -> bool:
        job = message.get(kind) or {}
        return job.get("id") == job_id and job.get("status") in ("completed", "failed")

    return wanted


def test_a_second_window_sees_the_progress_of_a_backup_started_elsewhere(
    api: Api, postgres: DbServer
) -> None:
    connection = api.create(postgres)
    api.run(connection, "CREATE TABLE held (n INTEGER)")
    with connect_stream(api.daemon, "/ws/backups") as watcher:
        assert receive(watcher)["type"] == "snapshot"
        with hold_table(postgres, "held"):
            started = api.ok("POST", "/api/v1/backups", {"connection_id": connection}, 202)
            dump_child(api.daemon.worker_pid, "pg_dump")
            # A window opened now learns of the running backup from its snapshot.
            with connect_stream(api.daemon, "/ws/backups") as late:
                snapshot = receive(late)
                assert snapshot["type"] == "snapshot"
                assert [b["id"] for b in snapshot["backups"]] == [started["id"]]
                assert snapshot["backups"][0]["status"] == "in_progress"
        events = receive_until(watcher, _finished("backup", started["id"]))
    updates = [e["backup"] for e in events if e["type"] == "backup_update"]
    statuses = [u["status"] for u in updates if u["id"] == started["id"]]
    assert statuses[0] == "pending"
    assert "in_progress" in statuses
    assert statuses[-1] == "completed"
    assert all(isinstance(u["progress"], float) for u in updates)
    assert updates[-1]["progress"] == 100  # a percentage, as GET /backups shows it
    assert updates[-1]["sha256"]
    # The UI's fields at the top level of each frame (UI-CONTRACT §9.7, D10).
    frames = [e for e in events if e["type"] == "backup_update"]
    assert all(f["backup_id"] == f["backup"]["id"] for f in frames)
    # dbtkd's "pending" is the UI's "in_progress" at the top level; the rest match.
    ui_statuses = ["in_progress" if s == "pending" else s for s in statuses]
    assert [f["status"] for f in frames if f["backup_id"] == started["id"]] == ui_statuses
    assert all(0 <= f["data"]["progress"] <= 100 for f in frames)
    assert frames[-1]["data"]["progress"] == 100
    assert frames[-1]["connection_name"] == frames[-1]["data"]["connection_name"] == "test"
    assert "error" not in frames[-1]


def test_failures_and_restores_reach_every_window(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    api.run(connection, "CREATE TABLE t (n INTEGER)")
    with (
        connect_stream(api.daemon, "/ws/backups") as one,
        connect_stream(api.daemon, "/ws/backups") as two,
    ):
        for socket in (one, two):
            assert receive(socket)["type"] == "snapshot"
        failed = api.ok(
            "POST",
            "/api/v1/backups",
            {"connection_id": connection, "backup_type": "tables", "tables": ["missing"]},
            202,
        )
        for socket in (one, two):
            frame = receive_until(socket, _finished("backup", failed["id"]))[-1]
            last = frame["backup"]
            assert last["status"] == "failed"
            assert "missing" in last["error"]
            # useBackupWebSocket.js:44-51 reads `error` at the top level (and data.error).
            assert frame["error"] == frame["data"]["error"] == last["error"]
        done = api.ok("POST", "/api/v1/backups", {"connection_id": connection}, 202)
        assert wait_job(api, done["id"])["status"] == "completed"
        restore = api.ok("POST", f"/api/v1/backups/{done['id']}/restore?wait=false", {}, 202)
        for socket in (one, two):
            events = receive_until(socket, _finished("restore", restore["id"]))
            assert events[-1]["type"] == "restore_update"
            assert events[-1]["restore"]["status"] == "completed"
