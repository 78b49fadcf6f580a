"""The UI's calls for connections, queries, history, schema, settings and health, with its own
bodies, on SQLite, PostgreSQL and MariaDB against a real daemon (UI-CONTRACT §2, §3, §4, §7,
§15; decisions D1-D4, D12). Each field the UI reads is checked for the type and meaning the UI
gives it; dbtkd's own fields stay beside them.

On bdb7a18: query columns came as objects (the results grid crashed), the schema tree as lists
(tables named "0", "1"...), a failed connect was 200 (three screens said "Connected"), the
edit form's empty password erased the saved one, a failed test said only "connection failed",
MongoDB was a generic 422, and the settings routes did not exist (404).
"""

from __future__ import annotations

import datetime
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.app.db.support import Api, DbServer

# SCHEMA_NAMES as the engines name the schema a test's tables go to (MySQL: the database).
SQLITE_SCHEMA = "main"
PG_SCHEMA = "public"


def schema_name(server: DbServer) -> str:
    return {"sqlite": SQLITE_SCHEMA, "postgresql": PG_SCHEMA}.get(server.db_type, server.database)


def ui_form(server: DbServer, name: str = "from the ui", password: str = "") -> dict[str, Any]:
    """ConnectionModal.js:18-26: every field, always; SQLite's host/port/user too."""
    return {
        "name": name,
        "db_type": server.db_type,
        "host": server.host or "localhost",
        "port": server.port or 0,
        "database": server.database,
        "username": server.username or "",
        "password": password,
    }


