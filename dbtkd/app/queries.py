"""Routes that run SQL and show what ran: ``POST /api/v1/connections/{id}/query`` and
``GET|DELETE /api/v1/connections/{id}/query/history``.

The query body is ``{query, params?, limit (1-10000, default 1000), offset (default 0),
timeout (seconds, default 30)}``. Any statement runs through it (SELECT, DML, DDL, scripts); the
SQL is sent as written, never rewritten. The answer is always HTTP 200 once the connection id
is known: ``{success, columns: [name], column_types: [type], rows: [[...]], rows_affected,
total_rows, has_more, execution_time, error}``; on a database error ``success`` is false and
``error`` holds the database's message. ``total_rows`` counts the rows in this response;
``has_more`` says the result goes on past ``offset + limit``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.db.engine import DatabaseError, QueryResult
from dbtkd.app.db.history import DEFAULT_LIST_LIMIT, MAX_ENTRIES_PER_CONNECTION
from dbtkd.app.endpoints import (
    JSONResponse,
    database_of,
    integer,
    invalid,
    number,
    query_integer,
    read_object,
)
from dbtkd.app.events import may_change_schema, publish
from dbtkd.app.store import StoreTooNewError

log = logging.getLogger("dbtkd.app.db")

DEFAULT_LIMIT = 1000
# A page the UI can render and a response that stays a few megabytes.
MAX_LIMIT = 10_000
# Past a billion rows skipped, paging is the wrong tool.
MAX_OFFSET = 10**9
DEFAULT_TIMEOUT_SECONDS = 30.0
# An hour: long enough for a real maintenance statement, bounded so nothing runs forever.
MAX_TIMEOUT_SECONDS = 3600.0
QUERY_FIELDS = frozenset({"query", "params", "limit", "offset", "timeout"})


def _parse(body: dict[str, Any]) -> tuple[str, Any, int, int, float]:
    unknown = sorted(set(body) - QUERY_FIELDS)
    if unknown:
        raise invalid(f"expected only the fields {', '.join(sorted(QUERY_FIELDS))}; got {unknown}")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise invalid(f"expected query to be a non-empty string of SQL; got {query!r:.40}")
    params = body.get("params")
    if params is not None and not isinstance(params, (list, dict)):
        raise invalid(
            f"expected params to be a list (or an object, for named placeholders); "
            f"got {type(params).__name__}"
        )
    limit = integer(body, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = integer(body, "offset", 0, 0, MAX_OFFSET)
    timeout = number(body, "timeout", DEFAULT_TIMEOUT_SECONDS, 0, MAX_TIMEOUT_SECONDS)
    return query, params, limit, offset, timeout


def query_document(
    result: QueryResult | None, error: str | None, execution_time: float
) -> dict[str, Any]:
    result = result or QueryResult()
    return {
        "success": error is None,
        # D2: names, which the UI renders and uses as React keys; the types beside them.
        "columns": [column["name"] for column in result.columns],
        "column_types": [column["type"] for column in result.columns],
        "rows": result.rows,
        "rows_affected": result.rows_affected,
        "total_rows": len(result.rows),
        "has_more": result.has_more,
        "execution_time": round(execution_time, 6),
        "error": error,
    }


def history_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A history entry with the names the UI reads (D3): ``timestamp`` (ISO 8601 with offset,
    = ``executed_at``) and ``row_count`` (= ``total_rows``)."""
    return {**entry, "timestamp": entry.get("executed_at"), "row_count": entry.get("total_rows")}


async def run_query(request: Request) -> Response:
    database = database_of(request)
    profiles, sessions, history = database.profiles, database.sessions, database.history
    profile = await profiles.get(request.path_params["id"])
    query, params, limit, offset, timeout = _parse(await read_object(request))
    started = time.perf_counter()
    result: QueryResult | None = None
    error: str | None = None
    try:
        async with sessions.use(profile, "query", wait=timeout) as engine:
            result = await engine.execute(
                query, params, limit=limit, offset=offset, time_limit=timeout
            )
    except DatabaseError as failure:
        error = failure.message
    document = query_document(result, error, time.perf_counter() - started)
    if may_change_schema(query):  # also after an error: part of a script may have run
        publish(request.app, "schema_changed", connection_id=profile.id)
    try:
        # Before the answer: a query that was answered is in the history.
        await history.add(
            profile.id,
            query=query,
            success=document["success"],
            execution_time=document["execution_time"],
            total_rows=document["total_rows"],
            rows_affected=document["rows_affected"],
            error=error,
        )
    except (OSError, StoreTooNewError) as failure:
        # The query ran; failing to note it must not fail its answer.
        log.warning("could not save the query history: %s", failure)
    return JSONResponse(document)


async def list_history(request: Request) -> Response:
    database = database_of(request)
    profiles, history = database.profiles, database.history
    profile = await profiles.get(request.path_params["id"])
    limit = query_integer(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_ENTRIES_PER_CONNECTION)
    entries = [history_view(entry) for entry in await history.list(profile.id, limit)]
    return JSONResponse({"success": True, "history": entries, "count": len(entries)})


async def clear_history(request: Request) -> Response:
    database = database_of(request)
    profiles, history = database.profiles, database.history
    profile = await profiles.get(request.path_params["id"])
    cleared = await history.clear(profile.id)
    return JSONResponse({"success": True, "cleared": cleared})
