"""The UI's heaviest calls through the API against the same work without it, and small-request
latency under 8 clients (issue 12's bench).

Per engine (SQLite, PostgreSQL, MariaDB), one database holding 300 small tables (6 columns, a
primary key, an index, a foreign key to the previous table) and one 10,000-row table:

- **schema tree**, ``GET /api/v1/connections/{id}/schema``: *cold* is the first call for a
  connection the worker has not opened yet (a new saved connection each sample: connect +
  catalog), *warm* the same call again. The other side is dbtkd's engine class called directly
  in this process (``Engine.open`` + ``schema()``: the same catalog statements through the same
  driver, no HTTP, no JSON, no worker), cold (open + schema + close) and warm (schema on an open
  engine).
- **10,000-row query**, ``POST /api/v1/connections/{id}/query`` with ``limit=10000`` on one
  keep-alive connection, answer parsed with ``orjson``, against the same statement through the
  driver alone (``bench_query_pages``' driver fetch: asyncpg portal, PyMySQL unbuffered cursor,
  sqlite3 ``fetchmany``).
- **small requests**: 2,000 ``GET /api/v1/connections/{id}`` from 8 client threads, each on
  its own keep-alive connection (the answer is ~200 bytes): p50 and p99 latency per request.

Ratios are ``api / driver`` (aim: ≤ 1.5 for schema and query); each time is the median of
``--repeat`` runs after one unmeasured warm-up. The client is Python in the same 2-core machine
as the daemon, so the small-request figures include its own GIL-bound share.

    .venv/bin/python -m bench.bench_api [--engines sqlite,postgresql,mysql] [--tables 300]
        [--rows 10000] [--repeat 5] [--requests 2000] [--clients 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from bench.bench_query_pages import (
    ENGINES,
    Daemon,
    Engine,
    MysqlEngine,
    PostgresEngine,
    SqliteEngine,
    api_pages,
    build,
    progress,
    request,
    running_daemon,
    timed,
)
from dbtkd.app.db.profiles import Profile
from dbtkd.app.db.sessions import engine_class

SECONDS_TO_MS = 1000.0


def table_ddl(number: int, db_type: str) -> list[str]:
    """One small table; from the second on, a foreign key to the previous one."""
    name = f"t{number:03d}"
    text = "VARCHAR(64)" if db_type == "mysql" else "TEXT"
    reference = f", FOREIGN KEY (parent_id) REFERENCES t{number - 1:03d}(id)" if number else ""
    return [
        f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, parent_id INTEGER, label {text} NOT NULL,"
        f" amount DECIMAL(10, 2), created_at TIMESTAMP NULL, note {text}{reference})",
        f"CREATE INDEX {name}_label ON {name} (label)",
    ]


def add_tables(engine: Engine, count: int) -> None:
    """Create ``count`` small tables in the engine's bench database, through its driver."""
    statements = [s for n in range(count) for s in table_ddl(n, engine.db_type)]
    if isinstance(engine, SqliteEngine):
        engine.connection.executescript(";\n".join(statements) + ";")
    elif isinstance(engine, PostgresEngine):
        engine.loop.run_until_complete(engine.connection.execute(";\n".join(statements)))
    elif isinstance(engine, MysqlEngine):
        with engine.connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)


def engine_profile(engine: Engine) -> Profile:
    fields = engine.profile()
    return Profile(
        id="bench-direct",
        name=fields["name"],
        db_type=fields["db_type"],
        host=fields.get("host"),
        port=fields.get("port"),
        database=fields.get("database"),
        username=fields.get("username"),
    )


def count_tables(schemas: list[dict[str, Any]] | dict[str, Any]) -> int:
    """Tables in a schema tree, whichever shape it has (list of schemas or keyed by name)."""
    values = schemas.values() if isinstance(schemas, dict) else schemas
    total = 0
    for schema in values:
        tables = schema.get("tables", {})
        total += len(tables)
    return total


@dataclass
class Figures:
    engine: str
    tables: int
    schema_cold_api_ms: float
    schema_cold_driver_ms: float
    schema_warm_api_ms: float
    schema_warm_driver_ms: float
    query_api_ms: float
    query_driver_ms: float

    @property
    def ratios(self) -> tuple[float, float, float]:
        return (
            self.schema_cold_api_ms / self.schema_cold_driver_ms,
            self.schema_warm_api_ms / self.schema_warm_driver_ms,
            self.query_api_ms / self.query_driver_ms,
        )


def median_ms(run: Callable[[], object], repeat: int) -> float:
    samples = []
    for attempt in range(repeat + 1):
        started = time.perf_counter()
        run()
        if attempt:
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * SECONDS_TO_MS


