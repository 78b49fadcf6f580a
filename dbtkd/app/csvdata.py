"""``POST /api/v1/csv/export`` and ``/csv/import``: CSV text in and out (UI-CONTRACT §6).

Export (§6.1):
The UI sends the editor's text and saves ``csv_content`` as a file: ``{connection_id, query,
table, delimiter (one character), include_headers}`` → ``{csv_content, row_count}``. Values are
written in the same text forms as query results (the API's value encodings), NULL as an empty
field, minimal quoting, CRLF line ends (Python's ``csv`` defaults, as the old backend wrote).
The whole result is read, up to ``MAX_EXPORT_ROWS`` rows: past that the export is refused with
413 rather than cut silently. A database's refusal is 400 with its words in ``detail`` (the
UI's toast shows it).

Import (§6.2, D6): ``{connection_id, schema_name, table_name, csv_content, delimiter,
has_headers}`` → ``{success, rows_imported, failed, errors, total_errors}``. Headers map to
columns by name (exact, then case-insensitive; an unknown header is 422 naming it); without
headers fields map to the table's columns in order. Fields arrive as text, an empty one is
NULL, and the database converts the rest. All or nothing: the rows go in as multi-row INSERTs
inside one transaction, and a refusal rolls it back and answers 400 naming the lines. The file
travels inside the JSON body, so the 1 MiB body limit caps an import at about 1 MiB (413):
kept, since a bigger import belongs in a restore or the database's own loader.
"""

from __future__ import annotations

import contextlib
import csv
import io
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.data import placeholder, schema_of
from dbtkd.app.db.engine import DatabaseError
from dbtkd.app.endpoints import ApiError, JSONResponse, database_of, invalid, read_object
from dbtkd.app.events import publish
from dbtkd.app.schema import qualified, quote_identifier

# A file the UI holds in memory as one string and saves; past this, a backup is the tool.
MAX_EXPORT_ROWS = 200_000
EXPORT_TIMEOUT = 300.0
# Under SQLite's 32,766 bound variables per statement (PostgreSQL and MySQL allow 65,535).
MAX_PARAMETERS = 30_000
MAX_ROWS_PER_INSERT = 1_000


def check_delimiter(delimiter: object) -> str:
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise invalid(f"expected delimiter to be one character; got {delimiter!r:.10}")
    return delimiter


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


def _columns(header: list[str], names: list[str]) -> list[str]:
    """The table's column for each header field: exact name, else case-insensitive."""
    folded = {name.lower(): name for name in names}
    mapped = []
    for field in header:
        column = field if field in names else folded.get(field.strip().lower())
        if column is None:
            raise invalid(
                f"expected the CSV's headers to be columns of the table ({', '.join(names)}); "
                f"got {field!r:.60}"
            )
        mapped.append(column)
    return mapped


async def import_csv(request: Request) -> Response:
    body = await read_object(request)
    connection_id, content = body.get("connection_id"), body.get("csv_content")
    if not isinstance(connection_id, str):
        raise invalid(f"expected connection_id of a saved connection; got {connection_id!r:.60}")
    if not isinstance(content, str):
        raise invalid("expected csv_content to be the file's text")
    delimiter = check_delimiter(body.get("delimiter") or ",")
    records = list(csv.reader(io.StringIO(content), delimiter=delimiter))
    database = database_of(request)
    profile = await database.profiles.get(connection_id)
    schema = schema_of(profile, str(body.get("schema_name") or ""))
    table_name = str(body.get("table_name") or "")
    try:
        async with database.sessions.use(profile, "query", wait=EXPORT_TIMEOUT) as engine:
            entry = await engine.table(schema, table_name)
            if entry is None:
                raise ApiError(
                    404,
                    "not_found",
                    f"expected a table of the schema tree; got {schema}.{table_name}",
                )
            names = [c["name"] for c in entry.get("columns") or []]
            first_line = 1
            if body.get("has_headers", True) is not False and records:
                columns = _columns(records[0], names)
                records, first_line = records[1:], 2
            else:
                columns = names
            rows = [r for r in records if r]  # a blank line is no row
            for number, row in enumerate(rows):
                if len(row) != len(columns):
                    raise invalid(
                        f"expected {len(columns)} fields on every line; line "
                        f"{number + first_line} has {len(row)}"
                    )
            imported = await _insert(
                engine, profile.db_type, schema, table_name, columns, rows, first_line
            )
    except DatabaseError as error:
        raise ApiError(400, "database_refused", error.message) from None
    publish(request.app, "schema_changed", connection_id=profile.id)  # the UI refreshes it
    return JSONResponse(
        {"success": True, "rows_imported": imported, "failed": 0, "errors": [], "total_errors": 0}
    )


async def _insert(
    engine: Any,
    db_type: str,
    schema: str,
    table: str,
    columns: list[str],
    rows: list[list[str]],
    first_line: int,
) -> int:
    """Insert ``rows`` in one transaction (all or nothing); the number inserted."""
    if not rows:
        return 0
    target = qualified(db_type, schema, table)
    names = ", ".join(quote_identifier(db_type, c) for c in columns)
    per_statement = max(1, min(MAX_ROWS_PER_INSERT, MAX_PARAMETERS // max(1, len(columns))))
    await engine.execute("BEGIN", None, limit=1, offset=0, time_limit=EXPORT_TIMEOUT)
    try:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            params: list[Any] = []
            groups = []
            for row in chunk:
                markers = []
                for field in row:
                    params.append(None if field == "" else field)
                    markers.append(placeholder(db_type, len(params)))
                groups.append("(" + ", ".join(markers) + ")")
            try:
                await engine.execute(
                    f"INSERT INTO {target} ({names}) VALUES {', '.join(groups)}",
                    params,
                    limit=1,
                    offset=0,
                    time_limit=EXPORT_TIMEOUT,
                )
            except DatabaseError as error:
                lines = f"{start + first_line}-{start + first_line + len(chunk) - 1}"
                raise DatabaseError(
                    f"the import of lines {lines} was refused, so nothing was imported: "
                    f"{error.message}"
                ) from None
    except BaseException:
        with contextlib.suppress(DatabaseError):
            await engine.execute("ROLLBACK", None, limit=1, offset=0, time_limit=EXPORT_TIMEOUT)
        raise
    await engine.execute("COMMIT", None, limit=1, offset=0, time_limit=EXPORT_TIMEOUT)
    return len(rows)
