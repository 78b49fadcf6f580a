"""A page's cost against the size of the table: ``SELECT * FROM t`` without LIMIT (issue 18).

For each engine (SQLite, PostgreSQL, MariaDB) and each table size (100,000 and 1,000,000 rows;
10,000,000 with ``--sizes``), a table ``t`` (integer key, text, float) is filled with the
engine's own bulk path (SQLite ``WITH RECURSIVE`` in one statement, PostgreSQL
``generate_series``, MariaDB's ``seq_1_to_N`` sequence table), then a real ``dbtkd`` answers
``POST /api/v1/connections/{id}/query`` with ``{"query": "SELECT * FROM t", "limit": 1000}`` at
offset 0 and offset 100,000 (median of ``--repeat`` runs after one warm-up). The user's SQL has
no LIMIT and no ORDER BY, so the server would stream the whole table if the daemon let it: a
row of the table must be flat across sizes (the ``x1M/100k`` column near 1.0).

    .venv/bin/python -m bench.bench_page_cost [--engines sqlite,postgresql,mysql]
        [--sizes 100000,1000000] [--repeat 5] [--json]

Reuses ``bench_query_pages``'s daemon and request plumbing; makes a database of its own on
PostgreSQL and MariaDB and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.bench_query_pages import HOST, Daemon, progress, request, running_daemon

ENGINES = ("sqlite", "postgresql", "mysql")
SIZES = (100_000, 1_000_000)
PAGE = 1000
# The deep page is the last full page of the smallest table (100,000 rows), so every cell
# answers the same 1,000 rows; past that page a result would be empty.
OFFSETS = (0, 99_000)
QUERY = "SELECT * FROM t"
# How long a fill may take to reach the disk before the pages are measured anyway.
SETTLE_SECONDS = 30
SETTLE_POLL_SECONDS = 0.5
# A row of about 60 bytes on the wire: enough that a full scan's transfer shows.
FILL_SQLITE = (
    "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
    "SELECT i, 'row ' || i || ' ' || printf('%.40c', 'x'), i / 7.0 FROM n"
)
FILL_POSTGRESQL = (
    "INSERT INTO t SELECT i, 'row ' || i || ' ' || repeat('x', 40), i / 7.0 "
    "FROM generate_series(1, $1) AS i"
)
FILL_MYSQL = (
    "INSERT INTO t SELECT seq, CONCAT('row ', seq, ' ', REPEAT('x', 40)), seq / 7 "
    "FROM seq_1_to_{rows}"
)


class Database:
    """One engine's database holding table ``t``, refilled per size."""

    db_type = ""

    def fill(self, rows: int) -> None:
        raise NotImplementedError

    def profile(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqliteDatabase(Database):
    db_type = "sqlite"

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "page_cost.sqlite3")

    def fill(self, rows: int) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.execute("DROP TABLE IF EXISTS t")
            connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL)")
            connection.execute(FILL_SQLITE, (rows,))
        connection.close()

    def profile(self) -> dict[str, Any]:
        return {"name": "page-cost", "db_type": "sqlite", "database": self.path}


class PostgresDatabase(Database):
    db_type = "postgresql"

    def __init__(self) -> None:
        import asyncpg

        self.loop = asyncio.new_event_loop()
        self.name = f"dbtk_bench_{secrets.token_hex(4)}"
        self.user = "postgres"
        self.admin = self.loop.run_until_complete(
            asyncpg.connect(host=HOST, user=self.user, database="postgres")
        )
        self.loop.run_until_complete(self.admin.execute(f'CREATE DATABASE "{self.name}"'))
        self.connection = self.loop.run_until_complete(
            asyncpg.connect(host=HOST, user=self.user, database=self.name)
        )

    def fill(self, rows: int) -> None:
        async def fill() -> None:
            await self.connection.execute("DROP TABLE IF EXISTS t")
            await self.connection.execute(
                "CREATE TABLE t (id integer PRIMARY KEY, name text, score double precision)"
            )
            await self.connection.execute(FILL_POSTGRESQL, rows)
            await self.connection.execute("VACUUM ANALYZE t")
            # Write the fill out now, not while the pages are being measured.
            await self.connection.execute("CHECKPOINT")

        self.loop.run_until_complete(fill())

    def profile(self) -> dict[str, Any]:
        return {
            "name": "page-cost",
            "db_type": "postgresql",
            "host": HOST,
            "port": 5432,
            "username": self.user,
            "database": self.name,
        }

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.close())
        self.loop.run_until_complete(
            self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        )
        self.loop.run_until_complete(self.admin.close())
        self.loop.close()


