"""``/ws/terminal``: a real shell on a PTY through a real daemon, and nothing left behind."""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets.sync.client
from starlette.applications import Starlette
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from dbtkd.app import terminal
from tests.app.asgi_calls import call_websocket, websocket_scope
from tests.app.db.support import Api
from tests.app.jobs.support import connect_stream, gone, receive
from tests.support import env_for, reaping, wait_until

Socket = websockets.sync.client.ClientConnection


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    """A daemon whose terminals run ``/bin/sh`` without start-up files: a login shell's rc
    files (pyenv's rehash lock, for one) would make the tests about this machine's setup."""
    with tempfile.TemporaryDirectory(prefix="dbtk-") as path, reaping() as reaper:
        home = Path(path)
        yield Api(reaper.start(home, env=env_for(home, SHELL="/bin/sh", ENV="")))


@contextlib.contextmanager
def shell(api: Api) -> Iterator[tuple[Socket, dict[str, Any]]]:
    with connect_stream(api.daemon, "/ws/terminal") as socket:
        socket.send(json.dumps({"type": "start"}))  # dbtkd's JSON protocol (the UI's is raw)
        snapshot = receive(socket)
        assert snapshot["type"] == "snapshot"
        assert snapshot["max_sessions"] == terminal.MAX_SESSIONS
        started = receive(socket)
        assert started["type"] == "started"
        yield socket, started


def send(socket: Socket, **message: Any) -> None:
    socket.send(json.dumps(message))


def read_until(
    socket: Socket, pattern: str, timeout: float = 10
) -> tuple[re.Match[str], list[Any]]:
    """Output (and other messages) until the output so far matches ``pattern``."""
    text, others = "", list[Any]()
    while True:
        message = receive(socket, timeout)
        if message["type"] == "output":
            text += message["data"]
            found = re.search(pattern, text)
            if found:
                return found, others
        else:
            others.append(message)


def test_the_shell_runs_what_is_typed(api: Api) -> None:
    with shell(api) as (socket, _):
        # The input's echo shows "6*7"; only the shell's arithmetic prints 42.
        send(socket, type="input", data="echo hello-$((6*7))\n")
        read_until(socket, r"hello-42")
        socket.send(b"echo raw-$((2+3))\n")  # binary frames are keystrokes too
        read_until(socket, r"raw-5")


def test_a_bad_resize_is_refused_and_the_session_goes_on(api: Api) -> None:
    with shell(api) as (socket, _):
        for rows, cols in [(0, 80), (10**9, 80), (24, 0), (24, 1001), ("24", 80)]:
            send(socket, type="resize", rows=rows, cols=cols)
            reply = receive(socket)
            while reply["type"] == "output":  # the prompt may still be arriving
                reply = receive(socket)
            assert (reply["type"], reply["error"]) == ("error", "invalid_params"), reply
        send(socket, type="resize", rows=33, cols=101)
        send(socket, type="input", data="stty size\n")
        _, others = read_until(socket, r"33 101")
        assert {"type": "resized", "rows": 33, "cols": 101} in others


def test_the_exit_status_ends_the_session(api: Api) -> None:
    with shell(api) as (socket, started):
        send(socket, type="input", data="exit 3\n")
        message = receive(socket)
        while message["type"] == "output":
            message = receive(socket)
        assert message == {"type": "exit", "code": 3}
        with pytest.raises(ConnectionClosedOK):
            socket.recv(timeout=5)
    assert gone(started["pid"])


def test_disconnecting_kills_the_shell_and_its_background_jobs(api: Api) -> None:
    with shell(api) as (socket, started):
        send(socket, type="input", data="sleep 1000 & echo bg=$!\n")
        found, _ = read_until(socket, r"bg=(\d+)")
        background = int(found[1])
        assert not gone(background)
    wait_until(lambda: gone(started["pid"]) and gone(background), 5, what="the session to die")


def test_sessions_are_capped_and_a_closed_one_frees_its_place(api: Api) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(terminal.MAX_SESSIONS):
            stack.enter_context(shell(api))
        with pytest.raises(InvalidStatus) as refused:
            connect_stream(api.daemon, "/ws/terminal").close()
        assert refused.value.response.status_code == 503
    with shell(api) as (socket, _):
        send(socket, type="input", data="echo again-$((1+1))\n")
        read_until(socket, r"again-2")


@pytest.mark.anyio
async def test_without_a_pty_backend_the_socket_closes_saying_so(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(terminal, "pty_supported", lambda: False)
    sent = await call_websocket(app, websocket_scope(path="/ws/terminal"))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == terminal.UNSUPPORTED_CLOSE_CODE
    assert "not supported" in sent[1]["reason"]
