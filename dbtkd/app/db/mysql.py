"""MySQL and MariaDB through PyMySQL (imported on first use), in worker threads.

Why PyMySQL: pure Python (about 0.4 MiB, no compiled code to ship per platform), maintained,
and the base that the async wrappers (aiomysql) only put a coroutine face on; run in a worker
thread through ``run_blocking`` it costs the event loop nothing. Decoding speed is its weak
side; the bench measures the API against this same driver.

Results are read unbuffered (``SSCursor``): only the page's ``limit + 1`` rows are decoded; the
``offset`` rows before it are read off the socket as raw packets (the server cannot skip them
without a rewritten SQL text, which the user's statement never gets). The MySQL protocol has no
way to stop a result set early, so when a single statement still has rows after the page (more
than ``DRAIN_BEFORE_KILL_ROWS``), ``KILL QUERY`` from a second connection ends it: the server
stops at its next row, the little already in flight is read raw, and the session (variables,
transaction, temporary tables) stays as it was. A page therefore costs the same whether the
result has a thousand rows after it or ten million. A script of several statements is still
read to its end (killing it would skip its later statements). Multi-statement scripts are allowed
(``CLIENT.MULTI_STATEMENTS``): the last statement that returns rows gives the page, and row
counts of the others are summed. Parameters use PyMySQL's ``%s`` (list) or ``%(name)s`` (object)
placeholders. A statement past its timeout is stopped with ``KILL QUERY <id>`` sent from a second
connection; if it is still running ``CANCEL_GRACE`` later, ``KILL CONNECTION`` ends it.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread

from dbtkd.app.db.engine import (
    CONNECT_TIMEOUT,
    METADATA_TIMEOUT,
    ConnectionLostError,
    DatabaseError,
    DriverMissingError,
    Engine,
    Params,
    QueryResult,
    RowSink,
    run_blocking,
    split_page,
    time_left,
)
from dbtkd.app.db.mycatalog import describe_tables, read_stats
from dbtkd.app.db.profiles import Profile
from dbtkd.app.db.values import converter_for, encode_rows, guarded

# Rows after the page read (raw) before ending the statement with KILL QUERY: a kill costs a
# second connection (about 5-20 ms), reading a row raw a few microseconds, so a short remainder
# is cheaper to read than to kill, and is read without the kill's race.
DRAIN_BEFORE_KILL_ROWS = 2_000
# The server's answer to KILL QUERY in the middle of a result set.
ER_QUERY_INTERRUPTED = 1317
_SEVERAL_STATEMENTS = re.compile(r";(?!(\s|;)*$)")
# Client error codes meaning the connection is gone (CR_SERVER_GONE_ERROR, CR_SERVER_LOST,
# CR_SERVER_LOST_EXTENDED, CR_COMMANDS_OUT_OF_SYNC after a broken read).
LOST_CONNECTION_ERRORS = frozenset({2006, 2013, 2014, 2055})
BINARY_CHARSET = 63
# Statements whose OK packet counts rows changed; other statements report 0 (DDL), which the
# API shows as null.
_DML_KEYWORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD", "WITH"})
_LEADING_NOISE = re.compile(r"(\s+|--[^\n]*\n?|#[^\n]*\n?|/\*.*?\*/)+", re.DOTALL)
# FIELD_TYPE codes → (label, value kind).
_TYPES: dict[int, tuple[str, str]] = {
    0: ("DECIMAL", "decimal"),
    246: ("DECIMAL", "decimal"),
    1: ("TINYINT", "small_int"),
    2: ("SMALLINT", "small_int"),
    3: ("INT", "small_int"),
    9: ("MEDIUMINT", "small_int"),
    13: ("YEAR", "small_int"),
    8: ("BIGINT", "int"),
    4: ("FLOAT", "float"),
    5: ("DOUBLE", "float"),
    6: ("NULL", "text"),
    7: ("TIMESTAMP", "temporal"),
    10: ("DATE", "temporal"),
    12: ("DATETIME", "temporal"),
    11: ("TIME", "clock_duration"),
    16: ("BIT", "bytes"),
    245: ("JSON", "text"),
    247: ("ENUM", "text"),
    248: ("SET", "any"),
    255: ("GEOMETRY", "bytes"),
    15: ("VARCHAR", "text"),
    253: ("VARCHAR", "text"),
    254: ("CHAR", "text"),
    249: ("TINYTEXT", "text"),
    250: ("MEDIUMTEXT", "text"),
    251: ("LONGTEXT", "text"),
    252: ("TEXT", "text"),
}
_BINARY_LABELS = {
    15: "VARBINARY",
    253: "VARBINARY",
    254: "BINARY",
    249: "TINYBLOB",
    250: "MEDIUMBLOB",
    251: "LONGBLOB",
    252: "BLOB",
}


def _pymysql() -> Any:
    try:
        import pymysql  # type: ignore[import-untyped]
        import pymysql.cursors  # type: ignore[import-untyped]
    except ImportError:
        raise DriverMissingError("mysql", "PyMySQL") from None
    return pymysql


def leading_keyword(query: str) -> str:
    """The first word of ``query`` after whitespace and comments, upper-cased."""
    noise = _LEADING_NOISE.match(query)
    match = re.match(r"[A-Za-z]+", query[noise.end() if noise else 0 :])
    return match.group(0).upper() if match else ""


def format_error(error: Exception) -> str:
    if len(error.args) >= 2 and isinstance(error.args[0], int):
        return f"ERROR {error.args[0]}: {error.args[1]}"
    return str(error)


def _column(field: Any, description: tuple[Any, ...]) -> tuple[dict[str, str], Any]:
    code = description[1]
    label, kind = _TYPES.get(code, (f"TYPE {code}", "any"))
    binary = getattr(field, "charsetnr", None) == BINARY_CHARSET
    if binary and code in _BINARY_LABELS:
        label, kind = _BINARY_LABELS[code], "bytes"
    converter = converter_for(kind)
    if kind == "clock_duration" and converter is not None:
        converter = guarded(converter)  # a zero or invalid TIME comes back as a string
    return {"name": description[0], "type": label}, converter


class MysqlEngine(Engine):
    db_type = "mysql"

    def __init__(self, profile: Profile, connection: Any) -> None:
        super().__init__(profile)
        self._connection = connection
        self._thread_id: int = connection.thread_id()
        self._broken = False
        self.last_sample: tuple[float, int] | None = None  # (monotonic, Questions) for qps

    @staticmethod
    def _connect(profile: Profile, purpose: str) -> Any:
        pymysql = _pymysql()
        from pymysql.constants import CLIENT  # type: ignore[import-untyped]

        try:
            return pymysql.connect(
                host=profile.host,
                port=profile.port,
                user=profile.username,
                password=profile.password or "",
                database=profile.database or None,
                connect_timeout=CONNECT_TIMEOUT,
                charset="utf8mb4",
                autocommit=True,  # like the mysql client: each statement commits
                # The daemon's own edits check that exactly one row matched: with FOUND_ROWS
                # an UPDATE that leaves a row as it was still counts it.
                client_flag=CLIENT.MULTI_STATEMENTS
                | (CLIENT.FOUND_ROWS if purpose == "edit" else 0),
                local_infile=False,  # LOAD DATA LOCAL lets a server read client files
                program_name=f"dbtk-{purpose}",
            )
        except pymysql.err.MySQLError as error:
            raise DatabaseError(
                f"cannot connect to {profile.describe()}: {format_error(error)}"
            ) from None

    @classmethod
    async def open(cls, profile: Profile, purpose: str = "query") -> MysqlEngine:
        connection = await anyio.to_thread.run_sync(cls._connect, profile, purpose)
        return cls(profile, connection)

    async def close(self) -> None:
        self._broken = True

        def close() -> None:
            try:
                self._connection.close()
            except Exception:
                self._connection._force_close()  # server gone: just drop the socket

        await anyio.to_thread.run_sync(close)

    def is_usable(self) -> bool:
        if self._broken or not self._connection.open:
            return False
        # An idle connection has nothing to read; if its socket is readable the server closed
        # it (restart, wait_timeout, KILL). Found now, a new connection is opened before the
        # query is sent, instead of failing the query.
        sock = getattr(self._connection, "_sock", None)
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    async def _kill(self, what: str) -> str:
        def kill() -> None:
            killer = self._connect(self.profile, "cancel")
            try:
                with killer.cursor() as cursor:
                    cursor.execute(f"KILL {what} {int(self._thread_id)}")
            finally:
                killer.close()

        try:
            await anyio.to_thread.run_sync(kill)
        except Exception as error:  # the statement runs on; the grace period then escalates
            return f"KILL {what} failed: {error}"
        return f"KILL {what} {self._thread_id} was sent to the server"

    async def _escalate(self) -> None:
        self._broken = True
        await self._kill("CONNECTION")

    async def _run(self, work: Callable[[], Any], time_limit: float) -> Any:
        pymysql = _pymysql()

        def guarded_work() -> Any:
            try:
                return work()
            except pymysql.err.MySQLError as error:
                code = error.args[0] if error.args else None
                if code in LOST_CONNECTION_ERRORS or isinstance(error, pymysql.err.InterfaceError):
                    self._broken = True
                    raise ConnectionLostError(
                        f"lost the connection to {self.profile.describe()}: "
                        f"{format_error(error)}; the next request reconnects"
                    ) from None
                raise DatabaseError(format_error(error)) from None
            except (TypeError, ValueError, KeyError) as error:
                # PyMySQL formats parameters into the SQL text with %: a count or name that
                # does not match is a TypeError or KeyError; undecodable text a ValueError.
                raise DatabaseError(
                    f"the driver refused the statement or a value (placeholders are %s or "
                    f"%(name)s): {error}"
                ) from None

        return await run_blocking(
            guarded_work,
            time_limit=time_limit,
            cancel=lambda: self._kill("QUERY"),
            escalate=self._escalate,
        )

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
        args: Any = params if isinstance(params, dict) or params is None else tuple(params)
        return await self._run(  # type: ignore[no-any-return]
            lambda: self._execute(query, args, limit, offset), time_limit
        )

    def _execute(self, query: str, args: Any, limit: int, offset: int) -> QueryResult:
        pymysql = _pymysql()
        cursor = self._connection.cursor(pymysql.cursors.SSCursor)
        page: tuple[list[Any], list[Any], list[Any]] | None = None
        affected = 0
        try:
            cursor.execute(query, args)
            single = _is_single_statement(query)
            while True:
                if cursor.description:
                    page = self._read_page(cursor, limit, offset)
                    if single:
                        self._end_early(cursor)
                else:
                    affected += max(cursor.rowcount, 0)
                _drain(cursor)
                if not cursor.nextset():
                    break
        finally:
            cursor.close()
        dml = leading_keyword(query) in _DML_KEYWORDS or affected > 0
        if page is None:
            return QueryResult(rows_affected=affected if dml else None)
        fetched, fields, description = page
        rows, has_more = split_page(fetched, limit)
        described = [_column(f, d) for f, d in zip(fields, description, strict=True)]
        columns = [column for column, _ in described]
        converters = [converter for _, converter in described]
        return QueryResult(columns, encode_rows(rows, converters), None, has_more)

    async def stream(
        self, query: str, params: Params, *, batch: int, time_limit: float, sink: RowSink
    ) -> int:
        pymysql = _pymysql()
        args: Any = params if isinstance(params, dict) or params is None else tuple(params)
        deadline = time.monotonic() + time_limit
        cursor = self._connection.cursor(pymysql.cursors.SSCursor)
        finished = False

        def start() -> None:
            cursor.execute(query, args)
            while cursor.description is None and cursor.nextset():
                pass  # a script's first statements without rows ("SET @x = 1; SELECT @x")

        try:
            await self._run(start, time_limit)
            description = list(cursor.description or ())
            fields = getattr(cursor._result, "fields", None) or [None] * len(description)
            described = [_column(f, d) for f, d in zip(fields, description, strict=True)]
            columns = [column for column, _ in described]
            converters = [converter for _, converter in described]
            total = 0
            while True:
                fetched = await self._run(
                    lambda: list(cursor.fetchmany(batch)) if columns else [],
                    time_left(deadline, time_limit),
                )
                await sink(columns, encode_rows(fetched, converters))
                total += len(fetched)
                if len(fetched) < batch:
                    finished = True
                    return total
        finally:

            def end() -> None:
                # Read to the end of every result set (later statements still run); a result
                # the sink gave up on is killed rather than read.
                if not finished:
                    self._end_early(cursor)
                _drain(cursor)
                while cursor.nextset():
                    _drain(cursor)
                cursor.close()

            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(end)
                except Exception:
                    self._broken = True  # the protocol is in an unknown place: reconnect

    @staticmethod
    def _read_page(cursor: Any, limit: int, offset: int) -> tuple[list[Any], list[Any], list[Any]]:
        description = list(cursor.description)
        # Field packets carry the charset (binary or text), which the description lacks.
        fields = list(getattr(cursor._result, "fields", None) or [None] * len(description))
        _skip_raw(cursor, offset)
        return list(cursor.fetchmany(limit + 1)), fields, description

    def _end_early(self, cursor: Any) -> None:
        """End the unread rest of a single statement's result without reading it all: read a
        short rest raw, else ``KILL QUERY`` the statement and read what was already in flight
        up to the server's "interrupted" error. The connection is then ready for the next
        statement, with its session unchanged."""
        if _skip_raw(cursor, DRAIN_BEFORE_KILL_ROWS) < DRAIN_BEFORE_KILL_ROWS:
            return  # the result ended within the short rest
        if not _unbuffered_active(cursor):
            return
        pymysql = _pymysql()
        try:
            killer = self._connect(self.profile, "cancel")
        except DatabaseError:
            # No second connection (max_connections reached, say): read the rest, as slow as
            # that is, rather than fail a page that was read.
            _drain(cursor)
            return
        try:
            with killer.cursor() as kill:
                kill.execute(f"KILL QUERY {int(self._thread_id)}")
        except pymysql.err.MySQLError:
            pass  # not killed: the drain below reads the rest
        finally:
            killer.close()
        try:
            _drain(cursor)
        except pymysql.err.MySQLError as error:
            if not error.args or error.args[0] != ER_QUERY_INTERRUPTED:
                raise

    async def server_version(self) -> str:
        return f"MySQL/MariaDB {self._connection.get_server_info()}"

    async def _metadata(self, read: Callable[[Any], Any]) -> Any:
        def work() -> Any:
            with self._connection.cursor() as cursor:
                return read(cursor)

        return await self._run(work, METADATA_TIMEOUT)

    async def schema(self) -> list[dict[str, Any]]:
        return await self._metadata(  # type: ignore[no-any-return]
            lambda cursor: describe_tables(cursor, self.profile.database, None, None)
        )

    async def table(self, schema: str, table: str) -> dict[str, Any] | None:
        schemas = await self._metadata(
            lambda cursor: describe_tables(cursor, self.profile.database, schema, table)
        )
        for entry in schemas:
            for found in entry["tables"]:
                return found  # type: ignore[no-any-return]
        return None

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._metadata(read_stats)
        now, questions = time.monotonic(), stats.pop("questions_total")
        if self.last_sample is not None and now > self.last_sample[0]:
            elapsed = now - self.last_sample[0]
            rate = (questions - self.last_sample[1]) / elapsed
        else:
            rate = questions / max(stats["uptime_seconds"], 1)  # average since start
        self.last_sample = (now, questions)
        stats["queries_per_second"] = round(max(rate, 0.0), 3)
        return stats


def _is_single_statement(query: str) -> bool:
    """True when ``query`` holds no ``;`` but trailing ones, so it is one statement. A ``;``
    inside a literal or comment also counts as several: the only cost of a wrong "several" is
    that the rest of the result is read instead of killed."""
    return _SEVERAL_STATEMENTS.search(query) is None


def _unbuffered_active(cursor: Any) -> bool:
    result = getattr(cursor, "_result", None)
    return result is not None and bool(getattr(result, "unbuffered_active", False))


def _skip_raw(cursor: Any, count: int) -> int:
    """Read up to ``count`` rows of the unbuffered result as raw packets, without decoding
    them (PyMySQL's own end-of-result handling); the number of rows skipped."""
    result = cursor._result if _unbuffered_active(cursor) else None
    skipped = 0
    while result is not None and skipped < count and result.unbuffered_active:
        packet = result.connection._read_packet()
        if result._check_packet_is_eof(packet):
            result.unbuffered_active = False
            result.connection = None  # as PyMySQL does: no reference cycle
            break
        skipped += 1
    return skipped


def _drain(cursor: Any) -> None:
    """Read (without decoding) what is left of an unbuffered result set, so the next result
    set, or the next statement, can be read. PyMySQL's public ``close`` would also swallow
    the remaining result sets, which carry the row counts of later statements."""
    result = getattr(cursor, "_result", None)
    if result is not None and getattr(result, "unbuffered_active", False):
        result._finish_unbuffered_query()
