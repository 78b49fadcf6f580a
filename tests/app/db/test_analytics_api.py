"""Live statistics over HTTP and ``/ws/analytics``, on each engine."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import secrets
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.app.db.conftest import pg_admin
from tests.app.db.support import Api, DbServer
from tests.support import wait_until

STATS_KEYS = {
    "postgresql": {
        "connections",
        "database_size_bytes",
        "cache_hit_ratio",
        "longest_queries",
        "lock_waits",
    },
    "mysql": {
        "threads_connected",
        "threads_running",
        "queries_per_second",
        "slow_queries",
        "database_size_bytes",
    },
    "sqlite": {"file_size_bytes", "page_count", "page_size", "tables"},
}


def stats_of(api: Api, connection: str) -> dict[str, Any]:
    document = api.ok("GET", f"/api/v1/analytics/connections/{connection}")
    assert document["success"] is True, document["error"]
    assert document["connection_id"] == connection
    stats: dict[str, Any] = document["stats"]
    return stats


def test_each_engine_reports_its_statistics(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    api.run(connection, "CREATE TABLE counted (n INTEGER)")
    api.run(connection, "INSERT INTO counted VALUES (1), (2), (3)")
    stats = stats_of(api, connection)
    assert STATS_KEYS[server.db_type] <= set(stats)
    if server.db_type == "sqlite":
        assert stats["tables"] == [{"name": "counted", "row_count": 3}]
        assert stats["file_size_bytes"] == stats["page_count"] * stats["page_size"]
    elif server.db_type == "postgresql":
        assert stats["connections"]["total"] >= 2  # the query and the metadata connections
        assert 0 <= stats["cache_hit_ratio"] <= 1
        assert stats["database_size_bytes"] > 0
    else:
        assert stats["threads_connected"] >= 2
        assert stats["queries_per_second"] >= 0
        assert stats["database_size_bytes"] >= 0


def test_postgresql_shows_long_queries_and_lock_waits_while_they_happen(
    api: Api, postgres: DbServer
) -> None:
    connection = api.create(postgres)
    api.run(connection, "CREATE TABLE locked (n INTEGER)")
    marker = f"dbtk-wait-{secrets.token_hex(4)}"
    holder = pg_admin(postgres.database)
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            blocked = pool.submit(
                api.query, connection, f"SELECT * FROM locked /* {marker} */", timeout=10
            )

            def waiting() -> dict[str, Any] | None:
                stats = stats_of(api, connection)  # answers while the query connection waits
                return stats if stats["lock_waits"]["count"] >= 1 else None

            stats = wait_until(waiting, timeout=5, what="a lock wait")
            (wait,) = [w for w in stats["lock_waits"]["waiting"] if marker in w["query"]]
            assert wait["blocked_by"]
            assert any(marker in query["query"] for query in stats["longest_queries"])
            holder.execute("ROLLBACK")
            assert blocked.result(timeout=10)["success"] is True
    finally:
        holder.close()


# -- the stream ----------------------------------------------------------------------------------


def subprotocols(api: Api) -> list[Subprotocol]:
    return [Subprotocol("dbtk.v1"), Subprotocol(f"dbtk.bearer.{api.daemon.token}")]


async def receive_json(socket: ClientConnection, within: float = 5) -> dict[str, Any]:
    with anyio.fail_after(within):
        message: dict[str, Any] = json.loads(await socket.recv())
    return message


def analytics_streams(api: Api) -> int:
    return int(api.ok("GET", "/api/v1/status")["websockets"].get("analytics", 0))


@pytest.mark.anyio
async def test_the_stream_sends_at_once_then_every_interval_and_stops_when_the_client_leaves(
    api: Api, server: DbServer
) -> None:
    connection = await anyio.to_thread.run_sync(api.create, server)
    url = f"ws://127.0.0.1:{api.daemon.port}/ws/analytics"
    async with connect(url, subprotocols=subprotocols(api)) as socket:
        assert socket.subprotocol == "dbtk.v1"
        sent_at = time.monotonic()
        await socket.send(json.dumps({"connection_id": connection, "interval": 1}))
        arrivals = []
        for _ in range(3):
            message = await receive_json(socket)
            arrivals.append(time.monotonic())
            assert message["type"] == "stats"
            assert message["success"] is True, message["error"]
            assert message["connection_id"] == connection
            assert STATS_KEYS[server.db_type] <= set(message["stats"])
        assert arrivals[0] - sent_at < 0.5  # the first snapshot comes at once
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert all(0.8 < gap < 1.5 for gap in gaps), gaps
        assert await anyio.to_thread.run_sync(analytics_streams, api) == 1
    await anyio.to_thread.run_sync(
        lambda: wait_until(lambda: analytics_streams(api) == 0, what="the stream to end")
    )


@pytest.mark.anyio
async def test_the_stream_answers_bad_settings_and_carries_on(api: Api, sqlite: DbServer) -> None:
    connection = await anyio.to_thread.run_sync(api.create, sqlite)
    url = f"ws://127.0.0.1:{api.daemon.port}/ws/analytics"
    async with connect(url, subprotocols=subprotocols(api)) as socket:
        for text, error in [
            ("not json", "invalid_request"),
            (json.dumps({"connection_id": connection, "interval": 0.5}), "invalid_params"),
            (json.dumps({"connection_id": connection, "interval": 61}), "invalid_params"),
            (json.dumps({"connection_id": "nope", "interval": 1}), "not_found"),
        ]:
            await socket.send(text)
            message = await receive_json(socket)
            assert (message["type"], message["code"]) == ("error", error), message
            assert message["error"] == message["detail"]  # a sentence: the UI toasts `error`
        await socket.send(json.dumps({"connection_id": connection, "interval": 60}))
        message = await receive_json(socket)
        assert (message["type"], message["success"]) == ("stats", True)


UI_FIELDS = {
    "active_connections": int,
    "idle_connections": int,
    "query_stats": dict,
    "current_queries": list,
    "long_running_queries": list,
    "blocked_queries": list,
}


@pytest.mark.anyio
async def test_the_uis_frame_gets_flat_stats_every_3_s_and_a_sentence_for_an_unknown_id(
    api: Api, server: DbServer
) -> None:
    # UI-CONTRACT §8.8, D7: useAnalytics.js sends {connection_id} alone and reads flat fields.
    connection = await anyio.to_thread.run_sync(api.create, server)
    url = f"ws://127.0.0.1:{api.daemon.port}/ws/analytics"
    async with connect(url, subprotocols=subprotocols(api)) as socket:
        await socket.send(json.dumps({"connection_id": connection}))
        message = await receive_json(socket)
        assert message["success"] is True
        assert not message["error"]  # checked first by the page
        for field, kind in UI_FIELDS.items():
            assert isinstance(message[field], kind), (field, message[field])
        assert isinstance(message["database_size"], int)
        assert set(message["query_stats"]) == {"SELECT", "INSERT", "UPDATE", "DELETE", "OTHER"}
        second = await receive_json(socket, within=10)  # the default interval is 3 s
        assert second["type"] == "stats"
        await socket.send(json.dumps({"connection_id": "nope"}))
        refused = await receive_json(socket)
        assert refused["error"] == "Connection not found"  # the UI's redirect matches it


@pytest.mark.anyio
async def test_a_running_statement_shows_in_current_queries(api: Api, postgres: DbServer) -> None:
    connection = await anyio.to_thread.run_sync(api.create, postgres)
    url = f"ws://127.0.0.1:{api.daemon.port}/ws/analytics"
    async with anyio.create_task_group() as group:
        # A statement that runs while the page samples (on a session of its own).
        group.start_soon(
            anyio.to_thread.run_sync, lambda: api.query(connection, "SELECT pg_sleep(3)")
        )
        async with connect(url, subprotocols=subprotocols(api)) as socket:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                await socket.send(json.dumps({"connection_id": connection, "interval": 1}))
                message = await receive_json(socket)
                running = [q for q in message["current_queries"] if "pg_sleep" in q["query"]]
                if running:
                    break
            assert running, message["current_queries"]
            (query,) = running
            assert query["query_type"] == "SELECT"
            assert message["query_stats"]["SELECT"] >= 1
            assert message["active_connections"] >= 1
            assert isinstance(query["duration"], float)
