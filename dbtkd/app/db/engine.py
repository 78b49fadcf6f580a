"""What every database engine offers, and the errors it raises, classed by whose fault.

An ``Engine`` is one open connection to one database. The API needs the same few things from
SQLite, PostgreSQL and MySQL: run any SQL with a row cap and a timeout that cancels the
statement on the server (``execute``), describe the schema (``schema``, ``table``), and read
live statistics (``stats``). ``DatabaseError`` carries the database's own message to the
client as ``success: false`` (never a 500); ``ConnectionLostError`` also tells the session to
reconnect on next use; ``QueryTimeoutError`` says the statement was cancelled on the server.

``run_blocking`` is the shared timeout machinery of the thread-based engines (SQLite and the
PyMySQL driver): the blocking call runs in a worker thread that owns the connection for its
duration; at the deadline, or when the request itself is cancelled, the engine's ``cancel``
(``sqlite3_interrupt``, MariaDB ``KILL QUERY``) stops the statement and the thread returns.
The thread is never abandoned, so a connection is never used by two threads at once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.to_thread

from dbtkd.app.db.profiles import Profile
from dbtkd.units import SECONDS

# Long enough for a server across a VPN or a cold SQLite file on a network drive; short
# enough that a typo in a host name is reported while the user still looks at the form.
CONNECT_TIMEOUT = 10 * SECONDS
# After a cancel request, how long the statement may take to notice before the engine gives up
# on the connection itself (KILL CONNECTION, or closing it).
CANCEL_GRACE = 5 * SECONDS
# Schema and statistics reads have no user-given timeout; they are catalogue queries that
# answer in milliseconds unless the server is in trouble, and then the UI should hear so.
METADATA_TIMEOUT = 30 * SECONDS

T = TypeVar("T")
Params = Sequence[Any] | dict[str, Any] | None
# Receives a streamed result batch by batch: (its columns, the batch's JSON-ready rows).
RowSink = Callable[[list[dict[str, str]], list[list[Any]]], Awaitable[None]]


class DatabaseError(Exception):
    """The database (or the way to it) refused: the message is the database's own words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionLostError(DatabaseError):
    """The connection broke (server gone, network cut); the next use opens a new one."""


class QueryTimeoutError(DatabaseError):
    """The statement ran past its timeout and was cancelled on the server."""

    def __init__(self, time_limit: float, how: str) -> None:
        super().__init__(
            f"query cancelled: it ran longer than its timeout of {time_limit:g} s ({how}); "
            "pass a larger timeout to let it finish"
        )


class DriverMissingError(DatabaseError):
    """The driver for this engine is not installed in this build."""

    def __init__(self, db_type: str, package: str) -> None:
        super().__init__(
            f"the {db_type} driver ({package}) is not installed in this dbtkd; "
            f"install it (pip install {package}) or use a build that includes it"
        )


@dataclass
class QueryResult:
    """One statement's outcome, rows already JSON-ready (see ``values``)."""

    columns: list[dict[str, str]] = field(default_factory=list)  # [{"name", "type"}]
    rows: list[list[Any]] = field(default_factory=list)
    rows_affected: int | None = None
    has_more: bool = False


def split_page(rows: list[Any], limit: int) -> tuple[list[Any], bool]:
    """Rows fetched as ``limit + 1`` → (at most ``limit`` rows, whether there were more)."""
    return (rows[:limit], True) if len(rows) > limit else (rows, False)


