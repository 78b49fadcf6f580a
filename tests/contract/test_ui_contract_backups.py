"""The UI's backup and schedule calls, with its own bodies, on SQLite, PostgreSQL and MariaDB
(UI-CONTRACT §9.1-§9.6 and §10; decisions D9). Each field the UI reads is checked for the
type and meaning the UI gives it; dbtkd's own fields stay beside them.

On bdb7a18 the UI's bodies were refused (422: unknown fields ``compress``, ``backup_id``,
``tables``, ``schedule``, ``retention_count``, ``compressed``) and the lists came without their
``{success, backups}`` / ``{success, schedules}`` envelopes, so the page showed nothing.
"""

from __future__ import annotations

import datetime
from typing import Any

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import wait_job
from tests.app.jobs.test_backups_api import ROWS, make_rows, rows_of

DAY = 86400


def iso(value: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(value)  # what `new Date(x)` must be able to parse
    assert moment.tzinfo is not None, f"expected an offset on {value!r}"
    return moment


def assert_ui_backup(backup: dict[str, Any]) -> None:
    """Every field BackupCard.js and BackupsPage.js read (§9's table), with its type."""
    assert isinstance(backup["id"], str)
    assert isinstance(backup["name"], str)
    assert backup["backup_type"] in ("full", "schema_only", "data_only", "tables")
    assert backup["status"] in ("pending", "in_progress", "completed", "failed")
    iso(backup["created_at"])
    assert backup["file_size"] is None or isinstance(backup["file_size"], int)
    assert isinstance(backup["compressed"], bool)
    assert backup["error_message"] is None or isinstance(backup["error_message"], str)
    assert isinstance(backup["file_path"], str)
    assert "/" not in backup["file_path"]
    assert "\\" not in backup["file_path"]
    assert backup["progress"] is None or 0 <= backup["progress"] <= 100


def test_the_backups_page_creates_lists_downloads_restores_and_deletes(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    make_rows(api, connection)
    # BackupModal.js:7-12 → useBackups.js:23-32
    created = api.ok(
        "POST",
        "/api/v1/backups",
        {"connection_id": connection, "name": "ui backup", "backup_type": "full", "compress": True},
        202,
    )
    assert created["success"] is True
    assert_ui_backup(created["backup"])
    assert created["backup"]["status"] == "pending"
    assert created["backup"]["compressed"] is True
    wait_job(api, created["backup"]["id"])

    # useBackups.js:9-21 reads response.data.backups
    listed = api.ok("GET", "/api/v1/backups")
    assert listed["success"] is True
    (backup,) = [b for b in listed["backups"] if b["id"] == created["backup"]["id"]]
    assert_ui_backup(backup)
    assert backup["status"] == "completed", backup["error_message"]
    assert backup["progress"] == 100
    assert backup["file_size"] > 0
    assert backup["file_path"].startswith("ui-backup.")  # the download's name, made safe

    # useBackups.js:48-64: the bytes, saved under file_path's last segment
    status, headers, body = api.daemon.http("GET", f"/api/v1/backups/{backup['id']}/download")
    assert status == 200
    assert len(body) == backup["file_size"]
    assert backup["file_path"] in headers["content-disposition"]

    # useBackups.js:34-46: answered when the restore has finished
    api.run(connection, "DROP TABLE things")
    restored = api.ok(
        "POST",
        f"/api/v1/backups/{backup['id']}/restore",
        {"backup_id": backup["id"], "target_connection_id": None, "tables": None},
    )
    assert restored["success"] is True
    assert isinstance(restored["message"], str)
    assert rows_of(api, connection) == ROWS  # finished before the answer

    # BackupsPage.js:102-114 (not wired): {success: bool}
    assert api.ok("POST", f"/api/v1/backups/{backup['id']}/verify")["success"] is True
    # useBackups.js:66-74
    api.ok("DELETE", f"/api/v1/backups/{backup['id']}")
    assert backup["id"] not in [b["id"] for b in api.ok("GET", "/api/v1/backups")["backups"]]


def test_a_restore_the_ui_cannot_make_sense_of_is_refused_with_a_detail(
    api: Api, sqlite: DbServer
) -> None:
    connection = api.create(sqlite)
    make_rows(api, connection)
    made = api.ok("POST", "/api/v1/backups", {"connection_id": connection, "name": "b"}, 202)
    wait_job(api, made["id"])
    for body, words in [
        ({"backup_id": "another", "target_connection_id": None, "tables": None}, "backup_id"),
        ({"backup_id": made["id"], "target_connection_id": None, "tables": ["things"]}, "tables"),
    ]:
        status, document = api.call("POST", f"/api/v1/backups/{made['id']}/restore", body)
        assert status == 422, document
        assert isinstance(document["detail"], str)  # the toast renders it as text
        assert words in document["detail"]


def test_a_restore_that_fails_answers_non_2xx_with_the_reason(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    make_rows(api, connection)
    made = api.ok("POST", "/api/v1/backups", {"connection_id": connection, "name": "b"}, 202)
    wait_job(api, made["id"])
    # The target is a file that cannot be a database: the restore fails, the UI hears why.
    blocker = api.ok(
        "POST",
        "/api/v1/connections",
        {"name": "dir", "db_type": "sqlite", "database": str(api.daemon.home)},
        201,
    )
    status, document = api.call(
        "POST",
        f"/api/v1/backups/{made['id']}/restore",
        {"backup_id": made["id"], "target_connection_id": blocker["id"], "tables": None},
    )
    assert status == 400, document
    assert document["error"] == "restore_failed"
    assert "expected the restore into 'dir' to succeed; it failed" in document["detail"]
    assert api.daemon.status()["state"] == "running"


def test_the_schedules_panel_creates_lists_toggles_and_deletes(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    # ScheduleModal.js:7-15 → BackupsPage.js:69-78; retention_count null: the default
    body = {
        "connection_id": connection,
        "name": "weekly full",
        "backup_type": "full",
        "schedule": "weekly",
        "retention_count": None,
        "compressed": True,
        "enabled": True,
    }
    created = api.ok("POST", "/api/v1/backup-schedules", body, 201)
    assert created["success"] is True

    listed = api.ok("GET", "/api/v1/backup-schedules")  # BackupsPage.js:50-57
    assert listed["success"] is True
    (schedule,) = [s for s in listed["schedules"] if s["id"] == created["id"]]
    assert schedule["name"] == "weekly full"
    assert schedule["enabled"] is True
    assert schedule["backup_type"] == "full"
    assert schedule["schedule"] == "weekly"
    assert schedule["interval_seconds"] == 7 * DAY
    assert isinstance(schedule["retention_count"], int)
    assert schedule["retention_count"] > 0
    assert schedule["compressed"] is True
    assert schedule["last_run"] is None
    away = iso(schedule["next_run"]) - datetime.datetime.now(datetime.UTC)
    assert abs(away.total_seconds() - 7 * DAY) < 60  # first run one interval from now

    api.ok("PUT", f"/api/v1/backup-schedules/{created['id']}", {"enabled": False})
    again = api.ok("GET", "/api/v1/backup-schedules")["schedules"]
    assert [s["enabled"] for s in again if s["id"] == created["id"]] == [False]
    # A GET's view sent back as it is changes nothing (fields the UI reads included).
    api.ok("PUT", f"/api/v1/backup-schedules/{created['id']}", {**schedule, "enabled": False})
    api.ok("DELETE", f"/api/v1/backup-schedules/{created['id']}")
    assert api.ok("GET", "/api/v1/backup-schedules")["schedules"] == [
        s for s in again if s["id"] != created["id"]
    ]


def test_each_cadence_the_ui_offers_is_its_interval_and_nothing_else_is_taken(
    api: Api, sqlite: DbServer
) -> None:
    connection = api.create(sqlite)
    for cadence, seconds in [("daily", DAY), ("weekly", 7 * DAY), ("monthly", 30 * DAY)]:
        made = api.ok(
            "POST",
            "/api/v1/backup-schedules",
            {"connection_id": connection, "name": cadence, "schedule": cadence},
            201,
        )
        assert (made["schedule"], made["interval_seconds"]) == (cadence, seconds)
    odd = api.ok(
        "POST",
        "/api/v1/backup-schedules",
        {"connection_id": connection, "name": "odd", "interval_seconds": 6 * 3600},
        201,
    )
    assert odd["schedule"] == "every 6 h"
    status, document = api.call(
        "POST",
        "/api/v1/backup-schedules",
        {"connection_id": connection, "name": "x", "schedule": "hourly"},
    )
    assert status == 422
    assert "expected schedule to be one of daily, weekly, monthly" in document["detail"]
