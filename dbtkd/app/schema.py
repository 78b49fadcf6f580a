"""Routes that describe a database: ``GET /api/v1/connections/{id}/schema`` (the tree),
``GET /api/v1/connections/{id}/schema/{schema}/tables/{table}`` (one table) and
``POST /api/v1/connections/{id}/schema/refresh``.

The tree keeps the UI's keyed shape (UI-CONTRACT §4.1, D4): ``{success, connection_id, db_type,
schemas: {<schema>: {table_count, tables: {<table>: {column_count, columns, ...}}}}, error}``.
Each table also carries dbtkd's ``{name, type, primary_key, indexes: [{name, columns, unique,
primary}], foreign_keys: [{name, columns, referenced_schema, referenced_table,
referenced_columns, on_update, on_delete}]}``; each column both vocabularies: the UI's
``{column_name, data_type, is_nullable: "YES"|"NO", column_default, primary_key, foreign_key?:
{table, column}}`` and dbtkd's ``{name, type, nullable, default}``. One table answers the UI's
top-level ``columns`` (with ``is_primary_key``) and ``sample_data`` (≤ 5 rows in column order)
beside dbtkd's ``table`` object (with ``row_count`` and ``row_count_is_estimate``: large server
tables report the planner's estimate). A database that fails answers 502 ``db_unavailable``
(never a 200 the UI would cache for a day). Schemas are PostgreSQL schemas, MySQL databases,
and SQLite's attached databases (``main``...). Both run on the session's metadata connection,
so they answer while a long query runs.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError
from dbtkd.app.endpoints import ApiError, JSONResponse, database_of
from dbtkd.app.events import publish
from dbtkd.app.responses import describe

# TableDetails.js shows at most five sample rows (UI-CONTRACT §4.2).
SAMPLE_ROWS = 5


def unavailable(error: DatabaseError) -> ApiError:
    """A database that cannot answer a read the UI would cache: 502 with its words."""
    return ApiError(502, "db_unavailable", error.message)


def ui_column(column: dict[str, Any], foreign_key: dict[str, str] | None) -> dict[str, Any]:
    """A column in both vocabularies (UI-CONTRACT §4.1's column table)."""
    ui = {
        **column,
        "column_name": column["name"],
        "data_type": column["type"],
        "is_nullable": "YES" if column.get("nullable") else "NO",
        "column_default": column.get("default"),
        "primary_key": bool(column.get("primary_key")),
    }
    if foreign_key is not None:
        ui["foreign_key"] = foreign_key
    return ui


def ui_table(table: dict[str, Any]) -> dict[str, Any]:
    """A table of the tree: dbtkd's fields, columns in both vocabularies, ``column_count``."""
    references: dict[str, dict[str, str]] = {}
    for key in table.get("foreign_keys") or []:
        for column, referenced in zip(key["columns"], key["referenced_columns"], strict=False):
            references.setdefault(column, {"table": key["referenced_table"], "column": referenced})
    columns = [ui_column(c, references.get(c["name"])) for c in table.get("columns") or []]
    return {**table, "columns": columns, "column_count": len(columns)}


def keyed_tree(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    """dbtkd's list of schemas as the UI's objects keyed by name (D4)."""
    return {
        schema["name"]: {
            "table_count": len(schema["tables"]),
            "tables": {table["name"]: ui_table(table) for table in schema["tables"]},
        }
        for schema in schemas
    }


def qualified(db_type: str, schema: str, table: str) -> str:
    """``schema.table``, each part quoted for the engine."""
    return f"{quote_identifier(db_type, schema)}.{quote_identifier(db_type, table)}"


def quote_identifier(db_type: str, name: str) -> str:
    """``name`` quoted for the engine: backticks on MySQL, double quotes elsewhere."""
    if db_type == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


async def tree(request: Request) -> Response:
    database = database_of(request)
    profiles, sessions = database.profiles, database.sessions
    profile = await profiles.get(request.path_params["id"])
    document = {"success": True, "connection_id": profile.id, "db_type": profile.db_type}
    try:
        async with sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
            schemas = await engine.schema()
    except DatabaseError as error:
        raise unavailable(error) from None
    return JSONResponse({**document, "schemas": keyed_tree(schemas), "error": None})


async def table(request: Request) -> Response:
    database = database_of(request)
    profiles, sessions = database.profiles, database.sessions
    profile = await profiles.get(request.path_params["id"])
    schema_name = request.path_params["schema"]
    table_name = request.path_params["table"]
    try:
        async with sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
            found = await engine.table(schema_name, table_name)
            sample = None
            if found is not None:
                sample = await engine.execute(
                    f"SELECT * FROM {qualified(profile.db_type, schema_name, table_name)}",
                    None,
                    limit=SAMPLE_ROWS,
                    offset=0,
                    time_limit=METADATA_TIMEOUT,
                )
    except DatabaseError as error:
        raise unavailable(error) from None
    if found is None or sample is None:
        raise ApiError(
            404,
            "not_found",
            f"expected a table or view in this database; got schema "
            f"{describe(schema_name)}, table {describe(table_name)}",
        )
    columns = [
        {
            "column_name": column["name"],
            "data_type": column["type"],
            "is_nullable": "YES" if column.get("nullable") else "NO",
            "column_default": column.get("default"),
            "is_primary_key": bool(column.get("primary_key")),
        }
        for column in found.get("columns") or []
    ]
    return JSONResponse(
        {
            "success": True,
            "schema": schema_name,
            "table": found,
            "columns": columns,
            "sample_data": sample.rows,
            "error": None,
        }
    )


async def refresh(request: Request) -> Response:
    profiles = database_of(request).profiles
    # Nothing is cached here (every tree is read from the database), so there is nothing
    # to drop; the other windows are told, so they drop theirs too (/ws/events).
    profile = await profiles.get(request.path_params["id"])
    publish(request.app, "schema_changed", connection_id=profile.id)
    return JSONResponse({"success": True, "message": "the schema is read afresh each time"})
