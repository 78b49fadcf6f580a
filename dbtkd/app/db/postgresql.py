"""PostgreSQL through asyncpg (imported on first use).

Why asyncpg: it is asyncio-native (no thread per query), fast at decoding rows, and small
(about 1.2 MiB of stripped extension modules against about 12 MiB for psycopg's binary wheel).

A statement is prepared first, which tells whether it returns rows without running it. One that
returns rows runs through a portal (a protocol-level cursor): ``MOVE FORWARD offset`` skips the
first rows on the server without sending them, then the portal yields ``limit + 1`` rows at
most and is closed. A portal needs a transaction, so outside the user's own transaction the
statement runs in one that commits once the page is read (the effect of autocommit); inside the
user's ``BEGIN`` nothing is added. A script of several statements (found by ``sqlscan``, before
anything is sent) cannot be prepared: without parameters it runs through the simple query
protocol and reports the last command's row count, but no rows. A statement past its timeout
is cancelled on the server: cancelling the asyncpg call makes asyncpg send a cancel request
(what ``pg_cancel_backend`` does) and wait for the server to answer.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from dbtkd.app.db.engine import (
    CANCEL_GRACE,
    CONNECT_TIMEOUT,
    METADATA_TIMEOUT,
    ConnectionLostError,
    DatabaseError,
    DriverMissingError,
    Engine,
    Params,
    QueryResult,
    QueryTimeoutError,
    RowSink,
    split_page,
)
from dbtkd.app.db.pgcatalog import describe_tables, read_stats
from dbtkd.app.db.profiles import Profile
from dbtkd.app.db.sqlscan import has_several_statements
from dbtkd.app.db.values import converter_for, encode_rows, encode_value

# Command tags whose count is "rows changed" (SELECT n only reaches here from SELECT INTO and
# CREATE TABLE AS, which write n rows).
_COUNTED_COMMANDS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "SELECT"})
_KINDS_BY_TYPE = {
    "bool": "bool",
    "int2": "small_int",
    "int4": "small_int",
    "oid": "small_int",
    "int8": "int",
    "float4": "float",
    "float8": "float",
    "numeric": "decimal",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
    "name": "text",
    "char": "text",
    "json": "text",  # asyncpg returns JSON as its text, which is what the UI shows
    "jsonb": "text",
    "xml": "text",
    "money": "text",
    "bytea": "bytes",
    "date": "temporal",
    "timestamp": "temporal",
    "timestamptz": "temporal",
    "time": "temporal",
    "timetz": "aware_time",
    "interval": "duration",
}


def _asyncpg() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:
        raise DriverMissingError("postgresql", "asyncpg") from None
    return asyncpg


def encode_pg_value(value: Any) -> Any:
    """asyncpg's own types (ranges, bit strings, records) and then ``encode_value``."""
    asyncpg = _asyncpg()
    if isinstance(value, list):
        return [None if item is None else encode_pg_value(item) for item in value]
    if isinstance(value, asyncpg.Range):
        if value.isempty:
            return "empty"
        lower = "" if value.lower is None else encode_pg_value(value.lower)
        upper = "" if value.upper is None else encode_pg_value(value.upper)
        return f"{'[' if value.lower_inc else '('}{lower},{upper}{']' if value.upper_inc else ')'}"
    if isinstance(value, asyncpg.BitString):
        return value.as_string()
    if isinstance(value, asyncpg.Record):
        return {key: encode_pg_value(item) for key, item in value.items()}
    return encode_value(value)


def _type_label(data_type: Any) -> str:
    name: str = data_type.name
    if data_type.kind == "array" and name.startswith("_"):
        return name[1:] + "[]"
    return name


def _converter(data_type: Any) -> Callable[[Any], Any] | None:
    if data_type.kind == "scalar" and data_type.name in _KINDS_BY_TYPE:
        return converter_for(_KINDS_BY_TYPE[data_type.name])
    return encode_pg_value


def _coerce_parameter(value: Any, data_type: Any, position: int) -> Any:
    """JSON has no dates, decimals or bytes: a string for such a parameter is parsed here,
    in the same encodings the API uses for results (ISO 8601, decimal text, base64)."""
    name = data_type.name
    try:
        if isinstance(value, str):
            if name in ("int2", "int4", "int8", "oid"):
                return int(value)
            if name in ("float4", "float8"):
                return float(value)
            if name == "numeric":
                return decimal.Decimal(value)
            if name == "date":
                return datetime.date.fromisoformat(value)
            if name in ("timestamp", "timestamptz"):
                parsed = datetime.datetime.fromisoformat(value)
                if name == "timestamptz" and parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=datetime.UTC)
                return parsed
            if name in ("time", "timetz"):
                return datetime.time.fromisoformat(value)
            if name == "uuid":
                return uuid.UUID(value)
            if name == "bytea":
                return base64.b64decode(value, validate=True)
        elif name in ("json", "jsonb") and not isinstance(value, str) and value is not None:
            return json.dumps(value)
        elif name == "numeric" and isinstance(value, float):
            return decimal.Decimal(repr(value))
    except (ValueError, decimal.InvalidOperation) as error:
        raise DatabaseError(
            f"parameter ${position}: expected a value for type {name} (ISO 8601 for dates and "
            f"times, base64 for bytea); got {value!r:.60}: {error}"
        ) from None
    return value


