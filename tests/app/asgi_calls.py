"""Calling ASGI apps in-process with hand-built scopes: no sockets, no server.

``call_http`` and ``call_websocket`` run one request or upgrade to completion and return what
the app sent; ``open_websocket`` keeps a WebSocket open for streaming tests. Every wait is
bounded by ``DEADLINE_SECONDS`` so a hung app fails the test instead of stalling the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from starlette.types import ASGIApp, Message, Scope

# Generous for in-process calls that normally take milliseconds; the log follower polls at
# 0.2 s, so a few seconds leaves ample room on a loaded machine.
DEADLINE_SECONDS = 10.0
TOKEN = "t0ken-for-tests_abcdefghijklmnopqrstuvwxyz01234"
PORT = 8123
HOST = f"127.0.0.1:{PORT}"
ALLOWED_ORIGIN = "http://localhost:5173"
ALLOWED_ORIGINS = ("app://dbtk", "http://localhost:5173", "http://127.0.0.1:5173")
GOOD_SUBPROTOCOLS = ("dbtk.v1", f"dbtk.bearer.{TOKEN}")


def _encode(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def http_scope(
    method: str = "GET",
    path: str = "/api/v1/health",
    headers: Sequence[tuple[str, str]] = (),
    *,
    host: str | None = HOST,
    token: str | None = TOKEN,
    http_version: str = "1.1",
) -> Scope:
    """An HTTP scope as Hypercorn builds it; ``host``/``token`` None leave the header out."""
    base: list[tuple[str, str]] = []
    if host is not None:
        base.append(("host", host))
    if token is not None:
        base.append(("authorization", f"Bearer {token}"))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "root_path": "",
        "headers": _encode([*base, *headers]),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", PORT),
        "state": {},
    }


def websocket_scope(
    path: str = "/ws/logs",
    headers: Sequence[tuple[str, str]] = (),
    *,
    host: str | None = HOST,
    subprotocols: Sequence[str] = GOOD_SUBPROTOCOLS,
    query_string: bytes = b"",
    denial_extension: bool = True,
) -> Scope:
    """A WebSocket scope as Hypercorn builds it (with the denial-response extension)."""
    base: list[tuple[str, str]] = [("host", host)] if host is not None else []
    if subprotocols:
        base.append(("sec-websocket-protocol", ", ".join(subprotocols)))
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": query_string,
        "root_path": "",
        "headers": _encode([*base, *headers]),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", PORT),
        "subprotocols": list(subprotocols),
        "extensions": {"websocket.http.response": {}} if denial_extension else {},
        "state": {},
    }


@dataclass
class HttpResult:
    """What an app sent for one HTTP request, and how much request body was read from the
    "connection" (by the app or by the gate draining it)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    body_bytes_consumed: int = 0

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        assert len(values) <= 1, f"expected at most one {name} header; got {values}"
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower().encode("latin-1")
        return [value.decode("latin-1") for key, value in self.headers if key.lower() == wanted]

    def header_names(self) -> set[str]:
        return {key.decode("latin-1").lower() for key, _ in self.headers}

    def access_control_headers(self) -> set[str]:
        return {name for name in self.header_names() if name.startswith("access-control-")}

    def json(self) -> Any:
        return json.loads(self.body)


async def call_http(
    app: ASGIApp, scope: Scope, body: Sequence[bytes] = (), *, body_ends: bool = True
) -> HttpResult:
    """Send one request (``body`` in chunks, as a chunked upload would) and collect the reply.

    With ``body_ends`` False the client stalls after the chunks: the body never finishes and
    the only thing left to receive, once the response is sent, is ``http.disconnect``.
    """
    chunks = list(body) or [b""]
    pending: list[Message] = [
        {
            "type": "http.request",
            "body": chunk,
            "more_body": index < len(chunks) - 1 or not body_ends,
        }
        for index, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []
    response_done = anyio.Event()
    delivered = 0

    async def receive() -> Message:
        nonlocal delivered
        if pending:
            message = pending.pop(0)
            delivered += len(message["body"])
            return message
        await response_done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            response_done.set()

    with anyio.fail_after(DEADLINE_SECONDS):
        await app(scope, receive, send)
    starts = [message for message in sent if message["type"] == "http.response.start"]
    assert len(starts) == 1, f"expected one http.response.start; got {sent}"
    return HttpResult(
        status=starts[0]["status"],
        headers=list(starts[0].get("headers", [])),
        body=b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        body_bytes_consumed=delivered,
    )


async def call_websocket(app: ASGIApp, scope: Scope) -> list[Message]:
    """Run an upgrade that ends by itself (a refusal, or accept then close); its messages."""
    sent: list[Message] = []
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(DEADLINE_SECONDS):
        await app(scope, receive, send)
    return sent


@dataclass
class WebSocketClient:
    """The client end of an in-process WebSocket opened with ``open_websocket``."""

    _to_app: anyio.abc.ObjectSendStream[Message]
    _from_app: anyio.abc.ObjectReceiveStream[Message]
    disconnected: bool = field(default=False)

    async def receive(self) -> Message:
        with anyio.fail_after(DEADLINE_SECONDS):
            return await self._from_app.receive()

    async def assert_silent(self, seconds: float) -> None:
        """Nothing arrives for ``seconds``: proves no duplicate or invented message is sent
        (and, for a poller, that it went idle at least once)."""
        with anyio.move_on_after(seconds):
            message = await self._from_app.receive()
            raise AssertionError(f"expected silence; got {message}")

    async def receive_json(self) -> Any:
        message = await self.receive()
        assert message["type"] == "websocket.send", f"expected a message; got {message}"
        return json.loads(message["text"])

    async def send_text(self, text: str) -> None:
        await self._to_app.send({"type": "websocket.receive", "text": text})

    async def disconnect(self, code: int = 1000) -> None:
        if not self.disconnected:
            self.disconnected = True
            await self._to_app.send({"type": "websocket.disconnect", "code": code})


@asynccontextmanager
async def open_websocket(app: ASGIApp, scope: Scope) -> AsyncIterator[WebSocketClient]:
    """Run the app for a WebSocket scope; on exit the client disconnects and the app must end."""
    to_app, app_inbox = anyio.create_memory_object_stream[Message](16)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
    with to_app, app_inbox, app_outbox, from_app:
        async with anyio.create_task_group() as task_group:

            async def run_app() -> None:
                with app_outbox:
                    await app(scope, app_inbox.receive, app_outbox.send)

            task_group.start_soon(run_app)
            await to_app.send({"type": "websocket.connect"})
            client = WebSocketClient(to_app, from_app)
            yield client
            await client.disconnect()
            with anyio.fail_after(DEADLINE_SECONDS):
                # The app must notice the client leaving and return on its own.
                while True:
                    try:
                        await from_app.receive()
                    except anyio.EndOfStream:
                        break
