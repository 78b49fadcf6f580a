"""The data explorer and CSV through the API against the same work with the driver alone
(issue 13's bench).

Per engine (SQLite, PostgreSQL, MariaDB), one table ``bench`` of ``--rows`` rows (1,000,000 by
default: integer key, text, decimal, timestamp, float; ``bench_query_pages``' table):

- **browse**: ``POST /api/v1/connections/{id}/data/browse`` for page 1 and page 1,000 (100 rows
  each), plain, with a filter (``name`` contains ``9``, about half the rows) and with a sort on
  an unindexed column (``score`` DESC). The driver runs the statement the API generates for
  that page (same quoting, same bound ``LIKE``) with ``LIMIT 100 OFFSET n``, as a person would
  type it, in this process.
- **CSV export** of ``--csv-rows`` rows (100,000): ``POST /api/v1/csv/export`` (the whole
  streamed answer read and parsed) against the driver fetching the same rows and writing them
  with ``csv.writer`` (the plain driver loop), and PostgreSQL's ``COPY ... TO STDOUT``.
- **CSV import** of the same file: ``POST /api/v1/csv/import`` into an empty table against the
  plain driver loop (``executemany`` of the parsed rows in one transaction), and the bulk loader
  where there is one (``COPY FROM STDIN``; MariaDB's ``LOAD DATA LOCAL INFILE``; SQLite has
  none).

Ratios are ``api / driver`` (aims: browse ≤ 1.5, export ≤ 2, import ≤ 3 against the plain loop);
each time is the median of ``--repeat`` runs after one warm-up. **Peak worker RSS growth** per
operation: the worker's peak is reset before its first call (``/proc/<pid>/clear_refs`` ``5``)
and read after (``VmHWM`` minus the ``VmRSS`` before), so it is what that one call made the
worker hold beyond what it already had (measured before the timed runs, whose freed memory the
allocator would otherwise reuse and hide).

    .venv/bin/python -m bench.bench_data [--engines sqlite,postgresql,mysql] [--rows 1000000]
        [--csv-rows 100000] [--pages 1,1000] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.client import RemoteDisconnected
from typing import Any

import orjson

from bench.bench_query_pages import (
    BIN,
    ENGINES,
    Daemon,
    Engine,
    MysqlEngine,
    PostgresEngine,
    SqliteEngine,
    build,
    progress,
    running_daemon,
    timed,
)
from dbtkd.app.data import contains, like_pattern, placeholder
from dbtkd.app.schema import qualified, quote_identifier

PAGE = 100
COLUMNS = ("id", "name", "amount", "created_at", "score")
BROWSES: dict[str, dict[str, Any]] = {
    "plain": {},
    "filter": {"filters": {"name": "9"}},
    "sort": {"sort_column": "score", "sort_order": "DESC"},
}


def browse_sql(engine: Engine, variant: str, offset: int) -> tuple[str, list[Any]]:
    """The statement ``data/browse`` runs for this page, with the page as LIMIT/OFFSET."""
    db_type = engine.db_type
    schema = {"sqlite": "main", "postgresql": "public"}.get(db_type) or engine.profile()["database"]
    sql, params = f"SELECT * FROM {qualified(db_type, schema, 'bench')}", []
    if variant == "filter":
        params.append(like_pattern("9"))
        column = quote_identifier(db_type, "name")
        sql += " WHERE " + contains(db_type, column, placeholder(db_type, 1))
    if variant == "sort":
        sql += f" ORDER BY {quote_identifier(db_type, 'score')} DESC"
    else:
        sql += f" ORDER BY {quote_identifier(db_type, 'id')}"
    return sql + f" LIMIT {PAGE} OFFSET {offset}", params


# -- the worker's memory ---------------------------------------------------------------------------


def worker_pid(daemon: Daemon) -> int:
    env = {**os.environ, "DBTK_HOME": daemon.home}
    found = subprocess.run(
        [os.path.join(BIN, "dbtkctl"), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(json.loads(found.stdout)["worker_pid"])


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def peak_growth_mib(pid: int, run: Callable[[], Any]) -> float:
    """MiB the worker's resident set peaked above where it stood, during ``run``."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")  # resets VmHWM to the current RSS
    before = _status_kib(pid, "VmRSS")
    run()
    return max(0, _status_kib(pid, "VmHWM") - before) / 1024


# -- driver sides ----------------------------------------------------------------------------------


def driver_fetch(engine: Engine, sql: str, params: list[Any]) -> list[Any]:
    if isinstance(engine, SqliteEngine):
        return engine.connection.execute(sql, params).fetchall()
    if isinstance(engine, PostgresEngine):
        return engine.loop.run_until_complete(engine.connection.fetch(sql, *params))
    assert isinstance(engine, MysqlEngine)
    with engine.connection.cursor() as cursor:
        cursor.execute(sql, params or None)
        return list(cursor.fetchall())


def driver_export(engine: Engine, rows: int) -> int:
    """The plain driver loop: fetch, write CSV text."""
    fetched = driver_fetch(engine, f"SELECT * FROM bench WHERE id <= {rows} ORDER BY id", [])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(fetched)
    return out.getvalue().count("\n") - 1


