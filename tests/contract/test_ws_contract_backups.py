"""``/ws/backups`` as the DB Toolkit UI reads it (UI-CONTRACT §9.7, D10), on each engine.

useBackupWebSocket.js sends nothing, keeps only ``type == "backup_update"`` frames and reads
``backup_id``, ``status`` (``in_progress`` | ``completed`` | ``failed``: the card, and on the last
two a refetch), ``data.progress`` (0-100), ``connection_name`` and, on failure, ``error`` — all at
the top level of the frame. dbtkd's own ``backup`` object rides beside them.
"""

from __future__ import annotations

from typing import Any

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import connect_stream, receive, receive_until

UI_STATUSES = {"in_progress", "completed", "failed"}


def _last_of(backup_id: str) -> Any:
    def wanted(frame: dict[str, Any]) -> bool:
        return (
            frame.get("type") == "backup_update"
            and frame.get("backup_id") == backup_id
            and frame.get("status") in ("completed", "failed")
        )

    return wanted


def _ui_frames(frames: list[dict[str, Any]], backup_id: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "backup_update" and f["backup_id"] == backup_id]


def test_the_uis_backup_reports_in_progress_then_completed_at_the_top_level(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server, name="Orders")
    api.run(connection, "CREATE TABLE orders (n INTEGER)")
    with connect_stream(api.daemon, "/ws/backups") as socket:
        assert receive(socket)["type"] == "snapshot"  # dbtkd's extra; the UI ignores it
        # BackupModal.js:7-12, verbatim.
        body = {
            "connection_id": connection,
            "name": "nightly",
            "backup_type": "full",
            "compress": True,
        }
        status, answer = api.call("POST", "/api/v1/backups", body)
        assert status in (200, 202), answer
        backup_id = answer["backup"]["id"]
        frames = _ui_frames(receive_until(socket, _last_of(backup_id), timeout=60), backup_id)
    assert {f["status"] for f in frames} <= UI_STATUSES, [f["status"] for f in frames]
    assert frames[0]["status"] == "in_progress"  # dbtkd's queued "pending" is shown as running
    assert frames[0]["backup"]["status"] == "pending"  # ...and kept in dbtkd's own object
    assert frames[-1]["status"] == "completed"
    assert all(0 <= f["data"]["progress"] <= 100 for f in frames)
    assert frames[-1]["data"]["progress"] == 100
    assert frames[-1]["connection_name"] == frames[-1]["data"]["connection_name"] == "Orders"
    assert all("error" not in f for f in frames)


def test_a_failed_backup_carries_its_reason_at_the_top_level(api: Api, server: DbServer) -> None:
    connection = api.create(server, name="Orders")
    api.run(connection, "CREATE TABLE orders (n INTEGER)")
    with connect_stream(api.daemon, "/ws/backups") as socket:
        assert receive(socket)["type"] == "snapshot"
        # The UI never names tables; a table that does not exist is a failure on every engine.
        status, answer = api.call(
            "POST",
            "/api/v1/backups",
            {
                "connection_id": connection,
                "name": "broken",
                "backup_type": "tables",
                "tables": ["missing"],
                "compress": True,
            },
        )
        assert status in (200, 202), answer
        backup_id = answer["backup"]["id"]
        frames = _ui_frames(receive_until(socket, _last_of(backup_id), timeout=60), backup_id)
    last = frames[-1]
    assert last["status"] == "failed"
    # useBackupWebSocket.js:44, 51 read the frame's own ``error``: a sentence naming the cause.
    assert isinstance(last["error"], str)
    assert "missing" in last["error"]
    assert last["data"]["error"] == last["error"]
    assert last["connection_name"] == "Orders"
