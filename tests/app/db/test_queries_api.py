"""Queries over HTTP against a real daemon, on SQLite, PostgreSQL and MariaDB.

Every test runs once per engine with a database of its own: create a table, insert rows of every
common type, read them back in the API's encodings, page through a result, read the schema, and
see bad SQL, timeouts and dead servers answered as ``success: false`` with the database's words.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import time
from typing import Any

import pytest

from tests.app.db.conftest import mysql_admin, pg_admin
from tests.app.db.support import Api, DbServer, TcpProxy
from tests.support import wait_until

# -- every common type ---------------------------------------------------------------------------

KINDS_DDL = {
    "postgresql": """CREATE TABLE kinds (
        id integer PRIMARY KEY, small_number integer, big_number bigint, exact numeric(30, 9),
        approximate double precision, label text, payload bytea, happened_at timestamp,
        happened_at_tz timestamptz, day date, clock time, flag boolean, missing text)""",
    "mysql": """CREATE TABLE kinds (
        id INT PRIMARY KEY, small_number INT, big_number BIGINT, exact DECIMAL(30, 9),
        approximate DOUBLE, label VARCHAR(50), payload VARBINARY(16),
        happened_at DATETIME(6), day DATE, clock TIME, flag BOOLEAN, missing TEXT)""",
    "sqlite": """CREATE TABLE kinds (
        id INTEGER PRIMARY KEY, small_number INTEGER, big_number INTEGER, exact TEXT,
        approximate REAL, label TEXT, payload BLOB, happened_at TEXT, missing TEXT)""",
}
KINDS_INSERT = {
    "postgresql": r"""INSERT INTO kinds VALUES
        (1, 42, 9007199254740993, 12345678901234567890.123456789, 1.5, 'héllo', '\x00ff10',
         '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15+02', '2024-02-29', '13:14:15',
         true, NULL),
        (2, -7, -9007199254740993, -0.5, 'NaN', '', '\x', '1999-12-31 23:59:59', NULL, NULL,
         NULL, false, NULL),
        (3, 0, 9007199254740991, 0, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (4, 0, 0, 0, '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""",
    "mysql": """INSERT INTO kinds VALUES
        (1, 42, 9007199254740993, 12345678901234567890.123456789, 1.5, 'héllo', x'00ff10',
         '2024-02-29 13:14:15.123456', '2024-02-29', '13:14:15', true, NULL),
        (2, -7, -9007199254740993, -0.5, -2.25, '', x'', '1999-12-31 23:59:59', NULL,
         '-01:02:03', false, NULL),
        (3, 0, 9007199254740991, 0, 1e300, NULL, NULL, NULL, NULL, '838:59:59', NULL, NULL)""",
    "sqlite": """INSERT INTO kinds VALUES
        (1, 42, 9007199254740993, '12345678901234567890.123456789', 1.5, 'héllo', x'00ff10',
         '2024-02-29T13:14:15.123456', NULL),
        (2, -7, -9007199254740993, '-0.5', 9e999, '', x'', '1999-12-31 23:59:59', NULL),
        (3, 0, 9007199254740991, '0', -9e999, NULL, NULL, NULL, NULL)""",
}
# fmt: off
KINDS_EXPECTED = {
    "postgresql": [
        [1, 42, "9007199254740993", "12345678901234567890.123456789", 1.5, "héllo", "AP8Q",
         "2024-02-29T13:14:15.123456", "2024-02-29T11:14:15+00:00", "2024-02-29", "13:14:15",
         True, None],
        [2, -7, "-9007199254740993", "-0.500000000", "NaN", "", "", "1999-12-31T23:59:59",
         None, None, None, False, None],
        [3, 0, 9007199254740991, "0.000000000", "Infinity", None, None, None, None, None, None,
         None, None],
        [4, 0, 0, "0.000000000", "-Infinity", None, None, None, None, None, None, None, None],
    ],
    "mysql": [
        [1, 42, "9007199254740993", "12345678901234567890.123456789", 1.5, "héllo", "AP8Q",
         "2024-02-29T13:14:15.123456", "2024-02-29", "13:14:15", 1, None],
        [2, -7, "-9007199254740993", "-0.500000000", -2.25, "", "", "1999-12-31T23:59:59",
         None, "-01:02:03", 0, None],
        [3, 0, 9007199254740991, "0.000000000", 1e300, None, None, None, None, "838:59:59", None,
         None],
    ],
    "sqlite": [
        [1, 42, "9007199254740993", "12345678901234567890.123456789", 1.5, "héllo", "AP8Q",
         "2024-02-29T13:14:15.123456", None],
        [2, -7, "-9007199254740993", "-0.5", "Infinity", "", "", "1999-12-31 23:59:59", None],
        [3, 0, 9007199254740991, "0", "-Infinity", None, None, None, None],
    ],
}
KINDS_TYPES = {
    "postgresql": ["int4", "int8", "numeric", "float8", "text", "bytea", "timestamp",
                   "timestamptz", "date", "time", "bool", "text"],
    "mysql": ["INT", "BIGINT", "DECIMAL", "DOUBLE", "VARCHAR", "VARBINARY", "DATETIME", "DATE",
              "TIME", "TINYINT", "TEXT"],
    "sqlite": ["INTEGER", "INTEGER", "TEXT", "REAL", "TEXT", "BLOB", "TEXT", "NULL"],
}
# fmt: on
SYNTAX_ERRORS = {
    "postgresql": 'syntax error at or near "SELEKT"',
    "mysql": "You have an error in your SQL syntax",
    "sqlite": 'near "SELEKT": syntax error',
}
# Ten seconds of work, marked so the server's process list can be searched for it.
SLOW_QUERIES = {
    "postgresql": "SELECT pg_sleep(10) /* {marker} */",
    "mysql": "SELECT SLEEP(10) /* {marker} */",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT count(*) FROM c /* {marker} */",
}
SCHEMA_NAMES = {"postgresql": "public", "sqlite": "main"}


def test_every_common_type_comes_back_in_the_documented_encoding(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    assert api.run(connection, KINDS_DDL[server.db_type])["rows_affected"] is None
    inserted = api.run(connection, KINDS_INSERT[server.db_type])
    assert inserted["rows_affected"] == len(KINDS_EXPECTED[server.db_type])
    result = api.run(connection, "SELECT * FROM kinds ORDER BY id")
    assert result["rows"] == KINDS_EXPECTED[server.db_type]
    names = result["columns"]
    assert names[:3] == ["id", "small_number", "big_number"]
    assert result["column_types"][1:] == KINDS_TYPES[server.db_type]
    assert result["total_rows"] == len(result["rows"])
    assert result["has_more"] is False
    assert result["error"] is None
    assert result["execution_time"] >= 0


def test_dml_reports_rows_affected_and_ddl_and_select_report_null(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    api.run(connection, "CREATE TABLE t (n INTEGER)")
    api.run(connection, "INSERT INTO t VALUES (1), (2), (3)")
    assert api.run(connection, "UPDATE t SET n = n + 10 WHERE n >= 2")["rows_affected"] == 2
    assert api.run(connection, "DELETE FROM t WHERE n > 100")["rows_affected"] == 0
    assert api.run(connection, "SELECT n FROM t")["rows_affected"] is None
    assert api.run(connection, "DROP TABLE t")["rows_affected"] is None


def test_parameters_are_bound_not_spliced(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    sql, params, expected = {
        "postgresql": (
            "SELECT $1::int8 + 1, $2::date, $3::bytea, $4::text",
            ["9007199254740993", "2024-01-02", "AP8Q", "it's"],
            ["9007199254740994", "2024-01-02", "AP8Q", "it's"],
        ),
        "mysql": ("SELECT %s, %s, %s", [41, "it's", None], [41, "it's", None]),
        "sqlite": ("SELECT ?, ?, ?", [41, "it's", None], [41, "it's", None]),
    }[server.db_type]
    assert api.run(connection, sql, params=params)["rows"] == [expected]


def test_paging_uses_limit_offset_and_has_more(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    api.run(connection, "CREATE TABLE numbers (n INTEGER PRIMARY KEY)")
    values = ", ".join(f"({n})" for n in range(1, 26))
    api.run(connection, f"INSERT INTO numbers VALUES {values}")
    sql = "SELECT n FROM numbers ORDER BY n"

    def page(limit: int, offset: int) -> tuple[list[int], bool]:
        result = api.run(connection, sql, limit=limit, offset=offset)
        assert result["total_rows"] == len(result["rows"])
        return [row[0] for row in result["rows"]], result["has_more"]

    assert page(10, 0) == (list(range(1, 11)), True)
    assert page(10, 10) == (list(range(11, 21)), True)
    assert page(10, 20) == (list(range(21, 26)), False)
    assert page(15, 10) == (list(range(11, 26)), False)  # ends exactly at the last row
    assert page(10, 100) == ([], False)
    assert len(api.run(connection, sql)["rows"]) == 25  # the default limit is 1000


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"timeout": 0}, "timeout"),
        ({"params": "x"}, "params"),
        ({"query": ""}, "query"),
        ({"limits": 5}, "limits"),
    ],
)
def test_bad_query_options_are_refused_before_running(
    api: Api, sqlite: DbServer, options: dict[str, Any], field: str
) -> None:
    connection = api.create(sqlite)
    status, document = api.call(
        "POST", f"/api/v1/connections/{connection}/query", {"query": "SELECT 1", **options}
    )
    assert status == 422
    assert document["error"] == "invalid_params"
    assert field in document["detail"]


def test_a_syntax_error_is_success_false_with_the_databases_message(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    result = api.query(connection, "SELEKT 1")
    assert result["success"] is False
    assert SYNTAX_ERRORS[server.db_type] in result["error"]
    assert (result["rows"], result["columns"], result["total_rows"]) == ([], [], 0)
    assert api.run(connection, "SELECT 1")["rows"] == [[1]]  # the session is still good


def test_unknown_connection_is_404_on_every_route(api: Api) -> None:
    for method, path, body in [
        ("GET", "/api/v1/connections/nope", None),
        ("PUT", "/api/v1/connections/nope", {"name": "x"}),
        ("DELETE", "/api/v1/connections/nope", None),
        ("POST", "/api/v1/connections/nope/connect", None),
        ("POST", "/api/v1/connections/nope/disconnect", None),
        ("POST", "/api/v1/connections/nope/query", {"query": "SELECT 1"}),
        ("GET", "/api/v1/connections/nope/query/history", None),
        ("GET", "/api/v1/connections/nope/schema", None),
        ("GET", "/api/v1/connections/nope/schema/main/tables/t", None),
        ("GET", "/api/v1/analytics/connections/nope", None),
    ]:
        status, document = api.call(method, path, body)
        assert (status, document["error"]) == (404, "not_found"), (method, path, document)


def test_scripts_of_several_statements_run_whole(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    result = api.run(
        connection, "CREATE TABLE s (n INTEGER); INSERT INTO s VALUES (1); INSERT INTO s VALUES (2)"
    )
    assert result["rows_affected"] in (1, 2)  # the last statement's count, or the sum
    assert api.run(connection, "SELECT count(*) FROM s")["rows"] == [[2]]


def test_a_transaction_spans_requests_and_scripts_stay_inside_it(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    api.run(connection, "CREATE TABLE tx (n INTEGER)")
    api.run(connection, "BEGIN")
    api.run(connection, "INSERT INTO tx VALUES (1)")
    api.run(connection, "INSERT INTO tx VALUES (2); INSERT INTO tx VALUES (3)")
    assert api.run(connection, "SELECT count(*) FROM tx")["rows"] == [[3]]
    api.run(connection, "ROLLBACK")
    assert api.run(connection, "SELECT count(*) FROM tx")["rows"] == [[0]]


def test_history_lists_what_ran_newest_first(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    api.query(connection, "SELECT 1")
    api.query(connection, "SELEKT 2")
    document = api.ok("GET", f"/api/v1/connections/{connection}/query/history")
    assert document["count"] == 2
    newest, oldest = document["history"]
    assert (newest["query"], newest["success"]) == ("SELEKT 2", False)
    assert "syntax error" in newest["error"]
    assert (oldest["query"], oldest["success"], oldest["total_rows"]) == ("SELECT 1", True, 1)
    assert api.ok("DELETE", f"/api/v1/connections/{connection}/query/history")["cleared"]
    assert api.ok("GET", f"/api/v1/connections/{connection}/query/history")["count"] == 0


# -- cancellation on the server ------------------------------------------------------------------


def _running(server: DbServer, marker: str) -> list[Any]:
    """The server's sessions whose running statement carries ``marker``."""
    if server.db_type == "postgresql":
        admin = pg_admin()
        try:
            return admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 "
                "AND pid <> pg_backend_pid()",
                f"%{marker}%",
            )
        finally:
            admin.close()
    admin = mysql_admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute("SHOW FULL PROCESSLIST")
            return [
                row
                for row in cursor.fetchall()
                if row[4] == "Query" and marker in (row[7] or "") and "PROCESSLIST" not in row[7]
            ]
    finally:
        admin.close()


def test_a_query_past_its_timeout_is_cancelled_on_the_server(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    marker = f"dbtk-timeout-{secrets.token_hex(4)}"
    sql = SLOW_QUERIES[server.db_type].format(marker=marker)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(api.query, connection, sql, timeout=1)
        if server.db_type != "sqlite":
            # It reached the server (so the check below can fail)...
            wait_until(lambda: _running(server, marker), timeout=5, what="the query to run")
        result = pending.result(timeout=15)
    elapsed = time.monotonic() - started
    assert result["success"] is False
    assert "cancelled" in result["error"]
    assert "timeout of 1 s" in result["error"]
    assert elapsed < 5, elapsed
    if server.db_type != "sqlite":
        # ...and is gone from it, not left running for the remaining nine seconds.
        wait_until(lambda: not _running(server, marker), timeout=3, what="the query to stop")
    assert api.run(connection, "SELECT 1")["rows"] == [[1]]


# -- dead servers --------------------------------------------------------------------------------


def test_a_dead_server_mid_session_is_a_clear_error_and_reconnecting_later_works(
    api: Api, remote_server: DbServer
) -> None:
    proxy = TcpProxy(remote_server.port or 0)
    proxy.start()
    try:
        connection = api.create(remote_server, host="127.0.0.1", port=proxy.port)
        assert api.run(connection, "SELECT 1")["rows"] == [[1]]
        # The server dies while a statement runs.
        sleep = {"postgresql": "SELECT pg_sleep(5)", "mysql": "SELECT SLEEP(5)"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(api.query, connection, sleep[remote_server.db_type])
            time.sleep(0.5)  # let the statement reach the server (no event marks it)
            proxy.stop()
            during = pending.result(timeout=10)
        assert during["success"] is False
        assert "lost the connection" in during["error"], during["error"]
        # While it is down, each request says it cannot connect; the daemon is fine.
        down = api.query(connection, "SELECT 1")
        assert down["success"] is False
        assert "cannot connect" in down["error"], down["error"]
        assert api.ok("GET", "/api/v1/health")["status"] == "healthy"
        proxy.start()  # back, on the same port
        assert api.run(connection, "SELECT 2")["rows"] == [[2]]
    finally:
        proxy.stop()


# -- schema --------------------------------------------------------------------------------------

SCHEMA_DDL = [
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, email VARCHAR(100) NOT NULL UNIQUE, "
    "name VARCHAR(100) DEFAULT 'anon')",
    "CREATE TABLE books (author_id INTEGER NOT NULL, seq INTEGER NOT NULL, title VARCHAR(200), "
    "PRIMARY KEY (author_id, seq), CONSTRAINT books_author_fk FOREIGN KEY (author_id) "
    "REFERENCES authors (id) ON DELETE CASCADE)",
    "CREATE INDEX books_title_idx ON books (title, seq)",
    "INSERT INTO authors VALUES (1, 'a@example.org', 'A')",
    "INSERT INTO books VALUES (1, 1, 'One'), (1, 2, 'Two')",
]


def test_schema_lists_tables_with_columns_keys_indexes_and_foreign_keys(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    for statement in SCHEMA_DDL:
        api.run(connection, statement)
    document = api.ok("GET", f"/api/v1/connections/{connection}/schema")
    assert document["success"] is True
    schema_name = SCHEMA_NAMES.get(server.db_type, server.database)
    tables = document["schemas"][schema_name]["tables"]
    assert set(tables) == {"authors", "books"}
    authors, books = tables["authors"], tables["books"]
    assert authors["type"] == "table"
    assert authors["primary_key"] == ["id"]
    assert books["primary_key"] == ["author_id", "seq"]
    columns = {column["name"]: column for column in authors["columns"]}
    assert [column["name"] for column in authors["columns"]] == ["id", "email", "name"]
    assert columns["email"]["nullable"] is False
    assert columns["name"]["nullable"] is True
    assert "anon" in columns["name"]["default"]
    assert columns["id"]["primary_key"] is True
    assert "int" in columns["id"]["type"].lower()
    assert any(index["unique"] and index["columns"] == ["email"] for index in authors["indexes"])
    (title_index,) = [index for index in books["indexes"] if index["name"] == "books_title_idx"]
    assert (title_index["columns"], title_index["unique"]) == (["title", "seq"], False)
    (foreign_key,) = books["foreign_keys"]
    assert foreign_key["columns"] == ["author_id"]
    assert (foreign_key["referenced_table"], foreign_key["referenced_columns"]) == (
        "authors",
        ["id"],
    )
    assert foreign_key["on_delete"] == "CASCADE"

    one = api.ok("GET", f"/api/v1/connections/{connection}/schema/{schema_name}/tables/books")
    assert one["table"]["primary_key"] == ["author_id", "seq"]
    assert (one["table"]["row_count"], one["table"]["row_count_is_estimate"]) == (2, False)
    status, missing = api.call(
        "GET", f"/api/v1/connections/{connection}/schema/{schema_name}/tables/nope"
    )
    assert (status, missing["error"]) == (404, "not_found")
