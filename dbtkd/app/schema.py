"""Routes that describe a database: ``GET /api/v1/connections/{id}/schema`` (the tree) and
``GET /api/v1/connections/{id}/schema/{schema}/tables/{table}`` (one table).

The tree is ``{success, connection_id, db_type, schemas: [{name, tables: [{name, type,
columns: [{name, type, nullable, default, primary_key}], primary_key, indexes: [{name, columns,
unique, primary}], foreign_keys: [{name, columns, referenced_schema, referenced_table,
referenced_columns, on_update, on_delete}]}]}], error}``. One table adds ``row_count`` and
``row_count_is_estimate`` (large server tables report the planner's estimate). Schemas are
PostgreSQL schemas, MySQL databases, and SQLite's attached databases (``main``...). Both run on
the session's metadata connection, so they answer while a long query runs.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError
from dbtkd.app.endpoints import ApiError, Database, JSONResponse, api, route
from dbtkd.app.responses import describe


def schema_routes(database: Database) -> list[BaseRoute]:
    profiles, sessions = database.profiles, database.sessions

    @api
    async def tree(request: Request) -> Response:
        profile = await profiles.get(request.path_params["id"])
        document = {"success": True, "connection_id": profile.id, "db_type": profile.db_type}
        try:
            async with sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
                schemas = await engine.schema()
        except DatabaseError as error:
            return JSONResponse(
                {**document, "success": False, "schemas": [], "error": error.message}
            )
        return JSONResponse({**document, "schemas": schemas, "error": None})

    @api
    async def table(request: Request) -> Response:
        profile = await profiles.get(request.path_params["id"])
        schema_name = request.path_params["schema"]
        table_name = request.path_params["table"]
        try:
            async with sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
                found = await engine.table(schema_name, table_name)
        except DatabaseError as error:
            return JSONResponse({"success": False, "table": None, "error": error.message})
        if found is None:
            raise ApiError(
                404,
                "not_found",
                f"expected a table or view in this database; got schema "
                f"{describe(schema_name)}, table {describe(table_name)}",
            )
        return JSONResponse({"success": True, "schema": schema_name, "table": found, "error": None})

    prefix = "/api/v1/connections/{id}/schema"
    return [
        route(prefix, {"GET": tree}),
        route(f"{prefix}/{{schema}}/tables/{{table}}", {"GET": table}),
    ]
