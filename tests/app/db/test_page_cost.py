"""A page costs the page, not the rest of the result (issue 18), proved by what the server sent.

``SELECT * FROM w`` with no LIMIT of its own, read one page of 1,000 rows through the real
daemon's API: MariaDB's own count of the rows it sent to the session (``Rows_sent``, read on
the same session through the API afterwards) and, on PostgreSQL, the bytes a counting TCP proxy
saw come from the server, stay far below the table. The session is the same one afterwards
(``CONNECTION_ID()``, a user variable), the next statement is correct, and the second
connection that stopped the statement is gone from the server's process list. Counts, never
times: the speed figures are ``bench/bench_page_cost.py``'s.
"""

from __future__ import annotations

from typing import Any

from tests.app.db.conftest import mysql_admin, pg_admin
from tests.app.db.support import Api, DbServer, TcpProxy
from tests.support import wait_until

# 100,000 rows of about 1 KB: 100 MB if the whole result crossed the wire. What crosses it when
# the statement is stopped early is what the socket buffers held (a few MB on loopback, so a
# few thousand rows), which is why the rows are wide.
ROWS = 100_000
ROW_BYTES = 1000
PAGE = 1000
# Far above what loopback buffers hold in flight (so not flaky), far below the table (so a
# server that sent the whole result fails).
MOST_ROWS_SENT = ROWS // 2
MOST_BYTES_SENT = ROWS * ROW_BYTES // 10


def _fill_mysql(database: str) -> None:
    admin = mysql_admin(database)
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE TABLE w (id INT PRIMARY KEY, pad VARCHAR(1000))")
            cursor.execute(  # MariaDB's sequence engine: the server fills it in one statement
                f"INSERT INTO w SELECT seq, REPEAT('x', {ROW_BYTES}) FROM seq_1_to_{ROWS}"
            )
            cursor.execute("CREATE TABLE marks (n INT)")
    finally:
        admin.close()


def _scalar(api: Api, connection: str, sql: str) -> Any:
    return api.run(connection, sql)["rows"][0][0]


def _rows_sent(api: Api, connection: str) -> int:
    return int(api.run(connection, "SHOW SESSION STATUS LIKE 'Rows_sent'")["rows"][0][1])


def _sessions_on(database: str) -> int:
    admin = mysql_admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", (database,)
            )
            return int(cursor.fetchone()[0])
    finally:
        admin.close()


def test_a_mysql_page_stops_the_server_early_and_keeps_the_session(
    api: Api, mysql: DbServer
) -> None:
    _fill_mysql(mysql.database)
    connection = api.create(mysql)
    api.run(connection, "SET @kept = 42")
    session = _scalar(api, connection, "SELECT CONNECTION_ID()")
    before = _rows_sent(api, connection)

    page = api.run(connection, "SELECT * FROM w", limit=PAGE, offset=0)

    assert [row[0] for row in page["rows"]] == list(range(1, PAGE + 1))
    assert page["has_more"] is True
    sent = _rows_sent(api, connection) - before
    assert PAGE < sent < MOST_ROWS_SENT, f"the server sent {sent} of {ROWS} rows for one page"
    # The same session, unchanged, answers the next statements correctly.
    assert _scalar(api, connection, "SELECT CONNECTION_ID()") == session
    assert _scalar(api, connection, "SELECT @kept") == 42
    assert _scalar(api, connection, "SELECT COUNT(*) FROM w") == ROWS
    # A deep page: the offset rows are skipped, the page is the right one, the rest is not sent.
    before = _rows_sent(api, connection)
    deep = api.run(connection, "SELECT * FROM w;", limit=PAGE, offset=ROWS // 4)
    assert deep["rows"][0][0] == ROWS // 4 + 1
    assert len(deep["rows"]) == PAGE
    sent = _rows_sent(api, connection) - before
    assert sent < ROWS // 4 + MOST_ROWS_SENT, f"the server sent {sent} of {ROWS} rows"
    # Every second connection that stopped a statement is closed: only the session is left.
    wait_until(
        lambda: _sessions_on(mysql.database) == 1,
        timeout=10,
        what="only the query session to be connected to the test database",
    )


def test_a_mysql_script_is_read_to_its_end_so_its_later_statements_run(
    api: Api, mysql: DbServer
) -> None:
    """Stopping a script's first SELECT would skip the statements after it."""
    _fill_mysql(mysql.database)
    connection = api.create(mysql)
    page = api.run(connection, "SELECT * FROM w; INSERT INTO marks VALUES (7)", limit=PAGE)
    assert len(page["rows"]) == PAGE
    assert api.run(connection, "SELECT n FROM marks")["rows"] == [[7]]


def test_a_postgresql_page_crosses_the_wire_alone(api: Api, postgres: DbServer) -> None:
    admin = pg_admin(postgres.database)
    try:
        admin.execute(
            f"CREATE TABLE w AS SELECT i AS id, repeat('x', {ROW_BYTES}) AS pad "
            f"FROM generate_series(1, {ROWS}) AS i"
        )
    finally:
        admin.close()
    proxy = TcpProxy(postgres.port or 0)
    proxy.start()
    try:
        connection = api.create(postgres, host="127.0.0.1", port=proxy.port)
        assert _scalar(api, connection, "SELECT 1") == 1
        for offset in (0, ROWS // 2):
            before = proxy.from_server
            page = api.run(connection, "SELECT * FROM w", limit=PAGE, offset=offset)
            sent = proxy.from_server - before
            # No ORDER BY: a synchronized scan may start mid-table, so only the count is sure.
            assert len(page["rows"]) == PAGE
            assert page["has_more"] is True
            assert sent < MOST_BYTES_SENT, f"{sent} bytes came from the server for one page"
        assert _scalar(api, connection, "SELECT COUNT(*) FROM w") == ROWS
    finally:
        proxy.stop()


def test_a_mysql_page_is_still_answered_when_no_second_connection_can_stop_it(
    api: Api, mysql: DbServer
) -> None:
    """A user allowed one connection cannot open the one that sends KILL QUERY: the rest of
    the result is then read, slowly but correctly, instead of failing a page already read."""
    _fill_mysql(mysql.database)
    user = f"dbtk_one_{mysql.database[-8:]}"
    admin = mysql_admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{user}'@'%' WITH MAX_USER_CONNECTIONS 1")
            cursor.execute(f"GRANT ALL ON `{mysql.database}`.* TO '{user}'@'%'")
        connection = api.create(mysql, username=user)
        before = _rows_sent(api, connection)
        page = api.run(connection, "SELECT * FROM w", limit=PAGE)
        assert len(page["rows"]) == PAGE
        assert page["has_more"] is True
        assert _rows_sent(api, connection) - before >= ROWS  # read to the end, not stopped
        assert _scalar(api, connection, "SELECT COUNT(*) FROM w") == ROWS
        api.ok("DELETE", f"/api/v1/connections/{connection}")
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()