def copy_export(engine: PostgresEngine, rows: int) -> int:
    out = io.BytesIO()
    engine.loop.run_until_complete(
        engine.connection.copy_from_query(
            f"SELECT * FROM bench WHERE id <= {rows} ORDER BY id", output=out, format="csv"
        )
    )
    return out.getvalue().count(b"\n")


def make_import_table(engine: Engine) -> None:
    ddl = {
        "sqlite": "CREATE TABLE bench_in (id INTEGER PRIMARY KEY, name TEXT, amount TEXT, "
        "created_at TEXT, score REAL)",
        "postgresql": "CREATE TABLE bench_in (id integer PRIMARY KEY, name text, amount "
        "numeric(12, 2), created_at timestamp, score double precision)",
        "mysql": "CREATE TABLE bench_in (id INT PRIMARY KEY, name VARCHAR(40), amount "
        "DECIMAL(12, 2), created_at DATETIME, score DOUBLE)",
    }[engine.db_type]
    run_sql(engine, ddl)


def run_sql(engine: Engine, sql: str) -> None:
    if isinstance(engine, SqliteEngine):
        engine.connection.execute(sql)
    elif isinstance(engine, PostgresEngine):
        engine.loop.run_until_complete(engine.connection.execute(sql))
    else:
        assert isinstance(engine, MysqlEngine)
        with engine.connection.cursor() as cursor:
            cursor.execute(sql)


def count_imported(engine: Engine) -> int:
    return int(driver_fetch(engine, "SELECT COUNT(*) FROM bench_in", [])[0][0])


def driver_import(engine: Engine, content: str) -> int:
    """The plain driver loop: parse the CSV, executemany in one transaction."""
    run_sql(engine, "DELETE FROM bench_in")
    rows = list(csv.reader(io.StringIO(content)))[1:]
    if isinstance(engine, SqliteEngine):
        engine.connection.execute("BEGIN")
        engine.connection.executemany("INSERT INTO bench_in VALUES (?, ?, ?, ?, ?)", rows)
        engine.connection.execute("COMMIT")
    elif isinstance(engine, PostgresEngine):
        # asyncpg binds typed values: the text fields are cast by the statement.
        async def load() -> None:
            async with engine.connection.transaction():
                await engine.connection.executemany(
                    "INSERT INTO bench_in VALUES ($1::text::integer, $2, $3::text::numeric, "
                    "$4::text::timestamp, $5::text::float8)",
                    rows,
                )

        engine.loop.run_until_complete(load())
    else:
        assert isinstance(engine, MysqlEngine)
        with engine.connection.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.executemany("INSERT INTO bench_in VALUES (%s, %s, %s, %s, %s)", rows)
            cursor.execute("COMMIT")
    return count_imported(engine)


def bulk_import(engine: Engine, content: str, directory: str) -> int | None:
    run_sql(engine, "DELETE FROM bench_in")
    if isinstance(engine, PostgresEngine):
        engine.loop.run_until_complete(
            engine.connection.copy_to_table(
                "bench_in", source=io.BytesIO(content.encode()), format="csv", header=True
            )
        )
        return count_imported(engine)
    if isinstance(engine, MysqlEngine):
        import pymysql

        path = os.path.join(directory, "bench_in.csv")
        with open(path, "w", encoding="utf-8", newline="") as file:
            file.write(content)
        loader = pymysql.connect(
            host="127.0.0.1",
            user="root",
            password="",
            database=engine.name,
            local_infile=True,
            autocommit=True,
        )
        try:
            with loader.cursor() as cursor:
                cursor.execute(
                    f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE bench_in FIELDS TERMINATED BY "
                    "',' OPTIONALLY ENCLOSED BY '\"' LINES TERMINATED BY '\\r\\n' IGNORE 1 LINES"
                )
        except pymysql.err.MySQLError as error:
            progress(f"mysql: LOAD DATA LOCAL refused ({error}); no bulk figure")
            return None
        finally:
            loader.close()
        return count_imported(engine)
    return None


# -- measuring -------------------------------------------------------------------------------------


