"""``/ws/logs`` and its ``LogFollower``: backlog, follow, rotation, truncation, message cap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from starlette.applications import Starlette

from dbtkd.app.logtail import (
    MAX_BACKLOG_LINES,
    MAX_MESSAGE_BYTES,
    POLL_INTERVAL,
    READ_BLOCK_BYTES,
    LogFollower,
    line_message,
    parse_backlog,
)
from tests.app.asgi_calls import WebSocketClient, call_websocket, open_websocket, websocket_scope


def append(path: Path, *lines: str, newline: bool = True) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write("".join(line + ("\n" if newline else "") for line in lines))


def rotate(path: Path) -> None:
    """What RotatingFileHandler does: rename to .1 and start a new, empty file."""
    os.replace(path, str(path) + ".1")
    path.write_text("")


# -- LogFollower (blocking file code) ---------------------------------------------------------


def test_backlog_returns_the_last_n_complete_lines(log_file: Path) -> None:
    append(log_file, *(f"line {i}" for i in range(10)))
    assert LogFollower(str(log_file)).backlog(3) == ["line 7", "line 8", "line 9"]


def test_backlog_larger_than_the_file_returns_all_of_it(log_file: Path) -> None:
    append(log_file, "a", "b")
    assert LogFollower(str(log_file)).backlog(200) == ["a", "b"]


def test_backlog_spanning_many_read_blocks_is_exact(log_file: Path) -> None:
    lines = [f"{i:06d} " + "x" * 90 for i in range(3 * READ_BLOCK_BYTES // 50)]
    append(log_file, *lines)
    assert LogFollower(str(log_file)).backlog(1500) == lines[-1500:]


def test_backlog_zero_sends_nothing_and_poll_starts_at_the_end(log_file: Path) -> None:
    append(log_file, "old")
    follower = LogFollower(str(log_file))
    assert follower.backlog(0) == []
    append(log_file, "new")
    assert follower.poll() == ["new"]


def test_backlog_reaches_into_the_rotated_file_when_the_current_one_is_short(
    log_file: Path,
) -> None:
    append(log_file, "r1", "r2", "r3")
    rotate(log_file)
    append(log_file, "c1")
    assert LogFollower(str(log_file)).backlog(3) == ["r2", "r3", "c1"]


def test_unfinished_line_is_sent_once_its_newline_is_written(log_file: Path) -> None:
    append(log_file, "done")
    append(log_file, "half", newline=False)
    follower = LogFollower(str(log_file))
    assert follower.backlog(5) == ["done"]
    assert follower.poll() == []
    append(log_file, " and the rest")
    assert follower.poll() == ["half and the rest"]


def test_poll_follows_rotation_without_losing_or_repeating_lines(log_file: Path) -> None:
    follower = LogFollower(str(log_file))
    append(log_file, "before")
    assert follower.backlog(10) == ["before"]
    append(log_file, "written just before rotation")
    rotate(log_file)
    append(log_file, "after 1", "after 2")
    assert follower.poll() == ["written just before rotation", "after 1", "after 2"]
    append(log_file, "after 3")
    assert follower.poll() == ["after 3"]


def test_poll_restarts_at_the_top_after_truncation(log_file: Path) -> None:
    append(log_file, "one long line before truncation")
    follower = LogFollower(str(log_file))
    follower.backlog(10)
    with open(log_file, "w", encoding="utf-8") as file:
        file.write("fresh\n")
    assert follower.poll() == ["fresh"]


def test_poll_picks_up_a_log_file_created_later(tmp_path: Path) -> None:
    path = tmp_path / "dbtkd.log"
    follower = LogFollower(str(path))
    assert follower.backlog(10) == []
    assert follower.poll() == []
    append(path, "first")
    assert follower.poll() == ["first"]


def test_invalid_utf8_and_crlf_are_tolerated(log_file: Path) -> None:
    log_file.write_bytes(b"caf\xe9\r\nok\n")
    assert LogFollower(str(log_file)).backlog(5) == ["caf\ufffd", "ok"]


# -- messages and parameters -----------------------------------------------------------------


def test_ordinary_line_message_is_the_documented_shape() -> None:
    assert json.loads(line_message("hello")) == {"type": "line", "line": "hello"}


@pytest.mark.parametrize("line", ["x" * (2 * MAX_MESSAGE_BYTES), "\x01" * MAX_MESSAGE_BYTES])
def test_line_message_is_capped_at_1_mib_and_marked_truncated(line: str) -> None:
    message = line_message(line)
    assert len(message.encode("utf-8")) <= MAX_MESSAGE_BYTES
    decoded = json.loads(message)
    assert decoded["truncated"] is True
    assert line.startswith(decoded["line"])
    assert len(decoded["line"]) > MAX_MESSAGE_BYTES // 8


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 200), ("0", 0), ("25", 25), ("99999", MAX_BACKLOG_LINES)]
)
def test_backlog_parameter_defaults_to_200_and_is_capped(raw: str | None, expected: int) -> None:
    assert parse_backlog(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "ten", "", "1.5", "²"])
def test_backlog_parameter_must_be_a_whole_number(raw: str) -> None:
    with pytest.raises(ValueError, match="whole number"):
        parse_backlog(raw)


# -- /ws/logs through the app ----------------------------------------------------------------


async def receive_lines(client: WebSocketClient, count: int) -> list[str]:
    lines = []
    for _ in range(count):
        message = await client.receive_json()
        assert message["type"] == "line"
        lines.append(message["line"])
    return lines


@pytest.mark.anyio
async def test_logs_stream_sends_backlog_then_follows_appended_lines(
    app: Starlette, log_file: Path
) -> None:
    append(log_file, *(f"old {i}" for i in range(5)))
    async with open_websocket(app, websocket_scope(query_string=b"backlog=2")) as client:
        assert await client.receive() == {
            "type": "websocket.accept",
            "subprotocol": "dbtk.v1",
            "headers": [],
        }
        assert await receive_lines(client, 2) == ["old 3", "old 4"]
        await client.assert_silent(3 * POLL_INTERVAL)
        append(log_file, "new 1", "new 2")
        assert await receive_lines(client, 2) == ["new 1", "new 2"]
        append(log_file, "new 3")
        assert await receive_lines(client, 1) == ["new 3"]


@pytest.mark.anyio
async def test_logs_stream_default_backlog_is_200_lines(app: Starlette, log_file: Path) -> None:
    append(log_file, *(f"l{i}" for i in range(300)))
    async with open_websocket(app, websocket_scope()) as client:
        await client.receive()  # accept
        lines = await receive_lines(client, 200)
        assert lines[0] == "l100"
        assert lines[-1] == "l299"


@pytest.mark.anyio
async def test_logs_stream_survives_rotation(app: Starlette, log_file: Path) -> None:
    append(log_file, "before")
    async with open_websocket(app, websocket_scope(query_string=b"backlog=1")) as client:
        await client.receive()  # accept
        assert await receive_lines(client, 1) == ["before"]
        await client.assert_silent(3 * POLL_INTERVAL)
        append(log_file, "last in old file")
        rotate(log_file)
        append(log_file, "first in new file")
        assert await receive_lines(client, 2) == ["last in old file", "first in new file"]
        await client.assert_silent(3 * POLL_INTERVAL)
        rotate(log_file)
        append(log_file, "second rotation")
        assert await receive_lines(client, 1) == ["second rotation"]


@pytest.mark.anyio
async def test_logs_stream_with_a_bad_backlog_is_a_400_denial(app: Starlette) -> None:
    messages = await call_websocket(app, websocket_scope(query_string=b"backlog=lots"))
    assert messages[0]["type"] == "websocket.http.response.start"
    assert messages[0]["status"] == 400
    body = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))
    assert body["error"] == "bad_request"
    assert "'lots'" in body["detail"]


@pytest.mark.anyio
async def test_logs_stream_without_token_is_refused_before_accept(app: Starlette) -> None:
    messages = await call_websocket(app, websocket_scope(subprotocols=["dbtk.v1"]))
    assert messages[0]["type"] == "websocket.http.response.start"
    assert messages[0]["status"] == 401
