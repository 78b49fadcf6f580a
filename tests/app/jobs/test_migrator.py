"""``/ws/migrator``: commands run literally, stream line by line, and die with their socket;
the built-in runner applies numbered ``.sql`` files with a tracking table."""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import (
    connect_stream,
    gone,
    receive,
    receive_until,
    wait_job,
)
from tests.support import wait_until

Socket = websockets.sync.client.ClientConnection


@contextlib.contextmanager
def open_migrator(api: Api) -> Iterator[Socket]:
    with connect_stream(api.daemon, "/ws/migrator") as socket:
        snapshot = receive(socket)
        assert snapshot["type"] == "snapshot"
        assert {"running", "recent"} <= set(snapshot)
        yield socket


def run(socket: Socket, connection: str, argv: list[str], cwd: Path) -> dict[str, Any]:
    socket.send(
        json.dumps({"type": "run", "connection_id": connection, "argv": argv, "cwd": str(cwd)})
    )
    started = receive(socket)
    assert started["type"] == "started", started
    return dict(started)


def is_exit(message: dict[str, Any]) -> bool:
    return bool(message["type"] == "exit")


def output_lines(messages: list[dict[str, Any]], stream: str = "stdout") -> list[str]:
    return [m["line"] for m in messages if m["type"] == "output" and m["stream"] == stream]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_argv_with_shell_syntax_runs_literally(api: Api, sqlite: DbServer, tmp_path: Path) -> None:
    connection = api.create(sqlite)
    trap = tmp_path / "pwned"
    argv = ["echo", "a;b", f"$(touch {trap})", f"`touch {trap}`", "| cat", "&& false"]
    with open_migrator(api) as socket:
        run(socket, connection, argv, tmp_path)
        messages = receive_until(socket, is_exit)
    assert output_lines(messages) == [f"a;b $(touch {trap}) `touch {trap}` | cat && false"]
    assert messages[-1]["code"] == 0
    assert messages[-1]["status"] == "completed"
    assert not trap.exists()


def test_output_arrives_line_by_line_before_the_command_ends(
    api: Api, sqlite: DbServer, tmp_path: Path
) -> None:
    connection = api.create(sqlite)
    go_on = tmp_path / "go-on"
    argv = python(
        f"""
        import os, sys, time
        print("first line")
        print("to stderr", file=sys.stderr)
        deadline = time.monotonic() + 30
        while not os.path.exists({str(go_on)!r}) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("second line")
        sys.exit(3)
        """
    )
    with open_migrator(api) as socket:
        run(socket, connection, argv, tmp_path)
        seen = receive_until(socket, lambda m: m.get("line") == "first line")
        # The command is still waiting for us: the first line came while it ran.
        assert not any(is_exit(m) for m in seen)
        go_on.touch()
        rest = receive_until(socket, is_exit)
    messages = seen + rest
    assert output_lines(messages) == ["first line", "second line"]
    assert output_lines(messages, "stderr") == ["to stderr"]
    assert (messages[-1]["code"], messages[-1]["status"]) == (3, "failed")


def test_database_url_is_in_the_commands_environment_only(
    api: Api, postgres: DbServer, tmp_path: Path
) -> None:
    connection = api.create(postgres, password="p@ss:w/rd")
    with open_migrator(api) as socket:
        run(socket, connection, python("import os; print(os.environ['DATABASE_URL'])"), tmp_path)
        messages = receive_until(socket, is_exit)
    assert output_lines(messages) == [
        f"postgresql://postgres:p%40ss%3Aw%2Frd@127.0.0.1:5432/{postgres.database}"
    ]


def _sleeper_with_grandchild() -> list[str]:
    return python(
        """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(os.getpid(), child.pid, flush=True)
        time.sleep(60)
        """
    )


def test_cancel_kills_the_whole_process_group(api: Api, sqlite: DbServer, tmp_path: Path) -> None:
    connection = api.create(sqlite)
    with open_migrator(api) as socket:
        started = run(socket, connection, _sleeper_with_grandchild(), tmp_path)
        line = receive_until(socket, lambda m: m["type"] == "output")[-1]["line"]
        pids = [int(p) for p in line.split()]
        assert pids[0] == started["pid"]
        assert not gone(pids[1])  # the grandchild runs
        socket.send(json.dumps({"type": "cancel"}))
        exit_message = receive_until(socket, is_exit)[-1]
    assert exit_message["status"] == "failed"
    assert exit_message["error"] == "cancelled by the client"
    assert all(gone(pid) for pid in pids)


def test_a_client_that_disconnects_cancels_its_command(
    api: Api, sqlite: DbServer, tmp_path: Path
) -> None:
    connection = api.create(sqlite)
    with open_migrator(api) as socket:
        started = run(socket, connection, _sleeper_with_grandchild(), tmp_path)
        line = receive_until(socket, lambda m: m["type"] == "output")[-1]["line"]
    pids = [int(p) for p in line.split()]
    wait_until(lambda: all(gone(pid) for pid in pids), 5, what="the command's group to die")
    record = wait_job(api, started["job_id"])
    assert (record["status"], record["error"]) == ("failed", "cancelled: the client disconnected")


