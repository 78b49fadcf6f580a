"""``POST /api/v1/csv/export`` and ``/csv/import``: CSV text in and out (UI-CONTRACT §6).

Export (§6.1):
The UI sends the editor's text and saves ``csv_content`` as a file: ``{connection_id, query,
table, delimiter (one character), include_headers}`` → ``{csv_content, row_count}``. Values are
written in the same text forms as query results (the API's value encodings), NULL as an empty
field, minimal quoting, CRLF line ends (Python's ``csv`` defaults, as the old backend wrote).
The whole result is exported, streamed: the engine hands over ``EXPORT_BATCH_ROWS`` rows at a
time (a server-side cursor on PostgreSQL, unbuffered reads on MySQL, ``fetchmany`` on
SQLite), each batch is written as CSV, escaped as JSON and sent, so the worker never holds more
than a batch, whatever the result's size. A database's refusal before the first row is 400 with
its words in ``detail`` (the UI's toast shows it); one after it (the connection lost midway) or
a file past ``MAX_EXPORT_BYTES`` ends the response unfinished, so the UI reports a failure and
saves nothing, rather than a cut file.

Import (§6.2, D6): ``{connection_id, schema_name, table_name, csv_content, delimiter,
has_headers}`` → ``{success, rows_imported, failed, errors, total_errors}``. Headers map to
columns by name (exact, then case-insensitive; an unknown header is 422 naming it); without
headers fields map to the table's columns in order. Fields arrive as text, an empty one is
NULL, and the database converts the rest. All or nothing: the rows go in as multi-row INSERTs
inside one transaction on the session's ``edit`` connection (never the user's transaction), and
a refusal rolls it back and answers 400 naming the first line refused (a line with the wrong
number of fields is 400 ``bad_csv`` naming it). The file travels inside the JSON
body, which this route alone takes up to 64 MiB (``security.LARGE_BODY_ROUTES``; 413 past it).
The body is held once, as its bytes: the file's text is decoded a megabyte at a time
(``bigtext``), parsed line by line and inserted ``MAX_ROWS_PER_INSERT`` rows at a time.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dbtkd.app.bigtext import TextPieces, read_with_text
from dbtkd.app.data import placeholder, schema_of, transaction
from dbtkd.app.db.engine import DatabaseError
from dbtkd.app.db.profiles import Profile
from dbtkd.app.db.sessions import Sessions
from dbtkd.app.endpoints import ApiError, JSONResponse, database_of, invalid, parse_object
from dbtkd.app.events import publish
from dbtkd.app.schema import qualified, quote_identifier

# The UI holds the file as one string: past this it could not (V8 strings stop near 512 MiB).
MAX_EXPORT_BYTES = 256 * 1024 * 1024
EXPORT_BATCH_ROWS = 2_000
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


class _Pieces:
    """A ``csv.writer`` target that hands back what was written since the last ``take``."""

    def __init__(self) -> None:
        self.pieces: list[str] = []

    def write(self, text: str) -> None:
        self.pieces.append(text)

    def take(self) -> str:
        text, self.pieces = "".join(self.pieces), []
        return text


class ExportBrokenError(Exception):
    """The export failed after its first bytes were sent: the response ends unfinished."""


class _ExportResponse(Response):
    """``{"csv_content": "...", "row_count": n}`` written as the rows arrive."""

    def __init__(
        self, sessions: Sessions, profile: Profile, query: str, delimiter: str, headers: bool
    ) -> None:
        self.sessions, self.profile, self.query = sessions, profile, query
        self.delimiter, self.include_headers = delimiter, headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from dbtkd.app.db.values import dumps

        out = _Pieces()
        writer = csv.writer(out, delimiter=self.delimiter)
        sent = 0

        async def sink(columns: list[dict[str, str]], rows: list[list[Any]]) -> None:
            nonlocal sent
            if not sent:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send(
                    {"type": "http.response.body", "body": b'{"csv_content":"', "more_body": True}
                )
                sent = 1
                if self.include_headers:
                    writer.writerow([column["name"] for column in columns])
            writer.writerows([_text(value) for value in row] for row in rows)
            chunk = dumps(out.take())[1:-1]  # the text as the inside of a JSON string
            sent += len(chunk)
            if sent > MAX_EXPORT_BYTES:
                raise ExportBrokenError(
                    f"export stopped: past {MAX_EXPORT_BYTES // 2**20} MiB the app cannot hold "
                    "the file; narrow the query or make a backup"
                )
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def stop_when_the_client_leaves(scope: anyio.CancelScope) -> None:
            # The body was read before this response; what comes now is the disconnect. A
            # client gone must not keep a statement running for the whole export timeout.
            while (await receive())["type"] != "http.disconnect":
                pass
            scope.cancel()

        count: int | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(stop_when_the_client_leaves, group.cancel_scope)
            try:
                async with self.sessions.use(self.profile, "query", wait=EXPORT_TIMEOUT) as engine:
                    count = await engine.stream(
                        self.query,
                        None,
                        batch=EXPORT_BATCH_ROWS,
                        time_limit=EXPORT_TIMEOUT,
                        sink=sink,
                    )
            except DatabaseError as error:
                failure = ApiError(400, "database_refused", error.message)
                if sent:
                    failure = ExportBrokenError(f"export stopped midway: {error.message}")
            except Exception as error:  # raised below, outside the task group (no group)
                failure = error
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if count is None:
            return  # the client left: nothing more to send
        tail = f'","row_count":{count}}}'.encode()
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def export(request: Request) -> Response:
    body = parse_object(await request.body())
    connection_id, query = body.get("connection_id"), body.get("query")
    if not isinstance(connection_id, str):
        raise invalid(f"expected connection_id of a saved connection; got {connection_id!r:.60}")
    if not isinstance(query, str) or not query.strip():
        raise invalid("expected query to be the SQL whose result to export; got none")
    delimiter = check_delimiter(body.get("delimiter", ","))
    database = database_of(request)
    profile = await database.profiles.get(connection_id)
    headers = body.get("include_headers", True) is not False
    return _ExportResponse(database.sessions, profile, query, delimiter, headers)


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


async def _read_body(request: Request) -> tuple[dict[str, Any], Any]:
    """The body's fields, and ``csv_content`` as pieces of text (see ``bigtext``)."""
    # Sized from Content-Length (the gate has checked it against the cap), so the buffer is
    # never grown by copying.
    declared = request.headers.get("content-length", "")
    received = bytearray(int(declared) if declared.isdigit() else 0)
    filled = 0
    async for chunk in request.stream():
        received[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    del received[filled:]
    return read_with_text(received, "csv_content")


def _lines(pieces: Iterable[str]) -> Iterator[str]:
    """The text line by line, each with its line end (as ``csv.reader`` reads a file)."""
    for text in pieces:
        start, size = 0, len(text)
        while start < size:
            end = text.find("\n", start)
            end = size if end < 0 else end + 1
            yield text[start:end]
            start = end


async def import_csv(request: Request) -> Response:
    body, content = await _read_body(request)
    connection_id = body.get("connection_id")
    if not isinstance(connection_id, str):
        raise invalid(f"expected connection_id of a saved connection; got {connection_id!r:.60}")
    if isinstance(content, str):
        content = [content]
    elif not isinstance(content, TextPieces):
        raise invalid("expected csv_content to be the file's text")
    delimiter = check_delimiter(body.get("delimiter") or ",")
    reader = csv.reader(_lines(content), delimiter=delimiter)
    database = database_of(request)
    profile = await database.profiles.get(connection_id)
    schema = schema_of(profile, str(body.get("schema_name") or ""))
    table_name = str(body.get("table_name") or "")
    try:
        async with database.sessions.use(profile, "edit", wait=EXPORT_TIMEOUT) as engine:
            entry = await engine.table(schema, table_name)
            if entry is None:
                raise ApiError(
                    404,
                    "not_found",
                    f"expected a table of the schema tree; got {schema}.{table_name}",
                )
            names = [c["name"] for c in entry.get("columns") or []]
            columns = names
            if body.get("has_headers", True) is not False:
                header = next(reader, None)
                if header is not None:
                    columns = _columns(header, names)
            target = _Target(profile.db_type, qualified(profile.db_type, schema, table_name))
            async with transaction(engine, EXPORT_TIMEOUT):
                imported = await target.insert(engine, columns, reader)
    except DatabaseError as error:
        raise ApiError(400, "database_refused", error.message) from None
    publish(request.app, "schema_changed", connection_id=profile.id)  # the UI refreshes it
    return JSONResponse(
        {"success": True, "rows_imported": imported, "failed": 0, "errors": [], "total_errors": 0}
    )


class _Target:
    """Where an import's rows go: multi-row INSERTs into one table of one engine."""

    def __init__(self, db_type: str, table_sql: str) -> None:
        self.db_type, self.table_sql = db_type, table_sql

    async def insert(self, engine: Any, columns: list[str], reader: Any) -> int:
        """Insert every row ``reader`` gives, in chunks; the number inserted. The caller's
        transaction makes it all or nothing."""
        names = ", ".join(quote_identifier(self.db_type, c) for c in columns)
        per_statement = max(1, min(MAX_ROWS_PER_INSERT, MAX_PARAMETERS // max(1, len(columns))))
        total = 0
        chunk: list[tuple[int, list[str]]] = []  # (line number, fields)
        for row in reader:
            if not row:
                continue  # a blank line is no row
            if len(row) != len(columns):
                raise ApiError(
                    400,
                    "bad_csv",
                    f"expected {len(columns)} fields on every line; line {reader.line_num} has "
                    f"{len(row)}, so nothing was imported",
                )
            chunk.append((reader.line_num, row))
            if len(chunk) == per_statement:
                await self._chunk(engine, names, chunk)
                total += len(chunk)
                chunk = []
        if chunk:
            await self._chunk(engine, names, chunk)
            total += len(chunk)
        return total

    async def _chunk(self, engine: Any, names: str, rows: list[tuple[int, list[str]]]) -> None:
        """One multi-row INSERT behind a savepoint; if the database refuses it, the rows one
        by one from the savepoint, to name the first line it refuses."""
        await self._run(engine, "SAVEPOINT dbtk_import")
        try:
            await self._insert(engine, names, [fields for _, fields in rows])
        except DatabaseError as error:
            await self._run(engine, "ROLLBACK TO SAVEPOINT dbtk_import")
            for line, fields in rows:
                try:
                    await self._insert(engine, names, [fields])
                except DatabaseError as refused:
                    raise DatabaseError(
                        f"line {line} was refused, so nothing was imported: {refused.message}"
                    ) from None
            raise DatabaseError(  # each line alone went in: the statement as a whole did not
                f"the import of lines {rows[0][0]}-{rows[-1][0]} was refused, so nothing was "
                f"imported: {error.message}"
            ) from None

    async def _insert(self, engine: Any, names: str, rows: list[list[str]]) -> None:
        params: list[Any] = []
        groups = []
        for row in rows:
            markers = []
            for field in row:
                params.append(None if field == "" else field)
                markers.append(placeholder(self.db_type, len(params)))
            groups.append("(" + ", ".join(markers) + ")")
        await self._run(
            engine, f"INSERT INTO {self.table_sql} ({names}) VALUES {', '.join(groups)}", params
        )

    @staticmethod
    async def _run(engine: Any, sql: str, params: list[Any] | None = None) -> None:
        await engine.execute(sql, params, limit=1, offset=0, time_limit=EXPORT_TIMEOUT)
