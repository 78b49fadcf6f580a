"""The data explorer: ``POST /api/v1/connections/{id}/data/browse``, ``GET .../data/count``,
``POST .../data/cell`` and ``PUT|DELETE .../data/row`` (UI-CONTRACT §5.1-§5.4).

A table is named by the schema tree's keys (``schema_name``, ``table_name``); ``public`` on
MySQL or SQLite, the UI's default where there is no such schema, means the connection's own
(its database; ``main``). Every identifier is checked against the table's description and
quoted per engine; every value is a bound parameter. The description is kept a few seconds
(``db/tablecache.py``), so paging does not read the catalog for every page. Browse writes the
page into its own statement (``LIMIT n + 1 OFFSET m``: the database skips, the extra row tells
``has_more``), orders by the chosen column or else by the primary key (stable pages), filters
each non-empty column as a case-insensitive "contains" on the column's text form (``%`` and
``_`` taken literally), and cuts text longer than 100 characters to 100 plus ``...``, the
marker the grid shows a "view full content" button for (``data/cell`` gives the whole value).
A database's refusal is ``{success: false, error}``.

A row edit takes ``schema`` or ``schema_name`` (D5) and the UI's row key (the grid's first
column, not always a key). It runs in its own transaction on the session's ``edit``
connection (never inside a transaction the user has open in the editor), and that transaction
commits only if the statement changed exactly one row: none is 404, several are 409, and both
roll back, so no check can go stale between a count and the change. Column names must exist
(422), a ``null`` value is SQL NULL, and a database's refusal is 400 with its words in
``detail`` (the UI toasts any 2xx as success).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError, Engine, QueryResult
from dbtkd.app.db.profiles import Profile
from dbtkd.app.db.tablecache import TableDescriptions
from dbtkd.app.endpoints import (
    ApiError,
    JSONResponse,
    database_of,
    integer,
    invalid,
    read_object,
)
from dbtkd.app.schema import qualified, quote_identifier, unavailable

# DataGrid.js shows "view full content" for a string ending in "...": the old backend's cut.
CELL_PREVIEW_CHARS = 100
MAX_PAGE = 10_000
# Past a billion rows skipped, paging is the wrong tool (as for queries).
MAX_OFFSET = 10**9
STATEMENT_TIMEOUT = 30.0
DEFAULT_SCHEMA_ALIAS = "public"


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"expected {name} to be a name from the schema tree; got {value!r:.60}")
    return value


def schema_of(profile: Profile, name: str) -> str:
    """The UI's default ``public`` on engines without it means the connection's own schema."""
    if name == DEFAULT_SCHEMA_ALIAS and profile.db_type == "sqlite":
        return "main"
    if name == DEFAULT_SCHEMA_ALIAS and profile.db_type == "mysql" and profile.database:
        return profile.database
    return name


def placeholder(db_type: str, number: int) -> str:
    """The engine's bound-parameter marker for the ``number``-th value (1-based)."""
    return {"postgresql": f"${number}", "mysql": "%s"}.get(db_type, "?")


def like_pattern(text: str) -> str:
    """``%text%`` with the text's own ``\\``, ``%`` and ``_`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def contains(db_type: str, column: str, marker: str) -> str:
    """A case-insensitive "contains" on the column's text form."""
    if db_type == "postgresql":
        return f"CAST({column} AS text) ILIKE {marker} ESCAPE '\\'"
    if db_type == "mysql":
        return f"LOWER(CAST({column} AS CHAR)) LIKE LOWER({marker}) ESCAPE '\\\\'"
    return f"CAST({column} AS TEXT) LIKE {marker} ESCAPE '\\'"  # SQLite: ASCII case-insensitive


def preview(value: Any) -> Any:
    if isinstance(value, str) and len(value) > CELL_PREVIEW_CHARS:
        return value[:CELL_PREVIEW_CHARS] + "..."
    return value


class Table:
    """A table named by the UI, described by its engine: quoting, columns, primary key."""

    def __init__(self, profile: Profile, schema: str, name: str, entry: dict[str, Any]) -> None:
        self.db_type = profile.db_type
        self.columns = {c["name"]: c for c in entry.get("columns") or []}
        self.primary_key = list(entry.get("primary_key") or [])
        self.sql = qualified(self.db_type, schema, name)

    def column(self, name: object, what: str) -> str:
        if not isinstance(name, str) or name not in self.columns:
            raise invalid(
                f"expected {what} to be a column of the table ({', '.join(self.columns)}); "
                f"got {name!r:.60}"
            )
        return quote_identifier(self.db_type, name)

    def bound(self, name: str, value: Any, number: int) -> tuple[str, Any]:
        """The SQL for ``value`` as the ``number``-th parameter, and the value to bind.
        PostgreSQL gets it as text cast to the column's type: the UI sends what the grid
        showed (a string or a number), whatever the column's type."""
        marker = placeholder(self.db_type, number)
        if self.db_type == "postgresql":
            return f"CAST(CAST({marker} AS text) AS {self.columns[name]['type']})", _as_text(value)
        return marker, value

    def equals(self, name: str, value: Any, number: int) -> tuple[str, list[Any]]:
        """``column = value`` (``IS NULL`` for null)."""
        column = self.column(name, "a row identifier")
        if value is None:
            return f"{column} IS NULL", []
        sql, bound = self.bound(name, value, number)
        return f"{column} = {sql}", [bound]


