"""Paging through 100,000 rows: the API (HTTP + JSON) against the database driver alone.

For each engine (SQLite, PostgreSQL, MariaDB) a table of 100,000 rows (integer key, text,
decimal, timestamp, float) is read as 10 pages of 10,000 rows:

- **api**: ``POST /api/v1/connections/{id}/query`` with ``limit=10000, offset=k*10000`` on one
  keep-alive HTTP connection to a real ``dbtkd``, each response parsed into Python lists with
  ``orjson.loads`` (standing in for the renderer's native ``JSON.parse``; ``--stdlib-json``
  parses with ``json.loads`` instead, about 3 ms more per page);
- **driver, same pages**: the same 10 statements through the same driver in this process,
  fetched the way the engine does (``offset + limit + 1`` rows at most per page: asyncpg portal
  with ``MOVE FORWARD``, PyMySQL unbuffered cursor, sqlite3 ``fetchmany``), rows left as the
  driver's Python objects;
- **driver, one stream** (context only): one statement, 10 ``fetchmany(10000)`` calls.

The figure is ``driver same pages / api`` (API throughput as a share of the driver's; the aim is
at least 0.5). Each is the median of ``--repeat`` runs after one unmeasured warm-up.

    .venv/bin/python bench/bench_query_pages.py [--engines sqlite,postgresql,mysql]
        [--rows 100000] [--page 10000] [--repeat 5] [--json] [--stdlib-json]

Needs PostgreSQL (127.0.0.1:5432, trust, user postgres or root) and MariaDB (127.0.0.1:3306,
root, no password) for those engines; it makes a database of its own on each and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import decimal
import http.client
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

BIN = os.path.dirname(sys.executable)
HOST = "127.0.0.1"
START_DEADLINE_SECONDS = 30
SQL = "SELECT id, name, amount, created_at, score FROM bench ORDER BY id"
INSERT_BATCH = 5000
ENGINES = ("sqlite", "postgresql", "mysql")


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def sample_rows(count: int) -> Iterator[tuple[Any, ...]]:
    start = datetime.datetime(2024, 1, 1, 12, 0, 0)
    for n in range(1, count + 1):
        yield (
            n,
            f"customer {n:06d}",
            decimal.Decimal(n % 100000) / 100,
            start + datetime.timedelta(seconds=n),
            n / 7,
        )


# -- the daemon ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    home: str
    process: subprocess.Popen[str]
    port: int
    token: str

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=120)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        connection = self.connection()
        try:
            return request(connection, self.token, method, path, body)
        finally:
            connection.close()


def request(
    connection: http.client.HTTPConnection,
    token: str,
    method: str,
    path: str,
    body: Any,
    parse: Callable[[bytes], Any] = orjson.loads,
) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    raw = response.read()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path} → {response.status}: {raw[:300]!r}")
    return parse(raw)


@contextlib.contextmanager
def running_daemon() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="dbtk-bench-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBTK_")}
        env["DBTK_HOME"] = home
        process = subprocess.Popen(
            [os.path.join(BIN, "dbtkd"), "--port-range", "0"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if not line.startswith("BACKEND_PORT:"):
                raise RuntimeError(f"dbtkd did not start: {line!r}")
            found = subprocess.run(
                [os.path.join(BIN, "dbtkctl"), "port", "--json", "--no-start"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            details = json.loads(found.stdout)
            yield Daemon(home, process, int(details["port"]), details["token"])
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()


# -- the databases -------------------------------------------------------------------------------


class Engine:
    """One engine's test table, its API profile, and its driver-alone fetches."""

    db_type = ""

    def profile(self) -> dict[str, Any]:
        raise NotImplementedError

    def driver_pages(self, pages: int, page: int) -> int:
        raise NotImplementedError

    def driver_stream(self, pages: int, page: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqliteEngine(Engine):
    db_type = "sqlite"

    def __init__(self, directory: str, rows: int) -> None:
        self.path = os.path.join(directory, "bench.sqlite3")
        with sqlite3.connect(self.path) as connection:
            connection.execute(
                "CREATE TABLE bench (id INTEGER PRIMARY KEY, name TEXT, amount TEXT, "
                "created_at TEXT, score REAL)"
            )
            connection.executemany(
                "INSERT INTO bench VALUES (?, ?, ?, ?, ?)",
                (
                    (n, name, str(a), c.isoformat(sep=" "), s)
                    for n, name, a, c, s in sample_rows(rows)
                ),
            )
        self.connection = sqlite3.connect(self.path, isolation_level=None)

    def profile(self) -> dict[str, Any]:
        return {"name": "bench", "db_type": "sqlite", "database": self.path}

    def driver_pages(self, pages: int, page: int) -> int:
        total = 0
        for number in range(pages):
            cursor = self.connection.execute(SQL)
            skipped = 0
            while skipped < number * page:
                chunk = cursor.fetchmany(min(page, number * page - skipped))
                if not chunk:
                    break
                skipped += len(chunk)
            total += len(cursor.fetchmany(page + 1)[:page])
            cursor.close()
        return total

    def driver_stream(self, pages: int, page: int) -> int:
        cursor = self.connection.execute(SQL)
        total = sum(len(cursor.fetchmany(page)) for _ in range(pages))
        cursor.close()
        return total

    def close(self) -> None:
        self.connection.close()


class PostgresEngine(Engine):
    db_type = "postgresql"

    def __init__(self, rows: int) -> None:
        import asyncpg

        self.asyncpg = asyncpg
        self.loop = asyncio.new_event_loop()
        self.name = f"dbtk_bench_{secrets.token_hex(4)}"
        self.admin, self.user = self.loop.run_until_complete(self._admin())
        self.loop.run_until_complete(self.admin.execute(f'CREATE DATABASE "{self.name}"'))
        self.connection = self.loop.run_until_complete(
            asyncpg.connect(host=HOST, user=self.user, database=self.name, statement_cache_size=0)
        )
        self.loop.run_until_complete(self._fill(rows))

    async def _admin(self) -> tuple[Any, str]:
        for user in ("postgres", "root"):
            with contextlib.suppress(Exception):
                return await self.asyncpg.connect(host=HOST, user=user, database="postgres"), user
        raise RuntimeError("PostgreSQL is not reachable at 127.0.0.1:5432 (user postgres/root)")

    async def _fill(self, rows: int) -> None:
        await self.connection.execute(
            "CREATE TABLE bench (id integer PRIMARY KEY, name text, amount numeric(12, 2), "
            "created_at timestamp, score double precision)"
        )
        await self.connection.copy_records_to_table("bench", records=list(sample_rows(rows)))

    def profile(self) -> dict[str, Any]:
        return {
            "name": "bench",
            "db_type": "postgresql",
            "host": HOST,
            "port": 5432,
            "username": self.user,
            "database": self.name,
        }

    async def _pages(self, pages: int, page: int) -> int:
        total = 0
        for number in range(pages):
            statement = await self.connection.prepare(SQL)
            async with self.connection.transaction():
                cursor = await statement.cursor()
                if number:
                    await cursor.forward(number * page)
                total += len((await cursor.fetch(page + 1))[:page])
        return total

    async def _stream(self, pages: int, page: int) -> int:
        async with self.connection.transaction():
            cursor = await self.connection.cursor(SQL)
            return sum([len(await cursor.fetch(page)) for _ in range(pages)])

    def driver_pages(self, pages: int, page: int) -> int:
        return self.loop.run_until_complete(self._pages(pages, page))

    def driver_stream(self, pages: int, page: int) -> int:
        return self.loop.run_until_complete(self._stream(pages, page))

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.close())
        self.loop.run_until_complete(
            self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        )
        self.loop.run_until_complete(self.admin.close())
        self.loop.close()


