"""SQLite through the standard library's ``sqlite3``, in worker threads.

The embedded engine: nothing to install, and ``database`` is an absolute path to any file the
user can open (a missing file is created, as ``sqlite3`` does). Statements run in a worker
thread (``run_blocking``); a timeout calls ``sqlite3_interrupt`` from the event loop, which is
safe from any thread and makes the running statement fail with "interrupted". The connection
is in autocommit mode (``isolation_level=None``): each statement commits unless the user ran
``BEGIN``, as in the ``sqlite3`` shell. A script of several statements runs one statement at a
time (``split_script``), so it stays inside the user's transaction.

SQLite has no column types in a result set (only values have types), so a result column's
``type`` is the storage class of its first non-NULL value in the page: INTEGER, REAL, TEXT or
BLOB (NULL when the page has none).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from dbtkd.app.db.engine import (
    CONNECT_TIMEOUT,
    METADATA_TIMEOUT,
    DatabaseError,
    Engine,
    Params,
    QueryResult,
    RowSink,
    column_entry,
    run_blocking,
    split_page,
    table_entry,
    time_left,
)
from dbtkd.app.db.profiles import Profile
from dbtkd.app.db.values import (
    encode_float,
    encode_rows,
    encode_value,
    integer_column_converter,
)

# Rows skipped per fetchmany while moving past ``offset``: big enough to be fast, small enough
# that skipping a million rows never holds more than this many in memory.
SKIP_CHUNK_ROWS = 10_000
# Counting rows is a full scan per table; past this many tables the stats leave the rest out.
MAX_COUNTED_TABLES = 100
_STORAGE_CLASSES = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _describe_column(column: tuple[Any, ...]) -> tuple[str, Callable[[Any], Any] | None]:
    """A result column's type label (its first value's storage class) and converter."""
    kinds = set(map(type, column))
    kinds.discard(type(None))
    first = next((value for value in column if value is not None), None)
    type_name = _STORAGE_CLASSES.get(type(first), "NULL")
    if kinds <= {str, bytes}:
        return type_name, None  # text is JSON as it is; dumps base64-encodes blobs
    if kinds == {int}:
        return type_name, integer_column_converter(column)  # only if some pass 2**53
    if kinds == {float}:
        # REAL may hold ±Infinity (never NaN: SQLite stores NULL instead); a C-level scan
        # spares the common all-finite column a Python call per value.
        present = [value for value in column if value is not None] if None in column else column
        return type_name, None if all(map(math.isfinite, present)) else encode_float
    return type_name, encode_value  # mixed storage classes in one column


def _encode(names: list[str], rows: list[Any]) -> tuple[list[dict[str, str]], list[list[Any]]]:
    """Columns typed by these rows' first values, and the rows JSON-ready."""
    described = [_describe_column(column) for column in zip(*rows, strict=True)] or [
        ("NULL", None) for _ in names
    ]
    columns = [
        {"name": name, "type": type_name}
        for name, (type_name, _) in zip(names, described, strict=True)
    ]
    return columns, encode_rows(rows, [converter for _, converter in described])


def split_script(script: str) -> list[str]:
    """The statements of ``script``, as SQLite's own tokenizer delimits them
    (``sqlite3.complete_statement`` knows strings, comments and trigger bodies)."""
    statements = []
    start = 0
    for index, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : index + 1]):
            statement = script[start : index + 1]
            if statement.strip(" \t\r\n;"):
                statements.append(statement)
            start = index + 1
    if script[start:].strip():
        statements.append(script[start:])  # the last statement may omit its semicolon
    return statements


