"""The control server in-process, on socket pairs, with small limits: framing, the idle timeout,
the connection cap and eviction, and a foreign uid, each in milliseconds (the real-daemon tests
in test_control_socket.py keep checking the wiring)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from dbtkd import protocol
from dbtkd.control import ControlServer, Stream
from dbtkd.protocol import Request

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Handler:
    def __init__(self) -> None:
        self.touched = 0

    def daemon_info(self) -> dict[str, Any]:
        return {"version": "test", "protocol": protocol.PROTOCOL_VERSION}

    def touch(self) -> None:
        self.touched += 1

    async def cmd_hello(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        return {"hello": True}


async def connect(
    server: ControlServer, peer_uid: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task[None]]:
    ours, theirs = socket.socketpair()
    server_reader, server_writer = await asyncio.open_connection(sock=theirs)
    task = asyncio.ensure_future(server.on_connect(server_reader, server_writer, peer_uid))
    reader, writer = await asyncio.open_connection(sock=ours)
    await asyncio.sleep(0)  # the server task takes its slot
    return reader, writer, task


async def reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(reader.readline(), 5)
    document: dict[str, Any] = json.loads(line)
    return document


async def test_requests_split_and_joined_anyhow_get_one_reply_each() -> None:
    server = ControlServer(Handler(), uid=1000, idle_timeout=5)
    reader, writer, task = await connect(server)
    writer.write(b'{"id": 1, "cmd": "hel')
    await writer.drain()
    writer.write(b'lo"}\n{"id": 2, "cmd": "hello"}\r\nnot json\n')
    await writer.drain()
    answers = [await reply(reader) for _ in range(3)]
    assert [a["id"] for a in answers] == [1, 2, None]
    assert answers[0]["result"] == {"hello": True}
    assert answers[2]["ok"] is False
    writer.close()
    await asyncio.wait_for(task, 5)
    assert server.connections == {}


async def test_a_silent_client_is_closed_after_the_idle_timeout() -> None:
    server = ControlServer(Handler(), uid=1000, idle_timeout=0.05)
    reader, writer, task = await connect(server)
    writer.write(b'{"id": 1, "cmd"')  # half a line, then nothing
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    await asyncio.wait_for(task, 5)
    writer.close()


async def test_over_the_cap_the_oldest_silent_connection_makes_room() -> None:
    server = ControlServer(Handler(), uid=1000, idle_timeout=5, max_connections=2)
    silent_reader, silent_writer, silent_task = await connect(server)
    talker_reader, talker_writer, _ = await connect(server)
    talker_writer.write(b'{"id": 1, "cmd": "hello"}\n')
    assert (await reply(talker_reader))["ok"] is True
    # A third connection: the silent one is evicted (told why), the one that spoke stays.
    third_reader, third_writer, _ = await connect(server)
    evicted = await reply(silent_reader)
    assert evicted["error"]["code"] == protocol.BUSY
    assert "closed to make room" in evicted["error"]["message"]
    await asyncio.wait_for(silent_task, 5)
    third_writer.write(b'{"id": 7, "cmd": "hello"}\n')
    assert (await reply(third_reader))["id"] == 7
    # Full of connections that have all spoken: the next is refused, busy.
    fourth_reader, fourth_writer, fourth_task = await connect(server)
    refused = await reply(fourth_reader)
    assert refused["error"]["code"] == protocol.BUSY
    assert "more than 2 control connections" in refused["error"]["message"]
    for writer in (silent_writer, talker_writer, third_writer, fourth_writer):
        writer.close()
    await asyncio.wait_for(fourth_task, 5)


async def test_another_uid_is_refused_before_any_command_runs() -> None:
    handler = Handler()
    server = ControlServer(handler, uid=1000, refuse_linger=0.05)
    reader, writer, task = await connect(server, peer_uid=1001)
    writer.write(b'{"id": 1, "cmd": "hello"}\n')
    answer = await reply(reader)
    assert answer["error"]["code"] == protocol.FORBIDDEN
    assert handler.touched == 0
    await asyncio.wait_for(task, 5)
    writer.close()