class Engine(ABC):
    """One open connection. Not safe for concurrent use: ``Session`` serialises callers."""

    db_type: ClassVar[str]

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    @classmethod
    @abstractmethod
    async def open(cls, profile: Profile, purpose: str = "query") -> Engine:
        """Connect (within ``CONNECT_TIMEOUT``) or raise ``DatabaseError``. ``purpose``
        ("query", "metadata", "edit") names the connection where the server lists its clients."""

    @abstractmethod
    async def close(self) -> None:
        """Close the connection; never raises."""

    @abstractmethod
    def is_usable(self) -> bool:
        """False once the connection is known to be closed or broken."""

    @abstractmethod
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
        """Run ``query`` as written; fetch at most ``offset + limit + 1`` rows of its result.

        ``bounded``: the statement limits its own result (the daemon's own SQL, with a
        ``LIMIT``), so it may be run whole in one go: on PostgreSQL that allows a parallel plan,
        which a cursor read in pages never gets. The threaded engines read lazily either way."""

    @abstractmethod
    async def stream(
        self, query: str, params: Params, *, batch: int, time_limit: float, sink: RowSink
    ) -> int:
        """Run one statement and hand its whole result to ``sink``, ``batch`` rows at a time,
        never holding more than a batch; return the number of rows. ``sink`` is called at
        least once, so an empty result still gives its columns. ``time_limit`` covers the
        whole, the sink's time included. If the sink raises, the statement is ended."""

    @abstractmethod
    async def server_version(self) -> str: ...

    @abstractmethod
    async def schema(self) -> list[dict[str, Any]]:
        """Schemas → tables → columns, keys, indexes, foreign keys."""

    @abstractmethod
    async def table(self, schema: str, table: str) -> dict[str, Any] | None:
        """One table's description (as in ``schema``) plus its row count; None if absent."""

    @abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Live statistics (rates such as queries per second are since the previous call)."""


def time_left(deadline: float, time_limit: float) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic`` value) for a statement allowed
    ``time_limit`` in all; past it, the statement's timeout error."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise QueryTimeoutError(time_limit, "it was stopped between two batches of rows")
    return left


async def run_blocking(
    work: Callable[[], T],
    *,
    time_limit: float,
    cancel: Callable[[], Awaitable[str]],
    escalate: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Run blocking ``work`` in a thread; past ``time_limit`` s cancel it on the server.

    ``cancel`` asks the database to stop the statement and returns how (for the message).
    If the thread has not returned ``CANCEL_GRACE`` later, ``escalate`` cuts the connection.
    Past the deadline the call raises ``QueryTimeoutError`` even if the statement then ended
    normally (MariaDB's ``BENCHMARK()`` returns 0 when killed instead of failing). If the
    caller is cancelled (client gone, worker stopping), the statement is cancelled too.
    """
    finished = anyio.Event()
    results: list[T] = []
    errors: list[Exception] = []

    async def run() -> None:
        try:
            results.append(await anyio.to_thread.run_sync(work))
        except Exception as error:  # handed to the caller below, after the task group
            errors.append(error)
        finally:
            finished.set()

    async def stop_statement() -> str:
        how = "not cancelled"
        with anyio.CancelScope(shield=True):
            how = await cancel()
            with anyio.move_on_after(CANCEL_GRACE):
                await finished.wait()
            if not finished.is_set() and escalate is not None:
                await escalate()
            await finished.wait()
        return how

    timed_out_how: str | None = None
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(run)
        try:
            with anyio.move_on_after(time_limit):
                await finished.wait()
        except anyio.get_cancelled_exc_class():
            await stop_statement()
            raise
        if not finished.is_set():
            timed_out_how = await stop_statement()
    if timed_out_how is not None:
        raise QueryTimeoutError(time_limit, timed_out_how)
    if errors:
        raise errors[0]
    return results[0]


def column_entry(
    name: str, type_name: str, *, nullable: bool, default: str | None, primary_key: bool
) -> dict[str, Any]:
    """One column in a schema description: the same keys for every engine."""
    return {
        "name": name,
        "type": type_name,
        "nullable": nullable,
        "default": default,
        "primary_key": primary_key,
    }


def table_entry(
    name: str,
    kind: str,
    columns: list[dict[str, Any]],
    primary_key: list[str],
    indexes: list[dict[str, Any]],
    foreign_keys: list[dict[str, Any]],
) -> dict[str, Any]:
    """One table (``kind`` "table" or "view"): columns, primary key (in key order), indexes,
    foreign keys.

    ``indexes``: ``{name, columns, unique, primary}``; ``foreign_keys``: ``{name, columns,
    referenced_schema, referenced_table, referenced_columns, on_update, on_delete}``.
    """
    return {
        "name": name,
        "type": kind,
        "columns": columns,
        "primary_key": primary_key,
        "indexes": indexes,
        "foreign_keys": foreign_keys,
    }