@dataclass
class Figure:
    engine: str
    operation: str
    api_ms: float
    driver_ms: float
    ratio: float
    bulk_ms: float | None = None
    peak_rss_growth_mib: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def measure(engine: Engine, daemon: Daemon, options: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    created = daemon.request("POST", "/api/v1/connections", engine.profile())
    connection_id = created["id"]
    pid = worker_pid(daemon)
    schema = {"sqlite": "public", "postgresql": "public", "mysql": "public"}[engine.db_type]
    http = daemon.connection()

    def call(method: str, path: str, body: Any) -> Any:
        from bench.bench_query_pages import request

        try:
            return request(http, daemon.token, method, path, body, orjson.loads)
        except (BrokenPipeError, ConnectionResetError, RemoteDisconnected):
            # The server closes a connection idle for 5 s (Hypercorn's keep-alive), as after
            # the driver's runs: the first call after them (a warm-up) reconnects.
            http.close()
            return request(http, daemon.token, method, path, body, orjson.loads)

    try:
        for variant, extra in BROWSES.items():
            for page in options.pages:
                offset = (page - 1) * PAGE
                body = {
                    "schema_name": schema,
                    "table_name": "bench",
                    "limit": PAGE,
                    "offset": offset,
                    "sort_column": None,
                    "sort_order": "ASC",
                    "filters": {},
                    **extra,
                }
                path = f"/api/v1/connections/{connection_id}/data/browse"

                def api_browse(body: dict[str, Any] = body, path: str = path) -> int:
                    document = call("POST", path, body)
                    if not document["success"]:
                        raise RuntimeError(document["error"])
                    return len(document["rows"])

                sql, params = browse_sql(engine, variant, offset)
                growth = peak_growth_mib(pid, api_browse)  # first: before the runs' memory
                api = timed(api_browse, PAGE, options.repeat)
                driver = timed(
                    lambda sql=sql, params=params: len(driver_fetch(engine, sql, params)),
                    PAGE,
                    options.repeat,
                )
                figures.append(
                    Figure(
                        engine.db_type,
                        f"browse {variant} page {page}",
                        api * 1000,
                        driver * 1000,
                        api / driver,
                        peak_rss_growth_mib=growth,
                    )
                )

        rows = options.csv_rows
        query = f"SELECT * FROM bench WHERE id <= {rows} ORDER BY id"
        export_body = {"connection_id": connection_id, "query": query, "delimiter": ","}
        exported: dict[str, Any] = {}

        def api_export() -> int:
            document = call("POST", "/api/v1/csv/export", export_body)
            exported["csv"] = document["csv_content"]
            return int(document["row_count"])

        growth = peak_growth_mib(pid, api_export)
        api = timed(api_export, rows, options.repeat)
        driver = timed(lambda: driver_export(engine, rows), rows, options.repeat)
        bulk = None
        if isinstance(engine, PostgresEngine):
            bulk = timed(lambda: copy_export(engine, rows), rows, options.repeat)
        content = exported["csv"]
        figures.append(
            Figure(
                engine.db_type,
                f"csv export {rows} rows",
                api * 1000,
                driver * 1000,
                api / driver,
                None if bulk is None else bulk * 1000,
                growth,
                {"csv_mib": round(len(content) / 2**20, 1)},
            )
        )

        make_import_table(engine)
        import_body = {
            "connection_id": connection_id,
            "schema_name": schema,
            "table_name": "bench_in",
            "csv_content": content,
            "delimiter": ",",
            "has_headers": True,
        }

        def api_import() -> int:
            run_sql(engine, "DELETE FROM bench_in")
            document = call("POST", "/api/v1/csv/import", import_body)
            return int(document["rows_imported"])

        growth = peak_growth_mib(pid, api_import)
        api = timed(api_import, rows, options.repeat)
        driver = timed(lambda: driver_import(engine, content), rows, options.repeat)
        with tempfile.TemporaryDirectory() as directory:
            bulk = None
            if bulk_import(engine, content, directory) == rows:
                bulk = timed(lambda: bulk_import(engine, content, directory), rows, options.repeat)
        figures.append(
            Figure(
                engine.db_type,
                f"csv import {rows} rows",
                api * 1000,
                driver * 1000,
                api / driver,
                None if bulk is None else bulk * 1000,
                growth,
                {"csv_mib": round(len(content) / 2**20, 1)},
            )
        )
    finally:
        http.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--csv-rows", type=int, default=100_000)
    parser.add_argument(
        "--pages",
        type=lambda text: [int(p) for p in text.split(",")],
        default=[1, 1000],
        help="browse page numbers (100 rows each)",
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    options = parser.parse_args(argv)
    figures: list[Figure] = []
    with running_daemon() as daemon, tempfile.TemporaryDirectory() as directory:
        for db_type in options.engines.split(","):
            progress(f"{db_type}: filling {options.rows} rows")
            engine = build(db_type, directory, options.rows)
            try:
                progress(f"{db_type}: measuring ({options.repeat} runs each)")
                figures.extend(measure(engine, daemon, options))
            finally:
                engine.close()
    if options.json:
        print(json.dumps([asdict(figure) for figure in figures], indent=2))
        return 0
    print(
        f"{options.rows} rows; median of {options.repeat} runs; ratio = api / driver (aims: "
        "browse <= 1.5, export <= 2, import <= 3); bulk = COPY / LOAD DATA"
    )
    print(
        f"{'engine':<11} | {'operation':<26} | {'api ms':>9} | {'driver ms':>9} | {'ratio':>5} | "
        f"{'bulk ms':>8} | {'peak RSS +MiB':>13}"
    )
    for f in figures:
        bulk = "-" if f.bulk_ms is None else f"{f.bulk_ms:8.1f}"
        print(
            f"{f.engine:<11} | {f.operation:<26} | {f.api_ms:9.1f} | {f.driver_ms:9.1f} | "
            f"{f.ratio:5.2f} | {bulk:>8} | {f.peak_rss_growth_mib:13.1f}"
            + (f" (file {f.extra['csv_mib']} MiB)" if "csv_mib" in f.extra else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