def iso(value: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(value)
    assert moment.tzinfo is not None, f"expected an offset on {value!r} (new Date() reads it)"
    return moment


# -- §2 connections ------------------------------------------------------------------------


def test_the_connection_form_creates_edits_tests_connects_and_deletes(
    api: Api, server: DbServer
) -> None:
    created = api.ok("POST", "/api/v1/connections", ui_form(server), 201)  # §2.2
    for field in ("id", "name", "db_type", "host", "port"):
        assert field in created
    assert "password" not in created
    listed = api.ok("GET", "/api/v1/connections")  # §2.1: a bare array, no password
    assert isinstance(listed, list)
    assert all("password" not in c for c in listed)
    assert created["id"] in [c["id"] for c in listed]

    # §2.3: Save sends the whole form without id; its empty password keeps the stored one
    edited = api.ok("PUT", f"/api/v1/connections/{created['id']}", ui_form(server, name="renamed"))
    assert edited["name"] == "renamed"

    # §2.5 with the id the UI adds (§1): the stored connection's password fills the form's
    tested = api.ok("POST", "/api/v1/connections/test", {**ui_form(server), "id": created["id"]})
    assert tested["success"] is True, tested
    assert isinstance(tested["message"], str)

    connected = api.ok("POST", f"/api/v1/connections/{created['id']}/connect")  # §2.6
    assert connected["success"] is True
    assert isinstance(connected["message"], str)
    disconnected = api.ok("POST", f"/api/v1/connections/{created['id']}/disconnect")  # §2.7
    assert isinstance(disconnected["success"], bool)
    assert isinstance(disconnected["message"], str)

    api.ok("DELETE", f"/api/v1/connections/{created['id']}")  # §2.4
    assert api.call("DELETE", f"/api/v1/connections/{created['id']}")[0] == 404


def test_an_edit_through_the_form_keeps_a_saved_password(api: Api, postgres: DbServer) -> None:
    created = api.ok("POST", "/api/v1/connections", ui_form(postgres, password="secret"), 201)
    assert created["has_password"] is True
    edited = api.ok("PUT", f"/api/v1/connections/{created['id']}", ui_form(postgres, name="n"))
    assert edited["has_password"] is True, "the form's empty password erased the saved one"
    cleared = api.ok("PUT", f"/api/v1/connections/{created['id']}", {"password": None})
    assert cleared["has_password"] is False


def test_a_failed_test_says_why_in_message_and_a_failed_connect_is_400_with_detail(
    api: Api, postgres: DbServer
) -> None:
    form = {**ui_form(postgres), "port": 1}  # nothing listens on port 1
    tested = api.ok("POST", "/api/v1/connections/test", form)
    assert tested["success"] is False
    assert tested["message"].startswith("connection failed: ")
    assert "127.0.0.1:1" in tested["message"]
    created = api.ok("POST", "/api/v1/connections", form, 201)
    status, document = api.call("POST", f"/api/v1/connections/{created['id']}/connect")
    assert status == 400, document  # D1: the UI treats only a thrown error as a failure
    assert isinstance(document["detail"], str)
    assert "127.0.0.1:1" in document["detail"]
    assert api.call("POST", "/api/v1/connections/nope/connect")[0] == 404


def test_mongodb_is_refused_with_a_sentence_the_toast_can_show(api: Api) -> None:
    body = {
        "name": "m",
        "db_type": "mongodb",
        "host": "localhost",
        "port": 27017,
        "database": "d",
        "username": "",
        "password": "",
    }
    for path in ("/api/v1/connections", "/api/v1/connections/test"):
        status, document = api.call("POST", path, body)
        assert status == 422, document
        assert document["detail"].startswith(
            "MongoDB is not supported by this version of DB Toolkit"
        )
    # Editing a saved connection into a MongoDB one is refused the same way (D12).
    saved = api.ok("GET", "/api/v1/connections")[0]
    status, document = api.call("PUT", f"/api/v1/connections/{saved['id']}", body)
    assert status == 422, document
    assert document["detail"].startswith("MongoDB is not supported by this version of DB Toolkit")


def test_a_relative_sqlite_path_asks_for_the_absolute_one(api: Api) -> None:
    body = {"name": "s", "db_type": "sqlite", "host": "", "port": 0, "database": "x.db"}
    status, document = api.call("POST", "/api/v1/connections", body)
    assert status == 422
    assert "give the absolute path of the SQLite file" in document["detail"]


# -- §3 query and history ------------------------------------------------------------------


def test_the_query_editor_runs_reads_history_and_clears_it(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    api.ok("DELETE", f"/api/v1/connections/{connection}/query/history")
    body = {"query": "SELECT 1 AS one, 'two' AS two", "limit": 1000, "offset": 0, "timeout": 30}
    result = api.ok("POST", f"/api/v1/connections/{connection}/query", body)  # useQuery.js:23-28
    assert result["success"] is True
    assert result["error"] is None  # shown when truthy
    assert result["columns"] == ["one", "two"]  # D2: strings, React keys
    assert len(result["column_types"]) == 2  # dbtkd's types, beside them
    assert result["rows"] == [[1, "two"]]
    assert result["total_rows"] == 1
    assert isinstance(result["execution_time"], float)

    failed = api.ok(
        "POST", f"/api/v1/connections/{connection}/query", {**body, "query": "SELEC nothing"}
    )
    assert failed["success"] is False  # database errors stay 200 (the error panel shows them)
    assert isinstance(failed["error"], str)

    history = api.ok("GET", f"/api/v1/connections/{connection}/query/history")  # §3.2
    assert history["success"] is True
    newest, older = history["history"][:2]
    assert newest["query"] == "SELEC nothing"
    assert newest["success"] is False
    assert older["query"] == body["query"]
    assert older["success"] is True
    assert older["row_count"] == 1
    assert iso(newest["timestamp"]) >= iso(older["timestamp"])  # D3: ISO, newest first
    api.ok("DELETE", f"/api/v1/connections/{connection}/query/history")  # §3.3
    assert api.ok("GET", f"/api/v1/connections/{connection}/query/history")["history"] == []


# -- §4 schema -----------------------------------------------------------------------------

DDL = [
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, email VARCHAR(100) NOT NULL, "
    "name VARCHAR(100) DEFAULT 'anon')",
    "CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL, title VARCHAR(200), "
    "CONSTRAINT books_author_fk FOREIGN KEY (author_id) REFERENCES authors (id))",
    "INSERT INTO authors VALUES (1, 'a@example.org', 'A'), (2, 'b@example.org', 'B')",
]


def test_the_schema_tree_is_keyed_by_name_with_both_column_vocabularies(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    for statement in DDL:
        api.run(connection, statement)
    tree = api.ok("GET", f"/api/v1/connections/{connection}/schema")  # §4.1, D4
    assert tree["connection_id"] == connection
    assert tree["db_type"] == server.db_type
    schema = tree["schemas"][schema_name(server)]
    assert schema["table_count"] == len(schema["tables"])
    books = schema["tables"]["books"]
    assert books["column_count"] == 3
    columns = {c["column_name"]: c for c in books["columns"]}
    assert list(columns) == ["id", "author_id", "title"]
    author_id = columns["author_id"]
    assert author_id["name"] == "author_id"  # ER diagram's vocabulary
    assert author_id["data_type"] == author_id["type"]
    assert "int" in author_id["data_type"].lower()
    assert author_id["is_nullable"] == "NO"
    assert columns["title"]["is_nullable"] == "YES"
    assert columns["id"]["primary_key"] is True
    assert author_id["primary_key"] is False
    assert author_id["foreign_key"] == {"table": "authors", "column": "id"}
    assert "foreign_key" not in columns["title"]
    authors = schema["tables"]["authors"]
    default = {c["column_name"]: c["column_default"] for c in authors["columns"]}["name"]
    assert "anon" in default


def test_table_details_answer_columns_and_five_sample_rows_at_the_top(
    api: Api, server: DbServer
) -> None:
    connection = api.create(server)
    for statement in DDL:
        api.run(connection, statement)
    for n in range(3, 10):
        api.run(connection, f"INSERT INTO authors VALUES ({n}, 'x{n}@example.org', 'N{n}')")
    path = f"/api/v1/connections/{connection}/schema/{schema_name(server)}/tables/authors"
    details = api.ok("GET", path)  # §4.2, TableDetails.js:88-124
    assert [c["column_name"] for c in details["columns"]] == ["id", "email", "name"]
    first = details["columns"][0]
    assert first["is_primary_key"] is True
    assert first["is_nullable"] == "NO"
    assert len(details["sample_data"]) == 5
    assert details["sample_data"][0][:2] == [1, "a@example.org"]  # in `columns` order
    assert details["table"]["row_count"] == 9  # dbtkd's object stays
    missing = path.replace("/authors", "/nope")
    assert api.call("GET", missing)[0] == 404


def test_refresh_answers_and_an_unknown_connection_is_404(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    assert api.ok("POST", f"/api/v1/connections/{connection}/schema/refresh")["success"] is True
    assert api.call("POST", "/api/v1/connections/nope/schema/refresh")[0] == 404


def test_a_database_that_fails_is_502_not_a_200_the_ui_would_cache(
    api: Api, postgres: DbServer
) -> None:
    created = api.ok("POST", "/api/v1/connections", {**ui_form(postgres), "port": 1}, 201)
    for path in ("schema", f"schema/{PG_SCHEMA}/tables/t"):
        status, document = api.call("GET", f"/api/v1/connections/{created['id']}/{path}")
        assert status == 502, document
        assert document["error"] == "db_unavailable"
        assert "127.0.0.1:1" in document["detail"]


# -- §7 settings and health ----------------------------------------------------------------

DEFAULTS = {
    "theme": "auto",
    "editor_font_size": 14,
    "default_query_limit": 1000,
    "default_query_timeout": 30,
    "auto_format_on_paste": False,
    "query_history_retention_days": 30,
    "editor_tab_size": 2,
    "editor_word_wrap": True,
    "editor_auto_complete": True,
    "editor_snippets_enabled": True,
    "default_db_type": "postgresql",
    "connection_timeout": 10,
    "auto_reconnect": True,
}


def test_settings_start_at_the_defaults_take_partial_puts_with_nulls_and_reset(
    api: Api,
) -> None:
    api.ok("POST", "/api/v1/settings/reset")
    assert api.ok("GET", "/api/v1/settings") == DEFAULTS  # §7.1
    # ThemeContext.js:57 sends {theme} alone; the modal the whole object, nulls for cleared
    # numbers, and whatever else it has (ignored).
    assert api.ok("PUT", "/api/v1/settings", {"theme": "dark"})["theme"] == "dark"
    whole = {**DEFAULTS, "theme": "dark", "editor_font_size": None, "default_query_limit": 500}
    saved = api.ok("PUT", "/api/v1/settings", {**whole, "unknown_key": 1})
    assert saved == {**DEFAULTS, "theme": "dark", "default_query_limit": 500}
    status, document = api.call("PUT", "/api/v1/settings", {"editor_font_size": 99})
    assert status == 422
    assert "editor_font_size 10-24" in document["detail"]
    assert api.ok("GET", "/api/v1/settings")["editor_font_size"] == 14  # nothing saved
    assert api.ok("POST", "/api/v1/settings/reset") == DEFAULTS  # §7.3
    assert api.ok("GET", "/api/v1/settings") == DEFAULTS


def test_settings_are_the_same_for_every_window_and_none_is_lost(api: Api) -> None:
    api.ok("POST", "/api/v1/settings/reset")
    fields = ["editor_font_size", "editor_tab_size", "default_query_timeout", "connection_timeout"]
    values = {"editor_font_size": 20, "editor_tab_size": 4, "default_query_timeout": 60}
    values["connection_timeout"] = 30
    # Four windows each save one field at once: every save lands.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: api.ok("PUT", "/api/v1/settings", {f: values[f]}), fields))
    assert {f: api.ok("GET", "/api/v1/settings")[f] for f in fields} == values
    stored = json.loads((api.daemon.home / "data" / "settings.json").read_text())
    assert stored["values"] == values  # only what differs from the defaults
    api.ok("POST", "/api/v1/settings/reset")


def test_api_health_says_healthy(api: Api) -> None:
    health = api.ok("GET", "/api/v1/health")
    assert health["status"] == "healthy"
    assert "version" in health


@pytest.mark.parametrize("bad", [{"theme": "neon"}, {"default_db_type": "mongodb"}])
def test_a_setting_out_of_its_choices_is_refused_naming_them(api: Api, bad: dict[str, str]) -> None:
    status, document = api.call("PUT", "/api/v1/settings", bad)
    assert status == 422
    assert "expected" in document["detail"]
    assert "one of" in document["detail"]
