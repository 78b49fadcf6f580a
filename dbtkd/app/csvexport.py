"""``POST /api/v1/csv/export``: a query's whole result as CSV text (UI-CONTRACT §6.1).

The UI sends the editor's text and saves ``csv_content`` as a file: ``{connection_id, query,
table, delimiter (one character), include_headers}`` → ``{csv_content, row_count}``. Values are
written in the same text forms as query results (the API's value encodings), NULL as an empty
field, minimal quoting, CRLF line ends (Python's ``csv`` defaults, as the old backend wrote).
The whole result is read, up to ``MAX_EXPORT_ROWS`` rows: past that the export is refused with
413 rather than cut silently. A database's refusal is 400 with its words in ``detail`` (the
UI's toast shows it).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.db.engine import DatabaseError
from dbtkd.app.endpoints import ApiError, JSONResponse, database_of, invalid, read_object

# A file the UI holds in memory as one string and saves; past this, a backup is the tool.
MAX_EXPORT_ROWS = 200_000
EXPORT_TIMEOUT = 300.0


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def export(request: Request) -> Response:
    body = await read_object(request)
    connection_id, query = body.get("connection_id"), body.get("query")
    if not isinstance(connection_id, str):
        raise invalid(f"expected connection_id of a saved connection; got {connection_id!r:.60}")
    if not isinstance(query, str) or not query.strip():
        raise invalid("expected query to be the SQL whose result to export; got none")
    delimiter = body.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise invalid(f"expected delimiter to be one character; got {delimiter!r:.10}")
    headers = body.get("include_headers", True)
    database = database_of(request)
    profile = await database.profiles.get(connection_id)
    try:
        async with database.sessions.use(profile, "query", wait=EXPORT_TIMEOUT) as engine:
            result = await engine.execute(
                query, None, limit=MAX_EXPORT_ROWS, offset=0, time_limit=EXPORT_TIMEOUT
            )
    except DatabaseError as error:
        raise ApiError(400, "database_refused", error.message) from None
    if result.has_more:
        raise ApiError(
            413,
            "export_too_large",
            f"expected at most {MAX_EXPORT_ROWS} rows to export; the result has more (add a "
            "WHERE or LIMIT, or make a backup)",
        )
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    if headers is not False:
        writer.writerow([column["name"] for column in result.columns])
    writer.writerows([_text(value) for value in row] for row in result.rows)
    return JSONResponse({"csv_content": out.getvalue(), "row_count": len(result.rows)})