async def statement(engine: Engine, sql: str, params: list[Any] | None = None) -> QueryResult:
    """Run one statement whose answer is at most a row (a count, a cell, a change)."""
    return await engine.execute(
        sql, params or None, limit=1, offset=0, time_limit=STATEMENT_TIMEOUT
    )


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _table(
    engine: Engine, profile: Profile, body: dict[str, Any], known: TableDescriptions
) -> Table:
    """The table the body names, described from ``known`` or else by the engine."""
    schema = schema_of(profile, _text(body, "schema_name"))
    name = _text(body, "table_name")
    entry = known.get(profile.id, schema, name)
    if entry is None:
        entry = await engine.table(schema, name)
        if entry is None:
            raise ApiError(
                404, "not_found", f"expected a table of the schema tree; got {schema}.{name}"
            )
        known.put(profile.id, schema, name, entry)
    return Table(profile, schema, name, entry)


async def browse(request: Request) -> Response:
    database = database_of(request)
    profile = await database.profiles.get(request.path_params["id"])
    body = await read_object(request)
    limit = integer(body, "limit", 100, 1, MAX_PAGE)
    offset = integer(body, "offset", 0, 0, MAX_OFFSET)
    order = body.get("sort_order") or "ASC"
    if not isinstance(order, str) or order.upper() not in ("ASC", "DESC"):
        raise invalid(f"expected sort_order ASC or DESC; got {order!r:.20}")
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise invalid(f"expected filters to be an object of column → text; got {filters!r:.60}")
    try:
        async with database.sessions.use(profile, "query", wait=STATEMENT_TIMEOUT) as engine:
            table = await _table(engine, profile, body, database.tables)
            clauses: list[str] = []
            params: list[Any] = []
            for name, text in filters.items():
                if text in (None, ""):
                    continue  # an empty box is no filter
                column = table.column(name, "a filter's column")
                params.append(like_pattern(str(text)))
                clauses.append(
                    contains(table.db_type, column, placeholder(table.db_type, len(params)))
                )
            sql = f"SELECT * FROM {table.sql}"
            if clauses:
                sql += " WHERE " + " AND ".join(clauses)
            if body.get("sort_column"):
                sql += (
                    f" ORDER BY {table.column(body['sort_column'], 'sort_column')} {order.upper()}"
                )
            elif table.primary_key:  # stable pages
                sql += " ORDER BY " + ", ".join(
                    quote_identifier(table.db_type, k) for k in table.primary_key
                )
            # Our own statement, so the database pages it (one row more tells has_more): no
            # rows skipped or cut short by the engine.
            sql += f" LIMIT {limit + 1} OFFSET {offset}"
            result = await engine.execute(
                sql,
                params or None,
                limit=limit,
                offset=0,
                time_limit=STATEMENT_TIMEOUT,
                bounded=True,
            )
    except DatabaseError as error:
        database.tables.forget(profile.id)  # a column gone since it was described, say
        return JSONResponse({"success": False, "columns": [], "rows": [], "error": error.message})
    return JSONResponse(
        {
            "success": True,
            "columns": [c["name"] for c in result.columns],
            "rows": [[preview(value) for value in row] for row in result.rows],
            "limit": limit,
            "offset": offset,
            "has_more": result.has_more,
        }
    )


async def count(request: Request) -> Response:
    database = database_of(request)
    profile = await database.profiles.get(request.path_params["id"])
    names = {k: request.query_params.get(k) for k in ("schema_name", "table_name")}
    try:
        async with database.sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
            table = await _table(engine, profile, names, database.tables)
            result = await statement(engine, f"SELECT COUNT(*) FROM {table.sql}")
    except DatabaseError as error:
        database.tables.forget(profile.id)
        raise unavailable(error) from None
    return JSONResponse({"success": True, "count": int(result.rows[0][0])})


