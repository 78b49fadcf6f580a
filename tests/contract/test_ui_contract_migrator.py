"""``/ws/migrator`` as the DB Toolkit UI speaks it (UI-CONTRACT §14), against a real daemon and
a real ``migrator`` program on its PATH (a script this test writes, printing what it was given).

The UI sends ``{command, cwd, dbUrl}`` (+ ``connection_id`` once it adopts §14) with no
``type``; it reads ``stdout``/``stderr`` lines, then ``exit`` or ``error``. On bdb7a18 that frame
was answered ``{"type": "error", "error": "invalid_request"}``, which the panel printed as
"Error: undefined"; and the UI's ``dbUrl`` carries the password ``undefined`` now that no route
returns passwords, so ``DATABASE_URL`` must be built by the daemon.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import connect_stream, receive
from tests.support import Daemon, env_for, reaping

FAKE_MIGRATOR = """#!/bin/sh
# Stands in for the Migrator CLI: shows its arguments, its DATABASE_URL and its directory.
for word in "$@"; do echo "arg=[$word]"; done
echo "url=$DATABASE_URL"
echo "cwd=$(pwd)"
echo "to stderr" >&2
[ "$1" = "fail" ] && exit 3
exit 0
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    bin_dir = tmp_path_factory.mktemp("bin")
    program = bin_dir / "migrator"
    program.write_text(FAKE_MIGRATOR)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    home = tmp_path_factory.mktemp("home")
    env = env_for(home, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with reaping() as reaper:
        yield reaper.start(home, env=env)


def run(daemon: Daemon, frame: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    """One UI command: every frame after the snapshot, and the close code."""
    frames = []
    with connect_stream(daemon, "/ws/migrator") as socket:
        assert receive(socket)["type"] == "snapshot"  # dbtkd's extra; the UI ignores it
        socket.send(json.dumps(frame))  # MigrationsPage.js:101-110
        try:
            while True:
                frames.append(receive(socket, timeout=20))
        except ConnectionClosed as closed:
            return frames, None if closed.rcvd is None else closed.rcvd.code


def test_a_ui_command_runs_the_migrator_with_a_database_url_built_from_the_saved_connection(
    daemon: Daemon, server: DbServer, tmp_path: Path
) -> None:
    api = Api(daemon)
    connection = api.create(server, password="s3cret")
    if server.db_type == "sqlite":  # no password in a file URL
        url = f"sqlite:///{server.database}"
    else:
        where = f"{server.host}:{server.port}/{server.database}"
        url = f"{server.db_type}://{server.username}:s3cret@{where}"
    frame = {
        "command": 'makemigrations "add email column"',
        "cwd": str(tmp_path),
        "dbUrl": url.replace("s3cret", "undefined"),  # what MigrationsPage.js builds now
        "connection_id": connection,
    }
    frames, code = run(daemon, frame)
    lines = [f["data"] for f in frames if f["type"] == "stdout"]
    assert lines[:2] == ["arg=[makemigrations]", "arg=[add email column]"]  # quotes honoured
    assert f"url={url}" in lines  # the stored password, never the UI's "undefined"
    assert f"cwd={tmp_path}" in lines
    assert {"type": "stderr", "data": "to stderr"} in frames
    assert frames[-1] == {"type": "exit", "code": 0, "success": True}
    assert code == 1000  # closed after exit (the UI never closes it)


def test_without_connection_id_the_saved_connection_is_found_from_the_url(
    daemon: Daemon, sqlite: DbServer, tmp_path: Path
) -> None:
    api = Api(daemon)
    api.create(sqlite)
    frame = {"command": "fail now", "cwd": str(tmp_path), "dbUrl": f"sqlite:///{sqlite.database}"}
    frames, code = run(daemon, frame)
    assert f"url=sqlite:///{sqlite.database}" in [f["data"] for f in frames if "data" in f]
    assert frames[-1] == {"type": "exit", "code": 3, "success": False}
    assert code == 1000


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ({"command": "", "cwd": "/"}, "No command provided"),
        ({"command": "migrate", "cwd": "relative/dir", "connection_id": "x"}, "absolute path"),
        ({"command": 'init "unclosed', "cwd": "/"}, "quotes"),
        (
            {"command": "migrate", "cwd": "/", "dbUrl": "mysql://u:undefined@nowhere:3306/d"},
            "add connection_id",
        ),
        ({"command": "migrate", "cwd": "/", "connection_id": "nope"}, "saved connection"),
    ],
    ids=["empty", "relative-cwd", "quotes", "no-match", "unknown-id"],
)
def test_a_command_that_cannot_run_is_one_error_frame_then_close(
    daemon: Daemon, frame: dict[str, Any], words: str
) -> None:
    frames, code = run(daemon, frame)
    assert len(frames) == 1, frames
    assert frames[0]["type"] == "error"
    assert words in frames[0]["data"]
    assert code == 1000
    assert Api(daemon).ok("GET", "/api/v1/health")["status"] == "healthy"


def test_the_log_never_holds_the_url_the_ui_sent(daemon: Daemon, sqlite: DbServer) -> None:
    marker = "never-logged-password"
    run(daemon, {"command": "migrate", "cwd": "/", "dbUrl": f"mysql://u:{marker}@h:1/d"})
    for path in (daemon.home / "logs").glob("*"):
        assert marker not in path.read_text(errors="replace"), path
