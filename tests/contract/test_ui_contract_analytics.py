"""The analytics page's HTTP calls (UI-CONTRACT §8.1-§8.7) on SQLite, PostgreSQL and MariaDB
against a real daemon. On bdb7a18 all seven routes were 404."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import connect_stream, receive
from tests.support import wait_until


def base(connection: str) -> str:
    return f"/api/v1/analytics/connections/{connection}"


def test_table_stats_name_size_rows_and_indexes(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    api.run(connection, "CREATE TABLE measured (id INTEGER PRIMARY KEY, label VARCHAR(20))")
    api.run(connection, "CREATE INDEX measured_label ON measured (label)")
    api.run(connection, "INSERT INTO measured VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    stats = api.ok("GET", f"{base(connection)}/table-stats")  # useAnalytics.js:168-175
    assert stats["success"] is True
    (row,) = [r for r in stats["table_stats"] if r["table_name"] == "measured"]
    assert isinstance(row["row_count"], int)  # the servers' own estimate; SQLite counts
    if server.db_type == "sqlite":
        assert row["row_count"] == 3
    else:
        assert row["size_bytes"] > 0
    assert row["index_count"] >= 1


def test_history_slow_queries_and_pool_stats_come_from_the_streams_samples(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    with connect_stream(api.daemon, "/ws/analytics") as socket:
        socket.send(json.dumps({"connection_id": connection, "interval": 1}))
        for _ in range(2):
            assert receive(socket)["type"] == "stats"
    history = api.ok("GET", f"{base(connection)}/history?hours=1")  # the range selector
    assert history["success"] is True
    assert len(history["history"]) >= 2
    point = history["history"][-1]
    assert isinstance(point["connections"], int)
    assert point["timestamp"].endswith("+00:00")  # new Date() reads it as UTC
    pool = api.ok("GET", f"{base(connection)}/pool-stats")["pool_stats"]
    assert set(pool) == {
        "current_connections",
        "avg_connections",
        "max_connections",
        "min_connections",
    }
    assert pool["min_connections"] <= pool["avg_connections"] <= pool["max_connections"]
    slow = api.ok("GET", f"{base(connection)}/slow-queries?hours=24")
    assert slow == {"success": True, "slow_queries": []}  # nothing ran for 30 s
    assert api.call("GET", f"{base(connection)}/history?hours=4")[0] == 422


def test_query_plans_never_run_the_statement(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    api.run(connection, "CREATE TABLE planned (id INTEGER PRIMARY KEY, n INTEGER)")
    api.run(connection, "INSERT INTO planned VALUES (1, 1)")
    path = f"{base(connection)}/query-plan"
    plan = api.ok("POST", path, {"query": "UPDATE planned SET n = n + 1"})
    assert plan["success"] is True, plan
    assert plan["plan"]  # parsed: the modal shows JSON.stringify(plan)
    if server.db_type == "sqlite":
        assert {"id", "parent", "detail"} <= set(plan["plan"][0])
    else:
        assert not isinstance(plan["plan"], str)
    assert api.run(connection, "SELECT n FROM planned")["rows"] == [[1]]  # D8: no ANALYZE
    script = api.ok("POST", path, {"query": "SELECT 1; DROP TABLE planned"})
    assert script["success"] is False
    assert api.run(connection, "SELECT COUNT(*) FROM planned")["rows"] == [[1]]


def test_kill_ends_a_running_statement_where_the_engine_can(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    path = f"{base(connection)}/kill"
    if server.db_type == "sqlite":
        refused = api.ok("POST", path, {"pid": 1})
        assert refused == {"success": False, "error": "Unsupported database type"}
        return
    sleep = "SELECT pg_sleep(30)" if server.db_type == "postgresql" else "SELECT SLEEP(30)"
    outcome: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(api.query(connection, sleep, timeout=60)), daemon=True
    )
    runner.start()
    finder = (
        "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' "
        "AND pid <> pg_backend_pid()"
        if server.db_type == "postgresql"
        else "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(30)%'"
    )
    other = api.create(server, "finder")
    pid = wait_until(lambda: (api.run(other, finder)["rows"] or [[None]])[0][0], 20, what="sleep")
    killed = api.ok("POST", path, {"pid": pid})
    assert killed["success"] is True, killed
    runner.join(timeout=30)
    assert not runner.is_alive()
    if server.db_type == "postgresql":
        assert outcome["success"] is False  # its session was terminated
        assert api.ok("POST", path, {"pid": 2_000_000_000})["success"] is False


def test_the_pdf_report_reads_back_with_the_connection_and_its_tables(
    api: Api, server: DbServer
) -> None:
    """§8.7's content, parsed back out of the PDF (not only its header): the connection's
    name, the metrics, the query distribution and each table. Markup-like names stay text;
    characters the standard fonts lack become "?". On 4ca2263 the PDF was hand-written and held
    neither the query distribution nor the tables."""
    import io

    from pypdf import PdfReader

    connection = api.create(server, "Sales <b>& Co</b> \u2603")
    for table in ("orders_report", "customers_report"):
        api.run(connection, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    status, headers, body = api.daemon.http("GET", f"{base(connection)}/export-pdf")
    assert status == 200, body[:200]
    assert headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(body))
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "DB Toolkit analytics: Sales <b>& Co</b> ?" in text
    for expected in (
        "Current metrics",
        "Active connections",
        "Query distribution",
        "Slow queries",
        "orders_report",
        "customers_report",
    ):
        assert expected in text, (expected, text)
    assert reader.metadata is not None
    assert reader.metadata.title.startswith("DB Toolkit analytics: Sales")


@pytest.mark.parametrize(
    ("method", "tail"),
    [
        ("GET", "history"),
        ("GET", "slow-queries"),
        ("GET", "table-stats"),
        ("GET", "pool-stats"),
        ("POST", "kill"),
        ("POST", "query-plan"),
        ("GET", "export-pdf"),
    ],
)
def test_an_unknown_connection_is_404_on_every_analytics_route(
    api: Api, method: str, tail: str
) -> None:
    body = {"pid": 1} if tail == "kill" else {"query": "SELECT 1"} if method == "POST" else None
    assert api.call(method, f"{base('nope')}/{tail}", body)[0] == 404
