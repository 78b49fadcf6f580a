"""Live database statistics: ``GET /api/v1/analytics/connections/{id}`` and ``/ws/analytics``.

A snapshot is ``{connection_id, db_type, timestamp, success, stats, error}``; ``stats`` depends
on the engine (PostgreSQL: connections by state, database size, cache hit ratio, longest running
queries, lock waits; MySQL/MariaDB: threads connected and running, queries per second, slow
queries, database size; SQLite: file size, page count, row counts per table). It is read on the
session's metadata connection, so it answers while a long query runs.

On ``/ws/analytics`` the client sends ``{"connection_id": ..., "interval": seconds (1-60,
default 3: the DB Toolkit UI sends none)}`` and receives a snapshot at once (``{"type":
"stats", ...}``), then one every interval until it closes the socket; sending another such
message switches connection or interval at once. Each stats frame also carries the flat fields
the UI reads (UI-CONTRACT §8.8, D7: ``active_connections``, ``idle_connections``,
``database_size``, ``query_stats``, ``current_queries``, ``long_running_queries``,
``blocked_queries``). A bad message gets ``{"type": "error", "error": sentence, "code", "detail":
sentence}`` (the UI shows ``error`` as text; an unknown id is exactly ``Connection not found``)
and the stream carries on with its previous settings; JSON nested too deep closes it (1007).
The socket is registered with the app's ``Streams``, so a stopping
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
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError
from dbtkd.app.db.profiles import Profile, ProfileNotFoundError
from dbtkd.app.endpoints import Database, JSONResponse, database_of
from dbtkd.app.responses import describe
from dbtkd.app.streams import Streams, decode_frame
from dbtkd.units import SECONDS

# The UI's live chart ticks every 3 s (UI-CONTRACT §8.8); it sends no interval.
DEFAULT_INTERVAL = 3 * SECONDS
# Active for longer than this, a statement is "long-running" on the UI's analytics page.
LONG_RUNNING = 30 * SECONDS
QUERY_KINDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
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


def _error(code: str, detail: str) -> str:
    # `error` is the sentence: the UI toasts it as text (and matches "Connection not found").
    return json.dumps({"type": "error", "error": detail, "code": code, "detail": detail})


def _query_type(query: str | None) -> str:
    word = (query or "").lstrip().split(None, 1)[0].upper() if (query or "").strip() else ""
    return word if word in QUERY_KINDS else "OTHER"


def ui_fields(db_type: str, stats: dict[str, Any] | None) -> dict[str, Any]:
    """The flat fields of the UI's analytics page (UI-CONTRACT §8.8), from a snapshot's stats."""
    stats = stats or {}
    sessions: list[dict[str, Any]] = stats.get("sessions") or []
    current = [
        {
            "pid": s["pid"],
            "usename": s.get("username"),
            "query_type": _query_type(s.get("query")),
            "duration": s.get("duration_seconds"),
            "query": s.get("query"),
        }
        for s in sessions
        if s.get("state") not in ("idle", "Sleep")
    ]
    counts = dict.fromkeys((*QUERY_KINDS, "OTHER"), 0)
    for entry in current:
        counts[entry["query_type"]] += 1
    users = {s["pid"]: s.get("username") for s in sessions}
    blocked = [
        {
            "blocked_pid": wait["pid"],
            "blocked_user": users.get(wait["pid"]),
            "blocking_pid": (wait.get("blocked_by") or [None])[0],
            "blocking_user": users.get((wait.get("blocked_by") or [None])[0]),
            "blocked_query": wait.get("query"),
        }
        for wait in (stats.get("lock_waits") or {}).get("waiting", [])
    ]
    if db_type == "sqlite":
        active, idle, size = 1, 0, stats.get("file_size_bytes")
    elif db_type == "postgresql":  # exact counts by state (the sessions list is capped)
        by_state = (stats.get("connections") or {}).get("by_state") or {}
        active, idle = by_state.get("active", 0), by_state.get("idle", 0)
        size = stats.get("database_size_bytes")
    else:
        active = sum(1 for s in sessions if s.get("state") not in ("idle", "Sleep"))
        idle = sum(1 for s in sessions if s.get("state") in ("idle", "Sleep"))
        size = stats.get("database_size_bytes")
    return {
        "active_connections": active,
        "idle_connections": idle,
        "database_size": size,
        "query_stats": counts,
        "current_queries": current,
        "long_running_queries": [
            {k: q[k] for k in ("pid", "usename", "duration", "query")}
            for q in current
            if (q["duration"] or 0) > LONG_RUNNING
        ],
        "blocked_queries": blocked,
    }


async def _settings(database: Database, text: str) -> tuple[Profile, float] | str:
    """A client message → (profile, interval), or the error message to send back."""
    try:
        message = decode_frame(text)  # JSON nested too deep closes the socket (1007)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        return _error(
            "invalid_request",
            f'expected {{"connection_id": "...", "interval": seconds}}; got {describe(text)}',
        )
    interval = message.get("interval", DEFAULT_INTERVAL)
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
        return _error("not_found", "Connection not found")  # the UI matches these words
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
            sample = await snapshot(database, profile)
            fields = ui_fields(profile.db_type, sample["stats"]) if sample["success"] else {}
            if fields:  # the history, slow queries and pool stats routes read these
                samples = getattr(websocket.app.state, "analytics_samples", None)
                if samples is not None:
                    samples.record(profile.id, fields)
            await websocket.send_text(json.dumps({"type": "stats", **fields, **sample}))
            # Ticks missed while a slow snapshot ran are skipped, not sent in a burst.
            next_at = max(next_at + interval, anyio.current_time())


class AnalyticsStream:
    """The raw ASGI endpoint of ``/ws/analytics``.

    ``Streams.serve`` reads (and drops) what the client sends, to notice it leaving; this
    endpoint hands ``serve`` a socket whose ``receive`` also copies each text message into an
    inbox the stream reads, so both see every message without racing for them.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        database: Database = state.database
        streams: Streams = state.streams
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
            await streams.serve(
                "analytics", websocket, lambda socket: _stream(socket, database, inbox_out)
            )


async def connection_stats(request: Request) -> Response:
    database = database_of(request)
    profile = await database.profiles.get(request.path_params["id"])
    return JSONResponse(await snapshot(database, profile))
