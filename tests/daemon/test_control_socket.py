"""The control socket under bad and odd input: every bad line gets one error, the daemon lives."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest

from dbtkd import control
from tests.support import Daemon, assert_closed, control_call, control_connect, read_line


def ask(sock: socket.socket, payload: bytes, buffer: bytearray | None = None) -> dict:
    sock.sendall(payload)
    return read_line(sock, buffer)


def still_serving(daemon: Daemon) -> None:
    assert control_call(daemon.home, "hello")["version"]
    assert control_call(daemon.home, "port")["port"] == daemon.port


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\n", "invalid_request"),
        (b'{"id": 1, "cmd": "port"\n', "parse_error"),
        (b"[1, 2, 3]\n", "invalid_request"),
        (b'{"id": 1}\n', "invalid_request"),
        (b'{"id": 1, "cmd": "explode"}\n', "unknown_command"),
        (b'{"id": 1, "cmd": "logs", "lines": "all"}\n', "invalid_params"),
        (b'{"id": 1, "cmd": "stop", "timeout": -1}\n', "invalid_params"),  # and no stop
        (b'{"id": 1, "cmd": "logs", "lines": -5}\n', "invalid_params"),
        (b'{"id": 1, "cmd": "port", "id": 2}\n', "invalid_request"),
        (b'{"id": 1, "cmd": "stop", "timeout": NaN}\n', "parse_error"),
        (b'{"id": 1, "cmd": "stop", "timeout": Infinity}\n', "parse_error"),
        (b'{"id": ' + b"7" * 5000 + b', "cmd": "port"}\n', "parse_error"),
        (b"[" * 30_000 + b"]" * 30_000 + b"\n", "parse_error"),
        (b'{"id": 1, "cmd": "\xfe\xff"}\n', "parse_error"),
    ],
)
def test_bad_line_gets_one_error_and_the_connection_stays_usable(
    daemon: Daemon, payload: bytes, code: str
) -> None:
    with control_connect(daemon.home) as sock:
        buffer = bytearray()
        reply = ask(sock, payload, buffer)
        assert reply["ok"] is False
        assert reply["error"]["code"] == code
        assert reply["daemon"]["protocol"] == 1
        # Same connection, next request: answered.
        follow_up = ask(sock, b'{"id": "next", "cmd": "hello"}\n', buffer)
        assert follow_up["id"] == "next"
        assert follow_up["ok"] is True
        assert not buffer, "exactly one reply per line"
    still_serving(daemon)


def test_unreadable_line_is_answered_with_a_null_id(daemon: Daemon) -> None:
    with control_connect(daemon.home) as sock:
        assert ask(sock, b"garbage\n")["id"] is None


def test_a_megabyte_without_newline_is_refused_and_the_connection_closed(
    daemon: Daemon,
) -> None:
    with control_connect(daemon.home) as sock:
        # The daemon may close before we finish writing.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"x" * (1024 * 1024))
        buffer = bytearray()
        reply = read_line(sock, buffer)
        assert reply["error"]["code"] == "line_too_long"
        assert_closed(sock)
    still_serving(daemon)


def test_one_byte_per_write_is_reassembled(daemon: Daemon) -> None:
    with control_connect(daemon.home) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for byte in b'{"id": 42, "cmd": "hello"}\n':
            sock.send(bytes([byte]))
        reply = read_line(sock)
    assert reply["id"] == 42
    assert reply["ok"] is True


def test_ten_requests_in_one_write_get_ten_replies_in_order(daemon: Daemon) -> None:
    payload = b"".join(
        json.dumps({"id": i, "cmd": "hello" if i % 2 else "status"}).encode() + b"\n"
        for i in range(10)
    )
    with control_connect(daemon.home) as sock:
        sock.sendall(payload)
        buffer = bytearray()
        replies = [read_line(sock, buffer) for _ in range(10)]
    assert [r["id"] for r in replies] == list(range(10))
    assert all(r["ok"] for r in replies)


def test_crlf_line_endings_are_accepted(daemon: Daemon) -> None:
    with control_connect(daemon.home) as sock:
        reply = ask(sock, b'{"id": "crlf", "cmd": "hello"}\r\n')
    assert reply == reply | {"id": "crlf", "ok": True}


def test_a_client_that_leaves_mid_line_costs_nothing(daemon: Daemon) -> None:
    for _ in range(20):
        with control_connect(daemon.home) as sock:
            sock.sendall(b'{"id": 1, "cmd": "sta')
    still_serving(daemon)
    assert control_call(daemon.home, "status")["state"] == "running"


@pytest.mark.timeout(60)
def test_a_silent_client_is_closed_after_the_idle_timeout_and_blocks_no_one(
    daemon: Daemon,
) -> None:
    with control_connect(daemon.home, timeout=control.IDLE_TIMEOUT + 10) as silent:
        started = time.monotonic()
        still_serving(daemon)  # others are served while it sits there
        assert silent.recv(1) == b""
        waited = time.monotonic() - started
    assert waited >= control.IDLE_TIMEOUT - 1


@pytest.mark.timeout(90)
def test_half_written_lines_time_out_and_do_not_lock_out_dbtkctl(daemon: Daemon) -> None:
    """Issue 11 item 7: a full pool of half-written lines used to lock ``dbtkctl`` out forever.

    Now each new client takes the slot of the oldest connection that never completed a
    request (that one gets ``busy`` and is closed), and every half-written line is closed
    after the idle timeout like a silent connection.
    """
    held: list[socket.socket] = []
    try:
        for _ in range(control.MAX_CONNECTIONS):
            sock = control_connect(daemon.home, timeout=control.IDLE_TIMEOUT + 20)
            sock.sendall(b'{"id": 1, "cmd": "sta')  # no newline, ever
            held.append(sock)
        # Every slot is taken (the pool may not have seen the last ones yet: ask a second
        # time); the owner's dbtkctl is still answered.
        result = daemon.ctl("status", "--json")
        assert result.code == 0, result.err
        assert result.json()["state"] == "running"
        assert daemon.ctl("status", "--json").code == 0
        # Each half-written line is closed by the daemon: the oldest ones to make room just
        # now, the rest after the idle timeout. None of them ever gets a reply to its request.
        for sock in held:
            with contextlib.suppress(ConnectionResetError):
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                for line in data.splitlines():
                    assert json.loads(line)["error"]["code"] == "busy", line
    finally:
        for sock in held:
            sock.close()
    still_serving(daemon)


def test_connections_over_the_cap_get_busy_and_the_daemon_survives(daemon: Daemon) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(control.MAX_CONNECTIONS):
            sock = control_connect(daemon.home)
            held.append(sock)
            # A complete request makes sure the server has registered this connection.
            ask(sock, b'{"id": 1, "cmd": "hello"}\n')
        extra = control_connect(daemon.home)
        held.append(extra)
        reply = read_line(extra)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "busy"
        assert_closed(extra)
    finally:
        for sock in held:
            sock.close()
    still_serving(daemon)


def test_logs_returns_the_tail_of_the_log(daemon: Daemon) -> None:
    result = control_call(daemon.home, "logs", lines=3)
    assert len(result["lines"]) == 3
    assert "ready on port" in "\n".join(control_call(daemon.home, "logs", lines=50)["lines"])


def test_logs_follow_streams_new_lines(daemon: Daemon) -> None:
    with control_connect(daemon.home) as follower:
        buffer = bytearray()
        first = ask(follower, b'{"id": 5, "cmd": "logs", "lines": 0, "follow": true}\n', buffer)
        assert first["ok"] is True
        assert first["result"]["lines"] == []
        control_call(daemon.home, "restart")
        seen = []
        while not any("ready on port" in line for line in seen):
            event = read_line(follower, buffer)
            assert event["id"] == 5
            assert event["event"] == "log"
            seen.append(event["line"])
