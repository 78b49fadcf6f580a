"""Backup schedules: the routes, retention, runs by the daemon, and what happens to a schedule
while no daemon runs (missed runs are caught up once at the next start)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from dbtkd.app.schedules import next_run_after_claim
from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import backup_files, wait_job
from tests.support import Daemon, ProcessReaper, wait_until

HOUR = 3600


def utc(seconds_from_now: float = 0) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)


def schedule_body(connection: str, **changes: Any) -> dict[str, Any]:
    return {"connection_id": connection, "interval_seconds": HOUR, "retention": 2, **changes}


def backups_of(api: Api, schedule_id: str) -> list[dict[str, Any]]:
    listed = api.ok("GET", "/api/v1/backups")["backups"]
    return [b for b in listed if b["schedule_id"] == schedule_id]


def test_create_read_update_and_delete_a_schedule(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    created = api.ok(
        "POST", "/api/v1/backup-schedules", schedule_body(connection, name="nightly"), 201
    )
    assert created["enabled"] is True
    assert (created["backup_type"], created["gzip"]) == ("full", True)
    next_run = datetime.datetime.fromisoformat(created["next_run_at"])
    assert abs((next_run - utc(HOUR)).total_seconds()) < 5  # first run one interval away
    assert created.pop("success") is True
    assert api.ok("GET", f"/api/v1/backup-schedules/{created['id']}") == created
    listed = api.ok("GET", "/api/v1/backup-schedules")
    assert created["id"] in [s["id"] for s in listed["schedules"]]
    changed = api.ok(
        "PUT",
        f"/api/v1/backup-schedules/{created['id']}",
        {**created, "enabled": False, "retention": 5},  # a UI sends back what it got
    )
    assert (changed["enabled"], changed["retention"]) == (False, 5)
    assert changed["next_run_at"] == created["next_run_at"]  # the interval did not change
    assert api.ok("DELETE", f"/api/v1/backup-schedules/{created['id']}")["success"] is True
    assert api.call("GET", f"/api/v1/backup-schedules/{created['id']}")[0] == 404


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"interval_seconds": 10}, 422),
        ({"interval_seconds": "3600"}, 422),
        ({"retention": 0}, 422),
        ({"enabled": "yes"}, 422),
        ({"next_run_at": "tomorrow"}, 422),
        ({"next_run_at": "2030-01-01T02:00:00"}, 422),  # no UTC offset
        ({"backup_type": "tables"}, 422),
        ({"frequency": "daily"}, 422),
        ({"name": "../evil"}, 400),
        ({"connection_id": "no-such-connection"}, 404),
    ],
)
def test_bad_schedules_are_refused(
    api: Api, sqlite: DbServer, changes: dict[str, Any], status: int
) -> None:
    connection = api.create(sqlite)
    got, document = api.call(
        "POST", "/api/v1/backup-schedules", schedule_body(connection, **changes)
    )
    assert got == status, document


def test_interval_is_accepted_as_a_synonym(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    body = {"connection_id": connection, "interval": 120}
    assert api.ok("POST", "/api/v1/backup-schedules", body, 201)["interval_seconds"] == 120


def test_retention_keeps_the_newest_backups_of_a_schedule(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    api.run(connection, "CREATE TABLE t (n INTEGER)")
    schedule = api.ok("POST", "/api/v1/backup-schedules", schedule_body(connection), 201)
    ids = []
    for _ in range(3):
        started = api.ok("POST", f"/api/v1/backup-schedules/{schedule['id']}/run", None, 202)
        assert started["schedule_id"] == schedule["id"]
        assert wait_job(api, started["id"])["status"] == "completed"
        ids.append(started["id"])
    # Retention runs before a backup is recorded complete: nothing to wait for.
    kept = backups_of(api, schedule["id"])
    assert sorted(b["id"] for b in kept) == sorted(ids[1:])
    assert not [name for name in backup_files(api.daemon) if name.startswith(ids[0])]
    refreshed = api.ok("GET", f"/api/v1/backup-schedules/{schedule['id']}")
    assert refreshed["last_backup_id"] == ids[-1]


def test_a_due_schedule_is_run_by_the_daemon(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    api.run(connection, "CREATE TABLE t (n INTEGER)")
    due = utc(-1).isoformat()
    schedule = api.ok(
        "POST", "/api/v1/backup-schedules", schedule_body(connection, next_run_at=due), 201
    )
    found = wait_until(lambda: backups_of(api, schedule["id"]), 10, what="the scheduled backup")
    assert wait_job(api, found[0]["id"])["status"] == "completed"
    refreshed = api.ok("GET", f"/api/v1/backup-schedules/{schedule['id']}")
    assert datetime.datetime.fromisoformat(refreshed["next_run_at"]) > utc(HOUR - 60)
    assert refreshed["last_run_at"] is not None


def test_a_disabled_schedule_never_runs(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    schedule = api.ok(
        "POST",
        "/api/v1/backup-schedules",
        schedule_body(connection, next_run_at=utc(-1).isoformat(), enabled=False),
        201,
    )
    # Another schedule due now runs: once it has, the scheduler has looked at both.
    other = api.ok(
        "POST",
        "/api/v1/backup-schedules",
        schedule_body(connection, next_run_at=utc(-1).isoformat()),
        201,
    )
    wait_until(lambda: backups_of(api, other["id"]), 10)
    assert backups_of(api, schedule["id"]) == []


def test_runs_missed_while_the_daemon_was_down_are_caught_up_once(
    daemon: Daemon, reaper: ProcessReaper, sqlite: DbServer
) -> None:
    api = Api(daemon)
    connection = api.create(sqlite)
    api.run(connection, "CREATE TABLE t (n INTEGER)")
    schedule = api.ok("POST", "/api/v1/backup-schedules", schedule_body(connection), 201)
    idle = api.ok("POST", "/api/v1/backup-schedules", schedule_body(connection), 201)
    assert daemon.ctl("stop").code == 0
    # Three hours pass with no daemon: three runs of the hourly schedule are missed. (The
    # store is the daemon's only memory of time; moving its due time back is the downtime.)
    store = Path(daemon.home) / "data" / "schedules.json"
    document = json.loads(store.read_text())
    for record in document["schedules"]:
        if record["id"] == schedule["id"]:
            record["next_run_at"] = utc(-3 * HOUR - 60).isoformat()
    store.write_text(json.dumps(document))
    restarted = Api(reaper.start(daemon.home))
    found = wait_until(lambda: backups_of(restarted, schedule["id"]), 10, what="the catch-up run")
    assert wait_job(restarted, found[0]["id"])["status"] == "completed"
    refreshed = restarted.ok("GET", f"/api/v1/backup-schedules/{schedule['id']}")
    # One run for the three missed, and the next one an interval from now.
    assert len(backups_of(restarted, schedule["id"])) == 1
    next_run = datetime.datetime.fromisoformat(refreshed["next_run_at"])
    assert utc(HOUR - 60) < next_run <= utc(HOUR)
    assert backups_of(restarted, idle["id"]) == []  # not due: not run


def test_the_next_run_keeps_its_cadence_unless_runs_were_missed() -> None:
    now = datetime.datetime(2025, 1, 1, 12, 0, 5, tzinfo=datetime.UTC)
    on_time = datetime.datetime(2025, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
    assert next_run_after_claim(on_time, HOUR, now) == on_time + datetime.timedelta(hours=1)
    missed = on_time - datetime.timedelta(hours=5)
    assert next_run_after_claim(missed, HOUR, now) == now + datetime.timedelta(hours=1)