def measure_schema(
    engine: Engine, daemon: Daemon, tables: int, repeat: int
) -> tuple[float, float, float, float]:
    def api_tree(connection_id: str) -> None:
        document = daemon.request("GET", f"/api/v1/connections/{connection_id}/schema")
        schemas = document.get("schemas", document) if isinstance(document, dict) else document
        if count_tables(schemas) < tables:
            raise RuntimeError(f"expected at least {tables} tables, got {document!r:.300}")

    def api_cold() -> None:  # a connection this worker never opened: connect + catalog
        created = daemon.request("POST", "/api/v1/connections", engine.profile())
        api_tree(created["id"])

    warm = daemon.request("POST", "/api/v1/connections", engine.profile())["id"]
    cold_api = median_ms(api_cold, repeat)
    warm_api = median_ms(lambda: api_tree(warm), repeat)

    profile = engine_profile(engine)
    loop = asyncio.new_event_loop()
    try:

        async def cold_direct() -> None:
            opened = await engine_class(profile.db_type).open(profile, "metadata")
            try:
                await opened.schema()
            finally:
                await opened.close()

        cold_driver = median_ms(lambda: loop.run_until_complete(cold_direct()), repeat)
        opened = loop.run_until_complete(engine_class(profile.db_type).open(profile, "metadata"))
        try:
            warm_driver = median_ms(lambda: loop.run_until_complete(opened.schema()), repeat)
        finally:
            loop.run_until_complete(opened.close())
    finally:
        loop.close()
    return cold_api, cold_driver, warm_api, warm_driver


def measure_query(engine: Engine, daemon: Daemon, rows: int, repeat: int) -> tuple[float, float]:
    created = daemon.request("POST", "/api/v1/connections", engine.profile())
    api = timed(lambda: api_pages(daemon, created["id"], 1, rows, orjson.loads), rows, repeat)
    driver = timed(lambda: engine.driver_pages(1, rows), rows, repeat)
    return api * SECONDS_TO_MS, driver * SECONDS_TO_MS


@dataclass
class Latency:
    requests: int
    clients: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    failures: int


def small_requests(daemon: Daemon, database: str, total: int, clients: int) -> Latency:
    """``total`` GETs of one saved connection from ``clients`` threads, keep-alive each."""
    created = daemon.request(
        "POST", "/api/v1/connections", {"name": "small", "db_type": "sqlite", "database": database}
    )
    path = f"/api/v1/connections/{created['id']}"
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(count: int) -> None:
        http = daemon.connection()
        mine: list[float] = []
        try:
            request(http, daemon.token, "GET", path, None)  # connect outside the figures
            start.wait()
            for _ in range(count):
                began = time.perf_counter()
                request(http, daemon.token, "GET", path, None)
                mine.append(time.perf_counter() - began)
        except Exception as error:  # counted and reported, never hidden
            with lock:
                failures.append(repr(error))
        finally:
            http.close()
            with lock:
                latencies.extend(mine)

    threads = [
        threading.Thread(target=client, args=(total // clients,), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if not latencies:
        raise RuntimeError(f"no request succeeded: {failures[:3]}")
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Latency(
        len(ordered),
        clients,
        statistics.median(ordered) * SECONDS_TO_MS,
        p99 * SECONDS_TO_MS,
        ordered[-1] * SECONDS_TO_MS,
        len(failures),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--tables", type=int, default=300)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    options = parser.parse_args(argv)
    figures: list[Figures] = []
    with running_daemon() as daemon, tempfile.TemporaryDirectory() as directory:
        progress(f"small requests: {options.requests} from {options.clients} clients")
        latency = small_requests(daemon, f"{directory}/small.db", options.requests, options.clients)
        for db_type in options.engines.split(","):
            progress(f"{db_type}: {options.rows} rows and {options.tables} tables")
            engine = build(db_type, directory, options.rows)
            try:
                add_tables(engine, options.tables)
                progress(f"{db_type}: measuring ({options.repeat} runs each)")
                schema = measure_schema(engine, daemon, options.tables, options.repeat)
                query = measure_query(engine, daemon, options.rows, options.repeat)
                figures.append(Figures(db_type, options.tables, *schema, *query))
            finally:
                engine.close()
    if options.json:
        document = {
            "engines": [{**asdict(f), "ratios": f.ratios} for f in figures],
            "small_requests": asdict(latency),
        }
        print(json.dumps(document, indent=2))
        return 0
    print(
        f"median of {options.repeat} runs; ratio = api / driver alone (aim <= 1.5); "
        f"{options.tables} tables, {options.rows}-row query"
    )
    print(
        f"{'engine':<11} | {'schema cold api/driver ms':>26} | {'ratio':>5} | "
        f"{'schema warm api/driver ms':>26} | {'ratio':>5} | {'query api/driver ms':>20} | "
        f"{'ratio':>5}"
    )
    for f in figures:
        cold, warm, query = f.ratios
        print(
            f"{f.engine:<11} | {f.schema_cold_api_ms:12.1f} / {f.schema_cold_driver_ms:11.1f} | "
            f"{cold:5.2f} | {f.schema_warm_api_ms:12.1f} / {f.schema_warm_driver_ms:11.1f} | "
            f"{warm:5.2f} | {f.query_api_ms:9.1f} / {f.query_driver_ms:8.1f} | {query:5.2f}"
        )
    print(
        f"small requests: {latency.requests} GET /connections/{{id}} from {latency.clients} "
        f"clients: p50 {latency.p50_ms:.2f} ms, p99 {latency.p99_ms:.2f} ms, "
        f"max {latency.max_ms:.2f} ms, failures {latency.failures} (aim p99 < 10 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