def format_error(error: Any) -> str:
    """A server error as psql shows it: message, position, DETAIL and HINT lines."""
    text = str(error.args[0] if error.args else error)
    position = getattr(error, "position", None)
    if position:
        text += f" (at character {position})"
    for label, attribute in (("DETAIL", "detail"), ("HINT", "hint")):
        value = getattr(error, attribute, None)
        if value:
            text += f"\n{label}: {value}"
    return text


def rows_affected(status: str | None, *, counts_select: bool = True) -> int | None:
    """The row count of a command tag ("INSERT 0 3" → 3), for commands that change rows.

    "SELECT n" counts only from a statement that returned no rows (SELECT INTO, CREATE TABLE
    AS); at the end of a script it is most likely a plain SELECT, and is not counted.
    """
    words = (status or "").split()
    if not words or not words[-1].isdigit() or words[0] not in _COUNTED_COMMANDS:
        return None
    if words[0] == "SELECT" and not counts_select:
        return None
    return int(words[-1])


class PostgresEngine(Engine):
    db_type = "postgresql"

    def __init__(self, profile: Profile, connection: Any) -> None:
        super().__init__(profile)
        self._connection = connection
        self._broken = False

    @classmethod
    async def open(cls, profile: Profile, purpose: str = "query") -> PostgresEngine:
        asyncpg = _asyncpg()
        try:
            connection = await asyncpg.connect(
                host=profile.host,
                port=profile.port,
                user=profile.username,
                password=profile.password,
                database=profile.database or None,
                timeout=CONNECT_TIMEOUT,
                # Ad-hoc SQL gains nothing from a statement cache, and a cached plan breaks
                # ("cached plan must not change result type") after the user alters a table.
                statement_cache_size=0,
                server_settings={"application_name": f"dbtk-{purpose}"},
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise DatabaseError(
                f"cannot connect to {profile.describe()}: {format_error(error)}"
            ) from None
        except (OSError, TimeoutError) as error:
            raise DatabaseError(
                f"cannot connect to {profile.describe()}: {error or 'timed out'}"
            ) from None
        return cls(profile, connection)

    async def close(self) -> None:
        connection, self._broken = self._connection, True
        with anyio.move_on_after(CONNECT_TIMEOUT, shield=True):
            try:
                await connection.close(timeout=CONNECT_TIMEOUT)
            except Exception:
                connection.terminate()
                return
        if not connection.is_closed():
            connection.terminate()

    def is_usable(self) -> bool:
        return not self._broken and not self._connection.is_closed()

    async def _guarded(self, operation: Callable[[], Any], time_limit: float) -> Any:
        """Run ``operation`` within ``time_limit`` s; turn driver failures into our errors."""
        asyncpg = _asyncpg()
        try:
            with anyio.fail_after(time_limit):
                return await operation()
        except TimeoutError:
            raise QueryTimeoutError(time_limit, "a cancel request was sent to the server") from None
        except (asyncpg.PostgresConnectionError, OSError) as error:
            self._broken = True
            raise ConnectionLostError(
                f"lost the connection to {self.profile.describe()}: {error}; "
                "the next request reconnects"
            ) from None
        except asyncpg.PostgresError as error:
            raise DatabaseError(format_error(error)) from None
        except asyncpg.InterfaceError as error:
            if self._connection.is_closed():
                self._broken = True
                raise ConnectionLostError(
                    f"lost the connection to {self.profile.describe()}: {error}"
                ) from None
            raise DatabaseError(str(error)) from None
        except (ValueError, TypeError, OverflowError) as error:
            # A value the driver cannot encode or decode (a parameter of the wrong type, text
            # that is not valid UTF-8): the statement's problem, not the worker's.
            raise DatabaseError(f"the driver refused a value: {error}") from None

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
        if isinstance(params, dict):
            raise DatabaseError(
                "PostgreSQL takes positional parameters ($1, $2, ...): pass params as a list"
            )
        return await self._guarded(  # type: ignore[no-any-return]
            lambda: self._execute(query, list(params or ()), limit, offset, bounded), time_limit
        )

    async def _execute(
        self, query: str, params: list[Any], limit: int, offset: int, bounded: bool = False
    ) -> QueryResult:
        connection = self._connection
        if has_several_statements(query):
            if params:
                raise DatabaseError(
                    "parameters need a single statement: PostgreSQL runs a script of several "
                    "statements without them"
                )
            # The simple query protocol runs a script whole; it returns the last command's
            # tag but no rows.
            status = await connection.execute(query)
            return QueryResult(rows_affected=rows_affected(status, counts_select=False))
        statement, arguments = await self._prepare(query, params)
        attributes = statement.get_attributes()
        if not attributes:
            await statement.fetch(*arguments)
            return QueryResult(rows_affected=rows_affected(statement.get_statusmsg()))
        if bounded and not offset:
            page, has_more = split_page(await statement.fetch(*arguments), limit)
            return self._result(attributes, page, has_more)
        async with self._cursor_transaction():
            fetched = await self._fetch_page(statement, arguments, limit, offset)
        page, has_more = split_page(fetched, limit)
        return self._result(attributes, page, has_more)

    @staticmethod
    def _result(attributes: Any, page: list[Any], has_more: bool) -> QueryResult:
        columns = [{"name": a.name, "type": _type_label(a.type)} for a in attributes]
        converters = [_converter(a.type) for a in attributes]
        return QueryResult(columns, encode_rows(page, converters), None, has_more)

    async def _prepare(self, query: str, params: list[Any]) -> tuple[Any, list[Any]]:
        """The prepared statement and ``params`` coerced to its parameters' types."""
        statement = await self._connection.prepare(query)
        types = statement.get_parameters()
        if len(types) != len(params):
            raise DatabaseError(
                f"expected {len(types)} parameter(s) for this statement; got {len(params)}"
            )
        arguments = [
            _coerce_parameter(value, data_type, position)
            for position, (value, data_type) in enumerate(zip(params, types, strict=True), 1)
        ]
        return statement, arguments

    async def stream(
        self, query: str, params: Params, *, batch: int, time_limit: float, sink: RowSink
    ) -> int:
        if isinstance(params, dict):
            raise DatabaseError(
                "PostgreSQL takes positional parameters ($1, $2, ...): pass params as a list"
            )
        return await self._guarded(  # type: ignore[no-any-return]
            lambda: self._stream(query, list(params or ()), batch, sink), time_limit
        )

    async def _stream(self, query: str, params: list[Any], batch: int, sink: RowSink) -> int:
        statement, arguments = await self._prepare(query, params)  # one statement only
        attributes = statement.get_attributes()
        if not attributes:
            await statement.fetch(*arguments)
            await sink([], [])
            return 0
        columns = [{"name": a.name, "type": _type_label(a.type)} for a in attributes]
        converters = [_converter(a.type) for a in attributes]
        total = 0
        async with self._cursor_transaction():
            cursor = await statement.cursor(*arguments)
            while True:
                fetched = await cursor.fetch(batch)
                await sink(columns, encode_rows(fetched, converters))
                total += len(fetched)
                if len(fetched) < batch:
                    break
        return total

    @contextlib.asynccontextmanager
    async def _cursor_transaction(self) -> AsyncIterator[None]:
        """A cursor lives in a transaction: the user's own if one is open, else ours, committed
        after it or rolled back (``_roll_back``) if anything fails or the request is cancelled."""
        if self._connection.is_in_transaction():
            yield
            return
        transaction = self._connection.transaction()
        await transaction.start()
        try:
            yield
        except BaseException:
            await self._roll_back(transaction)
            raise
        await transaction.commit()

    async def _roll_back(self, transaction: Any) -> None:
        """Roll back our transaction even while the request is being cancelled (a timeout):
        ``async with transaction()`` would have its rollback cancelled too, leaving the
        session inside an aborted transaction."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE) as scope:
            try:
                await transaction.rollback()
            except Exception:
                self._broken = True  # the connection is gone or confused: start afresh
        if scope.cancelled_caught:
            self._broken = True
            self._connection.terminate()

    @staticmethod
    async def _fetch_page(statement: Any, arguments: list[Any], limit: int, offset: int) -> Any:
        cursor = await statement.cursor(*arguments)
        if offset:
            await cursor.forward(offset)
        return await cursor.fetch(limit + 1)

    async def server_version(self) -> str:
        version: str = await self._guarded(
            lambda: self._connection.fetchval("SHOW server_version"), METADATA_TIMEOUT
        )
        return f"PostgreSQL {version}"

    async def schema(self) -> list[dict[str, Any]]:
        return await self._guarded(  # type: ignore[no-any-return]
            lambda: describe_tables(self._connection, None, None), METADATA_TIMEOUT
        )

    async def table(self, schema: str, table: str) -> dict[str, Any] | None:
        schemas = await self._guarded(
            lambda: describe_tables(self._connection, schema, table), METADATA_TIMEOUT
        )
        for entry in schemas:
            for found in entry["tables"]:
                return found  # type: ignore[no-any-return]
        return None

    async def stats(self) -> dict[str, Any]:
        return await self._guarded(  # type: ignore[no-any-return]
            lambda: read_stats(self._connection), METADATA_TIMEOUT
        )