async def cell(request: Request) -> Response:
    database = database_of(request)
    profile = await database.profiles.get(request.path_params["id"])
    body = await read_object(request)
    identifier = body.get("row_identifier")
    if not isinstance(identifier, dict) or not identifier:
        raise invalid(f"expected row_identifier {{column: value}}; got {identifier!r:.60}")
    try:
        async with database.sessions.use(profile, "query", wait=STATEMENT_TIMEOUT) as engine:
            table = await _table(engine, profile, body, database.tables)
            wanted = table.column(body.get("column_name"), "column_name")
            clauses: list[str] = []
            params: list[Any] = []
            for name, value in identifier.items():
                clause, values = table.equals(name, value, len(params) + 1)
                clauses.append(clause)
                params.extend(values)
            result = await statement(
                engine, f"SELECT {wanted} FROM {table.sql} WHERE " + " AND ".join(clauses), params
            )
    except DatabaseError as error:
        database.tables.forget(profile.id)
        return JSONResponse({"success": False, "error": error.message})
    if not result.rows:
        return JSONResponse({"success": False, "error": "No data found"})
    return JSONResponse({"success": True, "data": result.rows[0][0]})


def _row_target(body: dict[str, Any]) -> dict[str, Any]:
    """The UI's row-edit body: ``schema`` (query results) or ``schema_name`` (the explorer)."""
    schema = body.get("schema_name") or body.get("schema")
    key = body.get("primary_key")
    if not isinstance(key, dict) or not key:
        raise ApiError(400, "bad_request", "Primary key required")
    return {"schema_name": schema, "table_name": body.get("table"), "key": key}


def _key_clause(table: Table, key: dict[str, Any], first: int = 1) -> tuple[str, list[Any]]:
    """``key`` as a WHERE clause whose markers are numbered from ``first``, and its values."""
    clauses: list[str] = []
    params: list[Any] = []
    for name, value in key.items():
        clause, values = table.equals(name, value, first + len(params))
        clauses.append(clause)
        params.extend(values)
    return " AND ".join(clauses), params


@contextlib.asynccontextmanager
async def transaction(engine: Engine, time_limit: float = STATEMENT_TIMEOUT) -> AsyncIterator[None]:
    """``BEGIN`` … ``COMMIT``; any exception (a refusal, a cancelled request) rolls back."""
    await engine.execute("BEGIN", None, limit=1, offset=0, time_limit=time_limit)
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(DatabaseError):
            await engine.execute("ROLLBACK", None, limit=1, offset=0, time_limit=time_limit)
        raise
    await engine.execute("COMMIT", None, limit=1, offset=0, time_limit=time_limit)


def check_one_row(changed: int | None, key: dict[str, Any]) -> None:
    """Refuse (and so roll back) an edit that changed other than one row: 404 none, 409 more."""
    described = ", ".join(f"{k} = {v!r}" for k, v in key.items())
    if not changed:
        raise ApiError(404, "not_found", f"no row has {described}; nothing was changed")
    if changed > 1:
        raise ApiError(
            409,
            "not_unique",
            f"{described} matches {changed} rows; the edit was rolled back (the first column "
            "is not a unique key)",
        )


async def update_row(request: Request) -> Response:
    database = database_of(request)
    profile = await database.profiles.get(request.path_params["id"])
    body = await read_object(request)
    target = _row_target(body)
    changes = body.get("changes")
    if not isinstance(changes, dict) or not changes:
        raise ApiError(400, "bad_request", "No changes provided")
    try:
        async with database.sessions.use(profile, "edit", wait=STATEMENT_TIMEOUT) as engine:
            table = await _table(engine, profile, target, database.tables)
            assignments: list[str] = []
            values: list[Any] = []
            for name, value in changes.items():
                column = table.column(name, "a changed column")
                if value is None:
                    assignments.append(f"{column} = NULL")
                    continue
                sql, bound = table.bound(name, value, len(values) + 1)
                assignments.append(f"{column} = {sql}")
                values.append(bound)
            # The key's markers come after the values' (PostgreSQL numbers them).
            where, key_values = _key_clause(table, target["key"], len(values) + 1)
            async with transaction(engine):
                changed = await statement(
                    engine,
                    f"UPDATE {table.sql} SET {', '.join(assignments)} WHERE {where}",
                    [*values, *key_values],
                )
                check_one_row(changed.rows_affected, target["key"])
    except DatabaseError as error:
        database.tables.forget(profile.id)
        raise ApiError(400, "database_refused", error.message) from None
    return JSONResponse({"success": True, "message": "Row updated successfully"})


async def delete_row(request: Request) -> Response:
    database = database_of(request)
    profile = await database.profiles.get(request.path_params["id"])
    target = _row_target(await read_object(request))
    try:
        async with database.sessions.use(profile, "edit", wait=STATEMENT_TIMEOUT) as engine:
            table = await _table(engine, profile, target, database.tables)
            where, key_values = _key_clause(table, target["key"])
            async with transaction(engine):
                changed = await statement(
                    engine, f"DELETE FROM {table.sql} WHERE {where}", key_values
                )
                check_one_row(changed.rows_affected, target["key"])
    except DatabaseError as error:
        database.tables.forget(profile.id)
        raise ApiError(400, "database_refused", error.message) from None
    return JSONResponse({"success": True, "message": "Row deleted successfully"})