def test_a_second_window_sees_a_running_migration_in_its_snapshot(
    api: Api, sqlite: DbServer, tmp_path: Path
) -> None:
    connection = api.create(sqlite)
    with open_migrator(api) as socket:
        started = run(socket, connection, _sleeper_with_grandchild(), tmp_path)
        with connect_stream(api.daemon, "/ws/migrator") as other:
            snapshot = receive(other)
        assert started["job_id"] in [job["id"] for job in snapshot["running"]]
        socket.send(json.dumps({"type": "cancel"}))
        receive_until(socket, is_exit)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("not json", "invalid_request"),
        ({"type": "launch"}, "invalid_request"),
        ({"type": "run", "connection_id": "nope", "argv": ["true"], "cwd": "/"}, "not_found"),
        ({"type": "run", "argv": "true", "cwd": "/"}, "invalid_params"),
        ({"type": "run", "argv": [], "cwd": "/"}, "invalid_params"),
        ({"type": "run", "argv": ["true"], "cwd": "relative/dir"}, "invalid_params"),
        ({"type": "sql", "action": "down", "directory": "/"}, "invalid_params"),
        ({"type": "cancel"}, "not_running"),
    ],
)
def test_bad_messages_get_an_error_and_the_socket_stays_open(
    api: Api, sqlite: DbServer, tmp_path: Path, message: Any, error: str
) -> None:
    connection = api.create(sqlite)
    if isinstance(message, dict) and message.get("connection_id") != "nope":
        message = {"connection_id": connection, **message}
    with open_migrator(api) as socket:
        socket.send(message if isinstance(message, str) else json.dumps(message))
        reply = receive(socket)
        assert (reply["type"], reply["error"]) == ("error", error), reply
        run(socket, connection, ["true"], tmp_path)  # still usable
        assert receive_until(socket, is_exit)[-1]["code"] == 0


def test_a_command_that_cannot_start_is_reported(
    api: Api, sqlite: DbServer, tmp_path: Path
) -> None:
    connection = api.create(sqlite)
    with open_migrator(api) as socket:
        socket.send(
            json.dumps(
                {"type": "run", "connection_id": connection, "argv": ["no-such-tool-x"], "cwd": "/"}
            )
        )
        exit_message = receive_until(socket, is_exit)[-1]
    assert exit_message["status"] == "failed"
    assert "cannot start no-such-tool-x" in exit_message["error"]


# -- the built-in runner ------------------------------------------------------------------------


def sql_run(socket: Socket, connection: str, action: str, directory: Path) -> list[dict[str, Any]]:
    socket.send(
        json.dumps(
            {
                "type": "sql",
                "action": action,
                "connection_id": connection,
                "directory": str(directory),
            }
        )
    )
    return receive_until(socket, is_exit)


@pytest.mark.parametrize("engine", ["sqlite", "postgres", "mysql"])
def test_the_sql_runner_applies_numbered_files_once_and_in_order(
    api: Api, engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: DbServer = request.getfixturevalue(engine)
    connection = api.create(server)
    (tmp_path / "0002_fill.sql").write_text("INSERT INTO items VALUES (1), (2);\n")
    (tmp_path / "0001_create.sql").write_text("CREATE TABLE items (n INTEGER);\n")
    (tmp_path / "notes.txt").write_text("not a migration")
    with open_migrator(api) as socket:
        status = sql_run(socket, connection, "status", tmp_path)
        report = next(m for m in status if m["type"] == "status")["migrations"]
        assert [(m["version"], m["state"]) for m in report] == [(1, "pending"), (2, "pending")]
        applied = sql_run(socket, connection, "up", tmp_path)
        assert applied[-1]["code"] == 0, applied
        assert [line.split()[0] for line in output_lines(applied)] == [
            "applying",
            "applied",
            "applying",
            "applied",
        ]
        again = sql_run(socket, connection, "up", tmp_path)
        assert output_lines(again) == ["nothing to apply: every migration is applied"]
        (tmp_path / "0001_create.sql").write_text("CREATE TABLE items (n BIGINT);\n")
        status = sql_run(socket, connection, "status", tmp_path)
    report = next(m for m in status if m["type"] == "status")["migrations"]
    assert [m["state"] for m in report] == ["changed", "applied"]
    assert api.run(connection, "SELECT n FROM items ORDER BY n")["rows"] == [[1], [2]]


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_failing_migration_stops_the_run_and_is_rolled_back(
    api: Api, engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server: DbServer = request.getfixturevalue(engine)
    connection = api.create(server)
    (tmp_path / "1-first.sql").write_text("CREATE TABLE first (n INTEGER);")
    (tmp_path / "2-broken.sql").write_text(
        "CREATE TABLE half (n INTEGER);\nINSERT INTO nope VALUES (1);"
    )
    (tmp_path / "3-never.sql").write_text("CREATE TABLE never (n INTEGER);")
    with open_migrator(api) as socket:
        messages = sql_run(socket, connection, "up", tmp_path)
    assert (messages[-1]["code"], messages[-1]["status"]) == (1, "failed")
    assert any("failed   2-broken.sql" in line for line in output_lines(messages, "stderr"))
    assert api.query(connection, "SELECT * FROM first")["success"]
    assert not api.query(connection, "SELECT * FROM half")["success"]  # rolled back
    assert not api.query(connection, "SELECT * FROM never")["success"]  # never reached
    versions = api.run(connection, "SELECT version FROM dbtk_schema_migrations")["rows"]
    assert versions == [[1]]
