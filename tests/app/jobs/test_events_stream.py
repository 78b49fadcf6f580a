"""``/ws/events`` against a real daemon: two windows (two sockets) hear every change either
makes, in order, numbered; a window that reconnects gets what it missed, or ``resync`` when the
worker changed (``kill -9``) — never a silent gap (issue 19)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client

from tests.app.db.support import Api
from tests.app.jobs.support import connect_stream, receive, receive_until
from tests.support import Daemon, reaping, wait_for_restarts

Socket = websockets.sync.client.ClientConnection


def hello(socket: Socket) -> dict[str, Any]:
    message: dict[str, Any] = receive(socket)
    assert message["type"] == "hello", message
    return message


def next_change(socket: Socket) -> dict[str, Any]:
    message: dict[str, Any] = receive(socket)
    assert message["type"] == "change", message
    return message


def sqlite_profile(tmp: Path, name: str = "w") -> dict[str, Any]:
    return {"name": name, "db_type": "sqlite", "database": str(tmp / f"{name}.db")}


def test_two_windows_hear_each_connection_change_in_order_and_never_a_password(
    api: Api, tmp_path: Path
) -> None:
    with (
        connect_stream(api.daemon, "/ws/events") as a,
        connect_stream(api.daemon, "/ws/events") as b,
    ):
        start = hello(a)["seq"]
        assert hello(b)["seq"] == start
        created = api.ok(
            "POST", "/api/v1/connections", {**sqlite_profile(tmp_path), "password": "s3cret"}, 201
        )
        api.ok("PUT", f"/api/v1/connections/{created['id']}", {"name": "renamed"})
        api.ok("DELETE", f"/api/v1/connections/{created['id']}")
        for socket in (a, b):
            changes = [next_change(socket) for _ in range(3)]
            assert [(c["kind"], c["id"], c["seq"]) for c in changes] == [
                ("connection_created", created["id"], start + 1),
                ("connection_updated", created["id"], start + 2),
                ("connection_deleted", created["id"], start + 3),
            ]
            assert all("s3cret" not in repr(c) for c in changes)


def test_create_table_from_the_query_editor_is_a_schema_change_but_select_is_not(
    api: Api, tmp_path: Path
) -> None:
    connection = api.ok("POST", "/api/v1/connections", sqlite_profile(tmp_path, "q"), 201)["id"]
    with connect_stream(api.daemon, "/ws/events") as window:
        hello(window)
        api.run(connection, "SELECT 1")
        api.run(connection, "CREATE TABLE made_here (id INTEGER PRIMARY KEY)")
        change = next_change(window)  # the SELECT published nothing before it
        assert (change["kind"], change["connection_id"]) == ("schema_changed", connection)


def test_schedules_and_backups_are_changes_too(api: Api, tmp_path: Path) -> None:
    connection = api.ok("POST", "/api/v1/connections", sqlite_profile(tmp_path, "s"), 201)["id"]
    api.run(connection, "CREATE TABLE t (id INTEGER)")
    with connect_stream(api.daemon, "/ws/events") as window:
        hello(window)
        schedule = api.ok(
            "POST",
            "/api/v1/backup-schedules",
            {"connection_id": connection, "name": "nightly", "interval_seconds": 86400},
            201,
        )
        change = next_change(window)
        assert (change["kind"], change["id"], change["deleted"]) == (
            "schedule_changed",
            schedule["id"],
            False,
        )
        backup = api.ok("POST", "/api/v1/backups", {"connection_id": connection, "name": "b"}, 202)
        seen = receive_until(
            window, lambda m: m.get("kind") == "backup_changed" and m["status"] == "completed"
        )
        statuses = [m["status"] for m in seen if m.get("id") == backup["id"]]
        assert statuses[-1] == "completed", statuses
        assert len(statuses) == len(set(statuses)), f"progress was published as changes: {statuses}"


def test_a_window_that_reconnects_gets_what_it_missed(api: Api, tmp_path: Path) -> None:
    with connect_stream(api.daemon, "/ws/events") as window:
        last = hello(window)
    missed = [
        api.ok("POST", "/api/v1/connections", sqlite_profile(tmp_path, f"m{n}"), 201)["id"]
        for n in range(3)
    ]
    since = f"{last['epoch']}:{last['seq']}"
    with connect_stream(api.daemon, f"/ws/events?since={since}") as window:
        hello(window)
        replayed = [next_change(window) for _ in range(3)]
    assert [c["id"] for c in replayed] == missed
    assert [c["seq"] for c in replayed] == [last["seq"] + 1, last["seq"] + 2, last["seq"] + 3]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with reaping() as reaper:
        yield reaper.start(tmp_path / "home")


def test_kill_9_of_the_worker_between_two_changes_is_a_resync_not_a_gap(
    daemon: Daemon, tmp_path: Path
) -> None:
    api = Api(daemon)
    with connect_stream(daemon, "/ws/events") as window:
        hello(window)
        first = api.ok("POST", "/api/v1/connections", sqlite_profile(tmp_path, "one"), 201)["id"]
        seen = next_change(window)
        assert seen["id"] == first
        os.kill(daemon.worker_pid, signal.SIGKILL)
        daemon.reaper.track(wait_for_restarts(daemon.home, {"signal": 1})["worker_pid"])
    second = api.ok("POST", "/api/v1/connections", sqlite_profile(tmp_path, "two"), 201)["id"]
    with connect_stream(daemon, f"/ws/events?since={seen['epoch']}:{seen['seq']}") as window:
        fresh = hello(window)
        assert fresh["epoch"] != seen["epoch"]
        resync = receive(window)
        assert resync["type"] == "resync", resync
        assert "worker changed" in resync["reason"]
    # After a resync the window reloads: both connections are there, nothing was lost.
    ids = {c["id"] for c in api.ok("GET", "/api/v1/connections")}
    assert {first, second} <= ids
