"""The data explorer's reads as the UI makes them (UI-CONTRACT §5.1-§5.3), on SQLite, PostgreSQL
and MariaDB against a real daemon: browse with paging, sort, filters and the ``...`` cut; the
table's count; a truncated cell's whole value. On bdb7a18 all three routes were 404.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from tests.app.db.support import Api, DbServer
from tests.contract.test_ui_contract import schema_name
from tests.support import wait_until

LONG = "x" * 150
ROWS = [
    (1, "Alice", "alice@example.org", LONG),
    (2, "bob", "bob@example.org", "short"),
    (3, "Carol 100%", "carol@example.org", None),
    (4, "dave_b", "dave@example.org", "d"),
]


def make_people(api: Api, connection: str) -> None:
    api.run(
        connection,
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), "
        "notes TEXT)",
    )
    for row in ROWS:
        values = ", ".join(
            "NULL" if v is None else repr(v) if isinstance(v, str) else str(v) for v in row
        )
        api.run(connection, f"INSERT INTO people VALUES ({values})")


def browse(api: Api, connection: str, server: DbServer, **changes: Any) -> dict[str, Any]:
    body = {  # DataExplorerPage.js:69-77
        "schema_name": schema_name(server),
        "table_name": "people",
        "limit": 100,
        "offset": 0,
        "sort_column": None,
        "sort_order": "ASC",
        "filters": {},
        **changes,
    }
    document: dict[str, Any] = api.ok("POST", f"/api/v1/connections/{connection}/data/browse", body)
    return document


def test_browse_pages_sorts_filters_and_cuts_long_text(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_people(api, connection)
    page = browse(api, connection, server)
    assert page["success"] is True
    assert page["columns"] == ["id", "name", "email", "notes"]
    assert [row[0] for row in page["rows"]] == [1, 2, 3, 4]  # no sort: the primary key's order
    assert page["rows"][0][3] == "x" * 100 + "..."  # the grid's "view full content" marker
    assert page["rows"][1][3] == "short"

    second = browse(api, connection, server, limit=2, offset=2)
    assert [row[0] for row in second["rows"]] == [3, 4]
    by_name = browse(api, connection, server, sort_column="email", sort_order="DESC")
    assert [row[0] for row in by_name["rows"]] == [4, 3, 2, 1]

    # Case-insensitive "contains" on the text form; % and _ are literal; empty means none.
    assert [r[0] for r in browse(api, connection, server, filters={"name": "ALI"})["rows"]] == [1]
    assert [r[0] for r in browse(api, connection, server, filters={"name": "%"})["rows"]] == [3]
    assert [r[0] for r in browse(api, connection, server, filters={"name": "_"})["rows"]] == [4]
    both = browse(api, connection, server, filters={"email": "example", "id": "2", "notes": ""})
    assert [r[0] for r in both["rows"]] == [2]


def test_browse_refuses_unknown_columns_and_the_count_is_the_whole_table(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    make_people(api, connection)
    path = f"/api/v1/connections/{connection}/data/browse"
    for bad in ({"sort_column": "nope"}, {"filters": {"nope": "x"}}, {"sort_order": "SIDEWAYS"}):
        body = {"schema_name": schema_name(server), "table_name": "people", **bad}
        status, document = api.call("POST", path, body)
        assert status == 422, document
        assert "expected" in document["detail"]
    missing = {"schema_name": schema_name(server), "table_name": "nobody"}
    assert api.call("POST", path, missing)[0] == 404

    # DataExplorerPage.js:84-87: axios params, no filters.
    query = f"schema_name={schema_name(server)}&table_name=people"
    counted = api.ok("GET", f"/api/v1/connections/{connection}/data/count?{query}")
    assert counted == {"success": True, "count": 4}


def test_browse_sees_a_changed_table_at_once(api: Api, server: DbServer) -> None:
    """Descriptions are kept between pages, but a change through the daemon drops them
    (schema_changed), and so does a statement refused because another client changed the
    table meanwhile."""
    connection = api.create(server)
    make_people(api, connection)
    assert browse(api, connection, server)["columns"] == ["id", "name", "email", "notes"]
    api.run(connection, "ALTER TABLE people ADD COLUMN extra INTEGER")
    assert browse(api, connection, server, sort_column="extra")["columns"][-1] == "extra"
    if server.db_type == "sqlite":
        return  # SQLite reads an unknown "quoted name" as a string: no refusal to see
    # Another saved connection to the same database drops the column: this one's kept
    # description is stale until the database refuses a statement built from it.
    other = api.create(server, "other")
    api.run(other, "ALTER TABLE people DROP COLUMN extra")
    stale = browse(api, connection, server, sort_column="extra")
    assert stale["success"] is False
    assert "extra" in stale["error"]
    status, refused = api.call(
        "POST",
        f"/api/v1/connections/{connection}/data/browse",
        {"schema_name": schema_name(server), "table_name": "people", "sort_column": "extra"},
    )
    assert status == 422, refused  # described afresh: no such column


def test_a_truncated_cell_gives_its_whole_value(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_people(api, connection)
    path = f"/api/v1/connections/{connection}/data/cell"
    body = {  # DataExplorerPage.js:134-140: the first column of the row identifies it
        "schema_name": schema_name(server),
        "table_name": "people",
        "column_name": "notes",
        "row_identifier": {"id": 1},
    }
    assert api.ok("POST", path, body) == {"success": True, "data": LONG}
    by_text = {**body, "column_name": "email", "row_identifier": {"name": "bob"}}
    assert api.ok("POST", path, by_text)["data"] == "bob@example.org"
    gone = {**body, "row_identifier": {"id": 99}}
    assert api.ok("POST", path, gone) == {"success": False, "error": "No data found"}


def test_public_means_the_connections_own_schema_where_there_is_no_public(
    api: Api, sqlite: DbServer
) -> None:
    connection = api.create(sqlite)
    make_people(api, connection)
    page = api.ok(
        "POST",
        f"/api/v1/connections/{connection}/data/browse",
        {"schema_name": "public", "table_name": "people", "limit": 100, "offset": 0},
    )
    assert len(page["rows"]) == 4


def test_row_edits_from_both_screens_touch_exactly_one_row(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_people(api, connection)
    path = f"/api/v1/connections/{connection}/data/row"
    # The data explorer sends schema_name and the typed text (DataExplorerPage.js:153-158).
    explorer = {
        "table": "people",
        "schema_name": schema_name(server),
        "primary_key": {"id": 2},
        "changes": {"name": "Bobby", "notes": ""},
    }
    assert api.ok("PUT", path, explorer)["success"] is True
    # The query results send schema, "public" by default, and null for an emptied cell
    # (useData.js:14-19, EditableTable.js:27-28).
    results = {
        "table": "people",
        "schema": schema_name(server) if server.db_type == "postgresql" else "public",
        "primary_key": {"id": 3},
        "changes": {"notes": None, "email": "c@example.org"},
    }
    assert api.ok("PUT", path, results)["success"] is True
    rows = api.run(connection, "SELECT id, name, email, notes FROM people ORDER BY id")["rows"]
    assert rows[1] == [2, "Bobby", "bob@example.org", ""]
    assert rows[2] == [3, "Carol 100%", "c@example.org", None]
    assert rows[0][1] == "Alice"  # nothing else touched

    api.run(connection, "INSERT INTO people VALUES (5, 'Bobby', 'twin@example.org', NULL)")
    twins = {**explorer, "primary_key": {"name": "Bobby"}, "changes": {"notes": "x"}}
    status, refused = api.call("PUT", path, twins)
    assert status == 409, refused
    assert "matches 2 rows" in refused["detail"]
    # The refused edit was rolled back: neither twin changed.
    notes = api.run(connection, "SELECT notes FROM people WHERE name = 'Bobby' ORDER BY id")
    assert notes["rows"] == [[""], [None]]
    status, refused = api.call("DELETE", path, {**twins, "changes": None})
    assert status == 409, refused
    assert api.run(connection, "SELECT COUNT(*) FROM people WHERE name = 'Bobby'")["rows"] == [[2]]
    status, refused = api.call("PUT", path, {**explorer, "primary_key": {"id": 99}})
    assert (status, refused["detail"]) == (404, "no row has id = 99; nothing was changed")
    # An edit that leaves the row as it was still found exactly one row (MySQL counts it too).
    assert api.ok("PUT", path, {**explorer, "changes": {"name": "Bobby"}})["success"] is True
    status, refused = api.call("PUT", path, {**explorer, "changes": {"nope": 1}})
    assert status == 422
    assert api.call("PUT", path, {**explorer, "changes": {}})[1]["detail"] == "No changes provided"
    assert api.call("PUT", path, {**explorer, "primary_key": {}})[1]["detail"] == (
        "Primary key required"
    )

    # DELETE with a JSON body (api.js:175), from the query results.
    gone = {"table": "people", "schema": results["schema"], "primary_key": {"id": 4}}
    assert api.ok("DELETE", path, gone)["success"] is True
    ids = [r[0] for r in api.run(connection, "SELECT id FROM people ORDER BY id")["rows"]]
    assert ids == [1, 2, 3, 5]
    assert api.call("DELETE", path, gone)[0] == 404


def test_edits_and_imports_leave_the_users_open_transaction_alone(
    api: Api, remote_server: DbServer
) -> None:
    """A row edit or an import commits its own transaction, not the one the user began in the
    query editor: after them the user's ROLLBACK still undoes the user's insert. (On 4ca2263
    both ran on the editor's connection: their COMMIT made the user's insert permanent.)
    SQLite is left out: it allows one writer at a time, so the edit waits for the user's
    transaction and then reports the database as locked."""
    server = remote_server
    connection = api.create(server)
    make_people(api, connection)
    api.run(connection, "BEGIN")
    api.run(connection, "INSERT INTO people (id, name) VALUES (50, 'uncommitted')")
    path = f"/api/v1/connections/{connection}/data/row"
    edit = {"table": "people", "schema_name": schema_name(server), "primary_key": {"id": 1}}
    assert api.ok("PUT", path, {**edit, "changes": {"name": "Alicia"}})["success"] is True
    content = "id,name\n60,Sixty\n"
    assert (
        api.ok("POST", "/api/v1/csv/import", import_body(connection, server, content))[
            "rows_imported"
        ]
        == 1
    )
    api.run(connection, "ROLLBACK")
    rows = api.run(connection, "SELECT id, name FROM people WHERE id IN (1, 50, 60) ORDER BY id")
    assert rows["rows"] == [[1, "Alicia"], [60, "Sixty"]]


def test_a_value_the_database_refuses_is_a_400_the_toast_shows(
    api: Api, postgres: DbServer
) -> None:
    connection = api.create(postgres)
    make_people(api, connection)
    body = {
        "table": "people",
        "schema_name": "public",
        "primary_key": {"id": 1},
        "changes": {"id": "not a number"},
    }
    status, refused = api.call("PUT", f"/api/v1/connections/{connection}/data/row", body)
    assert status == 400, refused
    assert refused["error"] == "database_refused"
    assert "integer" in refused["detail"]


def test_csv_export_writes_the_whole_result_as_the_ui_saves_it(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_people(api, connection)
    api.run(connection, "UPDATE people SET notes = 'say \"hi\"; bye' WHERE id = 2")
    body = {  # CsvExportModal.js:29-35
        "connection_id": connection,
        "query": "SELECT id, name, notes FROM people ORDER BY id",
        "table": "",
        "delimiter": ";",
        "include_headers": True,
    }
    exported = api.ok("POST", "/api/v1/csv/export", body)
    assert exported["row_count"] == 4
    lines = exported["csv_content"].split("\r\n")
    assert lines[:5] == [
        "id;name;notes",
        f"1;Alice;{LONG}",  # the whole value, not the grid's cut
        '2;bob;"say ""hi""; bye"',  # minimal quoting, quotes doubled
        "3;Carol 100%;",  # NULL is an empty field
        "4;dave_b;d",
    ]
    bare = api.ok("POST", "/api/v1/csv/export", {**body, "include_headers": False})
    assert bare["row_count"] == 4
    assert bare["csv_content"].startswith("1;Alice;")

    status, refused = api.call("POST", "/api/v1/csv/export", {**body, "query": "SELEC 1"})
    assert status == 400, refused
    assert isinstance(refused["detail"], str)  # the toast shows it
    status, refused = api.call("POST", "/api/v1/csv/export", {**body, "delimiter": ""})
    assert status == 422
    assert "delimiter" in refused["detail"]


def numbers(api: Api, connection: str, count: int) -> None:
    """A table ``numbers`` of ``count`` rows (i, 'row i')."""
    api.run(connection, "CREATE TABLE numbers (i INTEGER PRIMARY KEY, label VARCHAR(20))")
    for start in range(1, count + 1, 10_000):
        values = ", ".join(
            f"({i}, 'row {i}')" for i in range(start, min(start + 10_000, count + 1))
        )
        api.run(connection, f"INSERT INTO numbers VALUES {values}")


def test_a_large_export_is_streamed_whole(api: Api, server: DbServer) -> None:
    """30,000 rows, fifteen of the engine's batches: all of them, in order, sent as they come
    (chunked, no Content-Length: the worker never held the file). On 4ca2263 the answer was
    built whole in memory, and past 200,000 rows refused."""
    connection = api.create(server)
    numbers(api, connection, 30_000)
    query = "SELECT i, label FROM numbers ORDER BY i"
    body = {"connection_id": connection, "query": query, "delimiter": ","}
    status, headers, raw = api.daemon.http(
        "POST",
        "/api/v1/csv/export",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert status == 200, raw[:300]
    assert headers.get("transfer-encoding") == "chunked", headers
    exported = json.loads(raw)
    assert exported["row_count"] == 30_000
    lines = exported["csv_content"].split("\r\n")
    assert lines[0] == "i,label"
    assert lines[1] == "1,row 1"
    assert lines[30_000] == "30000,row 30000"
    assert lines[30_001:] == [""]  # the last line ends like the others
    # A statement that returns no rows exports its (empty) result, not an error.
    empty = api.ok(
        "POST", "/api/v1/csv/export", {**body, "query": "SELECT i, label FROM numbers WHERE i < 0"}
    )
    assert empty == {"csv_content": "i,label\r\n", "row_count": 0}


def test_an_export_whose_client_leaves_stops_its_statement(api: Api, postgres: DbServer) -> None:
    """The export's statement is cancelled when the client goes away, instead of running on
    for the export's 300 s (on 69d35a8 it ran to its end with nobody reading)."""
    from tests.app.db.conftest import pg_admin

    connection = api.create(postgres)
    marker = "export_left_behind_42"
    query = f"SELECT pg_sleep(0.01), g AS {marker} FROM generate_series(1, 100000) g"
    body = json.dumps({"connection_id": connection, "query": query}).encode()
    admin = pg_admin()

    def running() -> int:
        rows = admin.fetch(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
            f"%{marker}%",
        )
        return int(rows[0][0])

    client = socket.create_connection(("127.0.0.1", api.daemon.port), timeout=10)
    try:
        client.sendall(
            f"POST /api/v1/csv/export HTTP/1.1\r\nHost: 127.0.0.1:{api.daemon.port}\r\n"
            f"Authorization: Bearer {api.daemon.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_until(lambda: running() == 1, 20, what="the export's statement to run")
    finally:
        client.close()
    try:
        wait_until(lambda: running() == 0, 20, what="the statement to be cancelled")
    finally:
        admin.close()
    # The connection is usable at once for the next request.
    assert api.run(connection, "SELECT 1")["rows"] == [[1]]


def test_a_large_import_goes_in_whole_and_the_body_cap_is_64_mib(
    api: Api, server: DbServer
) -> None:
    """A 2.6 MiB file (over the 1 MiB every other route takes) imports in one transaction; a
    body over 64 MiB is 413 before anything is read into the table; other routes keep 1 MiB."""
    connection = api.create(server)
    api.run(connection, "CREATE TABLE big (id INTEGER PRIMARY KEY, label VARCHAR(100))")
    content = "id,label\n" + "".join(f"{i},{'x' * 80} {i}\n" for i in range(1, 30_001))
    assert len(content) > 2 * 1024 * 1024
    body = {**import_body(connection, server, content), "table_name": "big"}
    assert api.ok("POST", "/api/v1/csv/import", body)["rows_imported"] == 30_000
    count = api.run(connection, "SELECT COUNT(*), MAX(id) FROM big")["rows"]
    assert count == [[30_000, 30_000]]

    # A bad line deep in the file names itself and nothing of the file stays.
    bad = "id,label\n" + "".join(f"{i},ok\n" for i in range(40_001, 42_500)) + "42500\n"
    status, refused = api.call("POST", "/api/v1/csv/import", {**body, "csv_content": bad})
    assert status == 400, refused  # §6.2: 400 naming the first bad line
    assert "line 2501 has 1" in refused["detail"]
    assert api.run(connection, "SELECT COUNT(*) FROM big")["rows"] == [[30_000]]

    # Declared past 64 MiB: refused from the headers, before a byte of the body is read.
    request = http.client.HTTPConnection("127.0.0.1", api.daemon.port, timeout=30)
    try:
        request.putrequest("POST", "/api/v1/csv/import")
        request.putheader("Authorization", f"Bearer {api.daemon.token}")
        request.putheader("Content-Type", "application/json")
        request.putheader("Content-Length", str(64 * 1024 * 1024 + 1))
        request.endheaders()
        answer = request.getresponse()
        status, raw = answer.status, answer.read()
    finally:
        request.close()
    assert status == 413, raw[:200]
    assert b"67108864 bytes (64 MiB)" in raw
    status, refused = api.call("POST", "/api/v1/csv/export", {**body, "query": "x" * (1024 * 1024)})
    assert status == 413, refused
    assert "(1 MiB)" in refused["detail"]


def import_body(connection: str, server: DbServer, content: str, **changes: Any) -> dict[str, Any]:
    return {  # CsvImportModal.js:39-46
        "connection_id": connection,
        "schema_name": schema_name(server),
        "table_name": "people",
        "csv_content": content,
        "delimiter": ",",
        "has_headers": True,
        **changes,
    }


def test_csv_import_maps_headers_takes_empty_as_null_and_is_all_or_nothing(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    make_people(api, connection)
    content = "ID,Email,name\r\n10,ten@example.org,Ten\r\n11,,\r\n"  # headers in another order
    done = api.ok("POST", "/api/v1/csv/import", import_body(connection, server, content))
    assert done == {
        "success": True,
        "rows_imported": 2,
        "failed": 0,
        "errors": [],
        "total_errors": 0,
    }
    rows = api.run(connection, "SELECT id, name, email FROM people WHERE id >= 10 ORDER BY id")
    assert rows["rows"] == [[10, "Ten", "ten@example.org"], [11, None, None]]

    positional = "12;Twelve;t@example.org;n\n"
    by_position = import_body(connection, server, positional, delimiter=";", has_headers=False)
    assert api.ok("POST", "/api/v1/csv/import", by_position)["rows_imported"] == 1

    # Line 3 repeats a primary key: nothing of the file is imported, and the answer names
    # that line (on 69d35a8 only the range of its 1,000-row statement).
    clash = "id,name\n20,Twenty\n10,Again\n21,Fine\n"
    status, refused = api.call("POST", "/api/v1/csv/import", import_body(connection, server, clash))
    assert status == 400, refused
    assert refused["detail"].startswith("line 3 was refused, so nothing was imported: ")
    # A refused line deep in a file, past the first statement's 1,000 rows, with a quoted
    # field over two lines before it: its own line number.
    deep = "id,name\n" + '30,"two\nlines"\n' + "".join(f"{i},x\n" for i in range(31, 1531))
    deep += "bad,x\n"
    status, refused = api.call("POST", "/api/v1/csv/import", import_body(connection, server, deep))
    assert status == 400, refused
    assert refused["detail"].startswith("line 1504 was refused"), refused["detail"]
    count = api.run(connection, "SELECT COUNT(*) FROM people WHERE id = 20")["rows"][0][0]
    assert count == 0
    status, refused = api.call(
        "POST", "/api/v1/csv/import", import_body(connection, server, "id,nope\n1,x\n")
    )
    assert status == 422
    assert "'nope'" in refused["detail"]


HOSTILE_TABLE = "t\"`'; DROP TABLE victim; --"
HOSTILE_COLUMN = "c\"`') OR 1=1; --"


def test_hostile_names_and_values_are_only_ever_data(api: Api, server: DbServer) -> None:
    """SQL injection through any name or value: none reaches the database as SQL."""
    connection = api.create(server)
    quote = '"' if server.db_type != "mysql" else "`"

    def ident(name: str) -> str:
        return quote + name.replace(quote, quote * 2) + quote

    api.run(connection, "CREATE TABLE victim (id INTEGER PRIMARY KEY)")
    api.run(connection, "INSERT INTO victim VALUES (1)")
    api.run(
        connection,
        f"CREATE TABLE {ident(HOSTILE_TABLE)} (id INTEGER PRIMARY KEY, {ident(HOSTILE_COLUMN)} "
        "VARCHAR(100))",
    )
    api.run(connection, f"INSERT INTO {ident(HOSTILE_TABLE)} VALUES (1, 'x')")
    schema = schema_name(server)
    evil = "'; DROP TABLE victim; --"
    data = f"/api/v1/connections/{connection}/data"
    page = api.ok(
        "POST",
        f"{data}/browse",
        {
            "schema_name": schema,
            "table_name": HOSTILE_TABLE,
            "filters": {HOSTILE_COLUMN: "x"},
            "sort_column": HOSTILE_COLUMN,
            "sort_order": "DESC",
        },
    )
    assert page["rows"] == [[1, "x"]]
    assert (
        api.ok(
            "POST",
            f"{data}/browse",
            {"schema_name": schema, "table_name": HOSTILE_TABLE, "filters": {HOSTILE_COLUMN: evil}},
        )["rows"]
        == []
    )
    cell = {
        "schema_name": schema,
        "table_name": HOSTILE_TABLE,
        "column_name": HOSTILE_COLUMN,
        "row_identifier": {HOSTILE_COLUMN: evil},
    }
    assert api.ok("POST", f"{data}/cell", cell)["success"] is False
    edit = {
        "table": HOSTILE_TABLE,
        "schema_name": schema,
        "primary_key": {"id": 1},
        "changes": {HOSTILE_COLUMN: evil},
    }
    assert api.ok("PUT", f"{data}/row", edit)["success"] is True
    # A name that is not the table's is refused by name, never spliced into SQL.
    status, refused = api.call(
        "POST",
        f"{data}/browse",
        {"schema_name": schema, "table_name": "victim", "sort_column": "id; DROP TABLE victim"},
    )
    assert status == 422, refused
    csv_body = {
        "connection_id": connection,
        "schema_name": schema,
        "table_name": HOSTILE_TABLE,
        "csv_content": f'id,{HOSTILE_COLUMN}\n2,"{evil}"\n',
        "delimiter": ",",
    }
    assert api.ok("POST", "/api/v1/csv/import", csv_body)["rows_imported"] == 1

    stored = api.run(
        connection, f"SELECT {ident(HOSTILE_COLUMN)} FROM {ident(HOSTILE_TABLE)} ORDER BY id"
    )["rows"]
    assert stored == [[evil], [evil]]  # the values, as data
    assert api.run(connection, "SELECT COUNT(*) FROM victim")["rows"] == [[1]]  # still there