class MysqlEngine(Engine):
    db_type = "mysql"

    def __init__(self, rows: int) -> None:
        import pymysql
        import pymysql.cursors

        self.pymysql = pymysql
        self.name = f"dbtk_bench_{secrets.token_hex(4)}"
        admin = pymysql.connect(host=HOST, user="root", password="", autocommit=True)
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.name}`")
        admin.close()
        self.connection = pymysql.connect(
            host=HOST,
            user="root",
            password="",
            database=self.name,
            autocommit=True,
            charset="utf8mb4",
        )
        with self.connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE bench (id INT PRIMARY KEY, name VARCHAR(40), "
                "amount DECIMAL(12, 2), created_at DATETIME, score DOUBLE)"
            )
            batch: list[tuple[Any, ...]] = []
            for row in sample_rows(rows):
                batch.append(row)
                if len(batch) == INSERT_BATCH:
                    cursor.executemany("INSERT INTO bench VALUES (%s, %s, %s, %s, %s)", batch)
                    batch = []
            if batch:
                cursor.executemany("INSERT INTO bench VALUES (%s, %s, %s, %s, %s)", batch)

    def profile(self) -> dict[str, Any]:
        return {
            "name": "bench",
            "db_type": "mysql",
            "host": HOST,
            "port": 3306,
            "username": "root",
            "database": self.name,
        }

    def driver_pages(self, pages: int, page: int) -> int:
        total = 0
        for number in range(pages):
            cursor = self.connection.cursor(self.pymysql.cursors.SSCursor)
            cursor.execute(SQL)
            skipped = 0
            while skipped < number * page:
                chunk = cursor.fetchmany(min(page, number * page - skipped))
                if not chunk:
                    break
                skipped += len(chunk)
            total += len(cursor.fetchmany(page + 1)[:page])
            cursor.close()  # reads the rest of the result off the socket
        return total

    def driver_stream(self, pages: int, page: int) -> int:
        cursor = self.connection.cursor(self.pymysql.cursors.SSCursor)
        cursor.execute(SQL)
        total = sum(len(cursor.fetchmany(page)) for _ in range(pages))
        cursor.close()
        return total

    def close(self) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        self.connection.close()


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Figure:
    engine: str
    api_ms: float
    driver_pages_ms: float
    driver_stream_ms: float
    ratio_same_pages: float
    ratio_stream: float


def timed(run: Callable[[], int], expected: int, repeat: int) -> float:
    """Median seconds of ``repeat`` runs after one warm-up; each must return ``expected``."""
    samples = []
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        got = run()
        elapsed = time.perf_counter() - started
        if got != expected:
            raise RuntimeError(f"expected {expected} rows, got {got}")
        if attempt:
            samples.append(elapsed)
    return statistics.median(samples)


def api_pages(
    daemon: Daemon, connection_id: str, pages: int, page: int, parse: Callable[[bytes], Any]
) -> int:
    http = daemon.connection()  # one keep-alive connection, as a window would hold
    try:
        total = 0
        for number in range(pages):
            document = request(
                http,
                daemon.token,
                "POST",
                f"/api/v1/connections/{connection_id}/query",
                {"query": SQL, "limit": page, "offset": number * page, "timeout": 120},
                parse,
            )
            if not document["success"]:
                raise RuntimeError(document["error"])
            total += len(document["rows"])
        return total
    finally:
        http.close()


def measure(
    engine: Engine,
    daemon: Daemon,
    rows: int,
    page: int,
    repeat: int,
    parse: Callable[[bytes], Any],
) -> Figure:
    pages = rows // page
    created = daemon.request("POST", "/api/v1/connections", engine.profile())
    api = timed(lambda: api_pages(daemon, created["id"], pages, page, parse), pages * page, repeat)
    same = timed(lambda: engine.driver_pages(pages, page), pages * page, repeat)
    stream = timed(lambda: engine.driver_stream(pages, page), pages * page, repeat)
    return Figure(engine.db_type, api * 1000, same * 1000, stream * 1000, same / api, stream / api)


def build(db_type: str, directory: str, rows: int) -> Engine:
    if db_type == "sqlite":
        return SqliteEngine(directory, rows)
    if db_type == "postgresql":
        return PostgresEngine(rows)
    return MysqlEngine(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--stdlib-json", action="store_true", help="parse answers with json")
    options = parser.parse_args(argv)
    parse: Callable[[bytes], Any] = json.loads if options.stdlib_json else orjson.loads
    figures: list[Figure] = []
    with running_daemon() as daemon, tempfile.TemporaryDirectory() as directory:
        for db_type in options.engines.split(","):
            progress(f"{db_type}: filling {options.rows} rows")
            engine = build(db_type, directory, options.rows)
            try:
                progress(f"{db_type}: measuring ({options.repeat} runs each)")
                figures.append(
                    measure(engine, daemon, options.rows, options.page, options.repeat, parse)
                )
            finally:
                engine.close()
    if options.json:
        print(json.dumps([asdict(figure) for figure in figures], indent=2))
        return 0
    pages = options.rows // options.page
    print(
        f"{options.rows} rows as {pages} pages of {options.page}, median of "
        f"{options.repeat} runs (ratio = driver / api; aim >= 0.5 on same pages)"
    )
    print(
        f"{'engine':<11} | {'api ms':>8} | {'driver same pages ms':>20} | {'ratio':>5} | "
        f"{'driver one stream ms':>20} | {'ratio':>5}"
    )
    for f in figures:
        print(
            f"{f.engine:<11} | {f.api_ms:8.1f} | {f.driver_pages_ms:20.1f} | "
            f"{f.ratio_same_pages:5.2f} | {f.driver_stream_ms:20.1f} | {f.ratio_stream:5.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