class SqliteEngine(Engine):
    db_type = "sqlite"

    def __init__(self, profile: Profile, connection: sqlite3.Connection) -> None:
        super().__init__(profile)
        self._connection = connection
        self._closed = False

    @classmethod
    async def open(cls, profile: Profile, purpose: str = "query") -> SqliteEngine:
        path = profile.database or ""

        def connect() -> sqlite3.Connection:
            if not os.path.isdir(os.path.dirname(path)):
                raise DatabaseError(
                    f"cannot open SQLite database {path}: its directory does not exist"
                )
            try:
                connection = sqlite3.connect(
                    path,
                    timeout=CONNECT_TIMEOUT,  # how long to wait for another writer's lock
                    isolation_level=None,
                    check_same_thread=False,  # one thread at a time, serialised by Session
                )
            except sqlite3.Error as error:
                raise DatabaseError(f"cannot open SQLite database {path}: {error}") from None
            try:
                # Opening is lazy: read the header now so "file is not a database" is
                # reported by connect, not by the first query.
                connection.execute("SELECT count(*) FROM sqlite_master").fetchall()
            except sqlite3.Error as error:
                connection.close()
                raise DatabaseError(f"cannot open SQLite database {path}: {error}") from None
            return connection

        return cls(profile, await anyio.to_thread.run_sync(connect))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await anyio.to_thread.run_sync(self._connection.close)

    def is_usable(self) -> bool:
        return not self._closed

    async def _interrupt(self) -> str:
        self._connection.interrupt()
        return "sqlite3_interrupt"

    async def _run(self, work: Callable[[], Any], time_limit: float) -> Any:
        def guarded() -> Any:
            try:
                return work()
            except (sqlite3.Error, sqlite3.Warning) as error:
                raise DatabaseError(str(error)) from None
            except (ValueError, TypeError, OverflowError) as error:
                # Parameters sqlite3 cannot bind (nested lists, integers past 64 bits).
                raise DatabaseError(f"cannot bind parameters: {error}") from None

        return await run_blocking(guarded, time_limit=time_limit, cancel=self._interrupt)

    async def execute(
        self,
        query: str,
        params: Params,
        *,
        limit: int,
        offset: int,
        time_limit: float,
        bounded: bool = False,
    ) -> QueryResult:
        return await self._run(lambda: self._execute(query, params, limit, offset), time_limit)  # type: ignore[no-any-return]

    def _execute(self, query: str, params: Params, limit: int, offset: int) -> QueryResult:
        try:
            return self._run_statement(query, params, limit, offset)
        except (sqlite3.ProgrammingError, sqlite3.Warning) as error:
            if params is not None or "one statement at a time" not in str(error):
                raise
        # A script. executescript() would COMMIT the user's open transaction first, so the
        # statements run one by one: the last that returns rows gives the page, the row
        # counts of the others add up.
        result = QueryResult()
        changed: int | None = None
        for statement in split_script(query):
            outcome = self._run_statement(statement, None, limit, offset)
            if outcome.columns:
                result = outcome
            elif outcome.rows_affected is not None:
                changed = (changed or 0) + outcome.rows_affected
        result.rows_affected = changed
        return result

    def _run_statement(self, query: str, params: Params, limit: int, offset: int) -> QueryResult:
        cursor = self._connection.cursor()
        try:
            cursor.execute(query, params if params is not None else ())
            if cursor.description is None:
                # rowcount is -1 for statements that change no rows by nature (DDL).
                count = cursor.rowcount
                return QueryResult(rows_affected=count if count >= 0 else None)
            names = [description[0] for description in cursor.description]
            skipped = 0
            while skipped < offset:
                chunk = cursor.fetchmany(min(SKIP_CHUNK_ROWS, offset - skipped))
                if not chunk:
                    break
                skipped += len(chunk)
            fetched = cursor.fetchmany(limit + 1)
        finally:
            cursor.close()
        page, has_more = split_page(fetched, limit)
        columns, rows = _encode(names, page)
        return QueryResult(columns, rows, None, has_more)

    async def stream(
        self, query: str, params: Params, *, batch: int, time_limit: float, sink: RowSink
    ) -> int:
        deadline = time.monotonic() + time_limit
        cursor = self._connection.cursor()
        try:
            await self._run(
                lambda: cursor.execute(query, params if params is not None else ()), time_limit
            )
            names = [description[0] for description in cursor.description or ()]
            total = 0
            while True:
                fetched = await self._run(
                    lambda: cursor.fetchmany(batch) if names else [],
                    time_left(deadline, time_limit),
                )
                await sink(*_encode(names, fetched))
                total += len(fetched)
                if len(fetched) < batch:
                    return total
        finally:
            cursor.close()  # finalises the statement; never blocks

    async def server_version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"

    # -- schema -------------------------------------------------------------------------------

    def _tables(self, schema: str) -> list[tuple[str, str]]:
        master = "sqlite_temp_master" if schema == "temp" else f"{quote(schema)}.sqlite_master"
        rows = self._connection.execute(
            f"SELECT name, type FROM {master} WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
        ).fetchall()
        return [(name, kind) for name, kind in rows]

    def _describe(self, schema: str, table: str, kind: str) -> dict[str, Any]:
        execute = self._connection.execute
        info = execute(
            'SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(?, ?)',
            (table, schema),
        ).fetchall()
        columns = [
            column_entry(
                name,
                type_name or "",
                nullable=not notnull and not pk,
                default=default,
                primary_key=bool(pk),
            )
            for name, type_name, notnull, default, pk in info
        ]
        primary_key = [name for name, *_, pk in sorted(info, key=lambda c: c[4]) if pk]
        indexes = []
        for _, index_name, unique, origin, _ in execute(
            'SELECT seq, name, "unique", origin, partial FROM pragma_index_list(?, ?)',
            (table, schema),
        ).fetchall():
            index_columns = execute(
                "SELECT name FROM pragma_index_info(?, ?) ORDER BY seqno", (index_name, schema)
            ).fetchall()
            indexes.append(
                {
                    "name": index_name,
                    "columns": [name for (name,) in index_columns],
                    "unique": bool(unique),
                    "primary": origin == "pk",
                }
            )
        foreign_keys: dict[int, dict[str, Any]] = {}
        for key_id, _, target, source, referenced, on_update, on_delete, _ in execute(
            "SELECT * FROM pragma_foreign_key_list(?, ?) ORDER BY id, seq", (table, schema)
        ).fetchall():
            key = foreign_keys.setdefault(
                key_id,
                {
                    "name": None,  # SQLite keeps no names for foreign key constraints
                    "columns": [],
                    "referenced_schema": schema,
                    "referenced_table": target,
                    "referenced_columns": [],
                    "on_update": on_update,
                    "on_delete": on_delete,
                },
            )
            key["columns"].append(source)
            key["referenced_columns"].append(referenced)
        return table_entry(table, kind, columns, primary_key, indexes, list(foreign_keys.values()))

    def _schema_names(self) -> list[str]:
        names = [name for _, name, _ in self._connection.execute("PRAGMA database_list")]
        # temp always exists; list it only when the session made temporary tables.
        return [name for name in names if name != "temp" or self._tables("temp")]

    async def schema(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            return [
                {
                    "name": schema,
                    "tables": [
                        self._describe(schema, table, kind) for table, kind in self._tables(schema)
                    ],
                }
                for schema in self._schema_names()
            ]

        return await self._run(read, METADATA_TIMEOUT)  # type: ignore[no-any-return]

    async def table(self, schema: str, table: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            if schema not in self._schema_names():
                return None
            kinds = dict(self._tables(schema))
            if table not in kinds:
                return None
            entry = self._describe(schema, table, kinds[table])
            (count,) = self._connection.execute(
                f"SELECT count(*) FROM {quote(schema)}.{quote(table)}"
            ).fetchone()
            return {**entry, "row_count": count, "row_count_is_estimate": False}

        return await self._run(read, METADATA_TIMEOUT)  # type: ignore[no-any-return]

    # -- statistics ---------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        path = self.profile.database or ""

        def read() -> dict[str, Any]:
            execute = self._connection.execute
            (page_count,) = execute("PRAGMA page_count").fetchone()
            (page_size,) = execute("PRAGMA page_size").fetchone()
            (freelist_count,) = execute("PRAGMA freelist_count").fetchone()
            tables = [name for name, kind in self._tables("main") if kind == "table"]
            counts = [
                {
                    "name": name,
                    "row_count": execute(f"SELECT count(*) FROM main.{quote(name)}").fetchone()[0],
                }
                for name in tables[:MAX_COUNTED_TABLES]
            ]
            return {
                "file_size_bytes": _size(path),
                "wal_size_bytes": _size(path + "-wal"),
                "page_count": page_count,
                "page_size": page_size,
                "freelist_count": freelist_count,
                "table_count": len(tables),
                "tables": counts,
            }

        return await self._run(read, METADATA_TIMEOUT)  # type: ignore[no-any-return]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