class MysqlDatabase(Database):
    db_type = "mysql"

    def __init__(self) -> None:
        import pymysql

        self.name = f"dbtk_bench_{secrets.token_hex(4)}"
        self.connection = pymysql.connect(host=HOST, user="root", password="", autocommit=True)
        with self.connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{self.name}`")
            cursor.execute(f"USE `{self.name}`")

    def fill(self, rows: int) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS t")
            cursor.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(100), score DOUBLE)")
            cursor.execute(FILL_MYSQL.format(rows=int(rows)))
            # InnoDB writes a big fill out in the background for a while after it commits;
            # measured during that, a page would time the flushing, not the page.
            deadline = time.monotonic() + SETTLE_SECONDS
            while time.monotonic() < deadline:
                cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
                if int(cursor.fetchone()[1]) == 0:
                    break
                time.sleep(SETTLE_POLL_SECONDS)

    def profile(self) -> dict[str, Any]:
        return {
            "name": "page-cost",
            "db_type": "mysql",
            "host": HOST,
            "port": 3306,
            "username": "root",
            "database": self.name,
        }

    def close(self) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        self.connection.close()


def open_database(db_type: str, directory: str) -> Database:
    if db_type == "sqlite":
        return SqliteDatabase(directory)
    if db_type == "postgresql":
        return PostgresDatabase()
    return MysqlDatabase()


def page_ms(daemon: Daemon, connection_id: str, offset: int, repeat: int) -> float:
    """Median milliseconds of one page of ``PAGE`` rows at ``offset``, after one warm-up."""
    http = daemon.connection()
    samples = []
    try:
        for attempt in range(repeat + 1):
            started = time.perf_counter()
            document = request(
                http,
                daemon.token,
                "POST",
                f"/api/v1/connections/{connection_id}/query",
                {"query": QUERY, "limit": PAGE, "offset": offset, "timeout": 600},
            )
            elapsed = time.perf_counter() - started
            if not document["success"] or len(document["rows"]) != PAGE:
                raise RuntimeError(f"expected {PAGE} rows; got {document!r:.300}")
            if attempt:
                samples.append(elapsed)
    finally:
        http.close()
    return statistics.median(samples) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--sizes", default=",".join(str(size) for size in SIZES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    options = parser.parse_args(argv)
    sizes = [int(size) for size in options.sizes.split(",")]
    figures: dict[tuple[str, int], dict[int, float]] = {}
    with running_daemon() as daemon, tempfile.TemporaryDirectory() as directory:
        for db_type in options.engines.split(","):
            database = open_database(db_type, directory)
            try:
                for size in sizes:
                    progress(f"{db_type}: filling {size} rows")
                    started = time.perf_counter()
                    database.fill(size)
                    progress(f"{db_type}: filled in {time.perf_counter() - started:.1f} s")
                    created = daemon.request("POST", "/api/v1/connections", database.profile())
                    for offset in OFFSETS:
                        ms = page_ms(daemon, created["id"], offset, options.repeat)
                        figures.setdefault((db_type, offset), {})[size] = ms
                    daemon.request("DELETE", f"/api/v1/connections/{created['id']}")
            finally:
                database.close()
    if options.json:
        print(
            json.dumps(
                [
                    {"engine": e, "offset": o, "ms_by_rows": by_size}
                    for (e, o), by_size in figures.items()
                ],
                indent=2,
            )
        )
        return 0
    print(
        f"a page of {PAGE} rows of {QUERY!r} (no LIMIT) through the API, ms, median of "
        f"{options.repeat}; each row must be flat across table sizes"
    )
    header = " | ".join(f"{size:>10,}" for size in sizes)
    print(f"{'engine':<11} | {'offset':>7} | {header} | {'largest/smallest':>16}")
    ratio: Callable[[dict[int, float]], float] = lambda by: by[sizes[-1]] / by[sizes[0]]  # noqa: E731
    for (engine, offset), by_size in figures.items():
        cells = " | ".join(f"{by_size[size]:10.1f}" for size in sizes)
        print(f"{engine:<11} | {offset:>7,} | {cells} | {ratio(by_size):16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
