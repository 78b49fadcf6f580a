"""Live database statistics: ``GET /api/v1/analytics/connections/{id}`` and ``/ws/analytics``.

A snapshot is ``{connection_id, db_type, timestamp, success, stats, error}``; ``stats`` depends
on the engine (PostgreSQL: connections by state, database size, cache hit ratio, longest running
queries, lock waits; MySQL/MariaDB: threads connected and running, queries per second, slow
queries, database size; SQLite: file size, page count, row counts per table). It is read on the
session's metadata connection, so it answers while a long query runs.

On ``/ws/analytics`` the client sends ``{"connection_id": ..., "interval": seconds (1-60)}``
and receives a snapshot at once (``{"type": "stats", ...}``), then one every interval until it
closes the socket; sending another such message switches connection or interval at once. A bad
message gets ``{"type": "error", "error": code, "detail": ...}`` and the stream carries on with
its previous settings. The socket is registered with the app's ``Streams``, so a stopping
worker closes it with 1012 or 1001 like every other stream.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError
from dbtkd.app.db.profiles import Profile, ProfileNotFoundError
from dbtkd.app.endpoints import Database, JSONResponse, api, route
from dbtkd.app.responses import describe
from dbtkd.app.streams import Streams

SECONDS = 1.0
MIN_INTERVAL = 1 * SECONDS
# A minute: slower than that, the UI should poll the HTTP route instead.
MAX_INTERVAL = 60 * SECONDS
# Client messages waiting to be read; a client that sends faster than the stream reads them is
# misbehaving, and its extra messages are dropped rather than buffered without bound.
INBOX_MESSAGES = 16


async def snapshot(database: Database, profile: Profile) -> dict[str, Any]:
    document: dict[str, Any] = {
        "connection_id": profile.id,
        "db_type": profile.db_type,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    try:
        async with database.sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
            stats = await engine.stats()
    except DatabaseError as error:
        return {**document, "success": False, "stats": None, "error": error.message}
    return {**document, "success": True, "stats": stats, "error": None}


def _error(error: str, detail: str) -> str:
    return json.dumps({"type": "error", "error": error, "detail": detail})


async def _settings(database: Database, text: str) -> tuple[Profile, float] | str:
    """A client message → (profile, interval), or the error message to send back."""
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        return _error(
            "invalid_request",
            f'expected {{"connection_id": "...", "interval": seconds}}; got {describe(text)}',
        )
    interval = message.get("interval")
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not MIN_INTERVAL <= interval <= MAX_INTERVAL
    ):
        return _error(
            "invalid_params",
            f"expected interval to be a number of seconds {MIN_INTERVAL:g}-{MAX_INTERVAL:g}; "
            f"got {interval!r:.40}",
        )
    connection_id = message.get("connection_id")
    try:
        if not isinstance(connection_id, str):
            raise ProfileNotFoundError(connection_id)
        profile = await database.profiles.get(connection_id)
    except ProfileNotFoundError:
        return _error(
            "not_found",
            f"expected connection_id to be the id of a saved connection; got {connection_id!r:.60}",
        )
    return profile, float(interval)


async def _stream(
    websocket: WebSocket, database: Database, inbox: ObjectReceiveStream[str]
) -> None:
    """Snapshots at the client's interval; settings change whenever the client sends some."""
    settings: tuple[Profile, float] | None = None
    next_at = 0.0
    while True:
        text: str | None = None
        wait = None if settings is None else max(next_at - anyio.current_time(), 0)
        with anyio.move_on_after(wait):
            try:
                text = await inbox.receive()
            except anyio.EndOfStream:
                return  # the client left
        if text is not None:
            parsed = await _settings(database, text)
            if isinstance(parsed, str):
                await websocket.send_text(parsed)
            else:
                settings, next_at = parsed, anyio.current_time()
        if settings is not None and anyio.current_time() >= next_at:
            profile, interval = settings
            await websocket.send_text(
                json.dumps({"type": "stats", **await snapshot(database, profile)})
            )
            # Ticks missed while a slow snapshot ran are skipped, not sent in a burst.
            next_at = max(next_at + interval, anyio.current_time())


class AnalyticsStream:
    """The raw ASGI endpoint of ``/ws/analytics``.

    ``Streams.serve`` reads (and drops) what the client sends, to notice it leaving; this
    endpoint hands ``serve`` a socket whose ``receive`` also copies each text message into an
    inbox the stream reads, so both see every message without racing for them.
    """

    def __init__(self, database: Database, streams: Streams) -> None:
        self.database = database
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inbox_in, inbox_out = anyio.create_memory_object_stream[str](INBOX_MESSAGES)

        async def copying_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", "replace")
                # Dropped when the client floods, or when the stream has already ended.
                with contextlib.suppress(
                    anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError
                ):
                    inbox_in.send_nowait(text)
            elif message["type"] == "websocket.disconnect":
                inbox_in.close()
            return message

        websocket = WebSocket(scope, copying_receive, send)
        with inbox_in, inbox_out:
            await self.streams.serve(
                "analytics",
                websocket,
                lambda socket: _stream(socket, self.database, inbox_out),
            )


def analytics_routes(database: Database, streams: Streams) -> list[BaseRoute]:
    @api
    async def connection_stats(request: Request) -> Response:
        profile = await database.profiles.get(request.path_params["id"])
        return JSONResponse(await snapshot(database, profile))

    return [
        route("/api/v1/analytics/connections/{id}", {"GET": connection_stats}),
        WebSocketRoute("/ws/analytics", AnalyticsStream(database, streams)),
    ]
