"""Backup and restore of a 100 MB database: through the API against the dump tool run by hand.

For each engine (SQLite, PostgreSQL, MariaDB) a database of about ``--megabytes`` MB is made
(one table: integer key, name, 128 hex characters, decimal, timestamp), then ``--repeat`` rounds,
API and by-hand interleaved (which goes first alternates), of:

- **backup, api**: ``POST /api/v1/backups {connection_id, gzip}`` to a real ``dbtkd``, timed
  until ``/ws/backups`` (opened before, as a window would) reports it ``completed``. It
  includes what the API adds: checking the server's version and table count, finding the
  tool, the sha256 of the file, and an ``fsync`` of it;
- **backup, by hand**: the same tool with the same options, as a user would type it: PostgreSQL
  ``pg_dump --format=custom --compress=6 --file=...``; MariaDB ``mariadb-dump
  --single-transaction --routines --triggers --hex-blob --no-tablespaces db | gzip -6 > f``;
  SQLite ``sqlite3 db ".backup f"`` then ``gzip -6`` (the API's full SQLite backup is the
  same online backup API, then compression). No fsync;
- **restore, api**: ``POST /api/v1/backups/{id}/restore {}`` until ``completed``;
- **restore, by hand**: ``pg_restore --single-transaction --no-owner --clean --if-exists``;
  ``gzip -dc f | mariadb db``; ``gzip -dc f > g`` then ``sqlite3 db ".restore g"``.

The figure is ``api / by hand`` per operation (the aim: at most 1.1). Medians of the rounds.

    .venv/bin/python bench/bench_backups.py [--engines sqlite,postgresql,mysql]
        [--megabytes 100] [--repeat 3] [--no-gzip] [--json]

Needs PostgreSQL (127.0.0.1:5432, trust, user postgres) and MariaDB (127.0.0.1:3306, root, no
password), and their client tools; it makes a database of its own on each and drops it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import websockets.sync.client
from websockets.typing import Subprotocol

BIN = os.path.dirname(sys.executable)
HOST = "127.0.0.1"
ENGINES = ("sqlite", "postgresql", "mysql")
ROW_BYTES = 200  # about what one row takes on disk (SQLite 180, PostgreSQL 230), to size it
JOB_DEADLINE_SECONDS = 1800
AIM = 1.1


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the daemon ----------------------------------------------------------------------------------


@dataclass
class Daemon:
    home: str
    port: int
    token: str

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request on a new connection (a by-hand step outlasts the keep-alive timeout)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection(HOST, self.port, timeout=120)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path} → {response.status}: {raw[:300]!r}")
        return json.loads(raw)

    def run_job(self, method: str, path: str, body: Any) -> tuple[float, dict[str, Any]]:
        """Start a job; (seconds until ``/ws/backups`` says it completed, its record).

        Listening to the stream, as a window does, rather than polling keeps the measuring
        from taking CPU away from the job on a small machine.
        """
        with websockets.sync.client.connect(
            f"ws://{HOST}:{self.port}/ws/backups",
            subprotocols=[Subprotocol("dbtk.v1"), Subprotocol(f"dbtk.bearer.{self.token}")],
        ) as events:
            json.loads(events.recv(timeout=30))  # the snapshot
            started = time.perf_counter()
            job = self.request(method, path, body)
            while True:
                event = json.loads(events.recv(timeout=JOB_DEADLINE_SECONDS))
                record = event.get(job["kind"]) or {}
                if record.get("id") != job["id"]:
                    continue
                if record["status"] == "completed":
                    return time.perf_counter() - started, record
                if record["status"] == "failed":
                    raise RuntimeError(f"{path}: {record['error']}")


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
            yield Daemon(home, int(details["port"]), details["token"])
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()


# -- running tools by hand -----------------------------------------------------------------------


def timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def run(argv: list[str], **kwargs: Any) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, **kwargs)


def pipeline(first: list[str], second: list[str], *, stdout: Any = None) -> None:
    """``first | second`` without a shell."""
    left = subprocess.Popen(first, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert left.stdout is not None
    right = subprocess.Popen(second, stdin=left.stdout, stdout=stdout)
    left.stdout.close()
    if right.wait() != 0 or left.wait() != 0:
        raise RuntimeError(f"{first[0]} | {second[0]} failed")


def tool(*candidates: str) -> str:
    for candidate in candidates:
        found = shutil.which(candidate) if "/" not in candidate else candidate
        if found and os.path.exists(found):
            return found
    raise RuntimeError(f"none of {candidates} is installed")


# -- the engines ---------------------------------------------------------------------------------


class Engine:
    db_type = ""

    def profile(self) -> dict[str, Any]:
        raise NotImplementedError

    def size_bytes(self) -> int:
        raise NotImplementedError

    def backup_by_hand(self, out: str, gzip: bool) -> None:
        raise NotImplementedError

    def restore_by_hand(self, out: str, gzip: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqliteEngine(Engine):
    db_type = "sqlite"

    def __init__(self, directory: str, rows: int) -> None:
        self.directory = directory
        self.path = os.path.join(directory, "bench.sqlite3")
        with contextlib.closing(sqlite3.connect(self.path)) as connection:
            connection.executescript(
                f"""
                CREATE TABLE bench (id INTEGER PRIMARY KEY, name TEXT, payload TEXT,
                                    amount TEXT, created_at TEXT);
                WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {rows})
                INSERT INTO bench SELECT x, 'customer ' || x, hex(randomblob(64)),
                    printf('%.2f', (x % 100000) / 100.0), datetime(1700000000 + x, 'unixepoch')
                FROM n;
                """
            )
        self.sqlite3 = tool("sqlite3")

    def profile(self) -> dict[str, Any]:
        return {"name": "bench", "db_type": "sqlite", "database": self.path}

    def size_bytes(self) -> int:
        return os.path.getsize(self.path)

    def backup_by_hand(self, out: str, gzip: bool) -> None:
        raw = out + ".raw"
        run([self.sqlite3, self.path, f".backup {raw}"])
        if gzip:
            with open(out, "wb") as file:
                run(["gzip", "-6", "-c", raw], stdout=file)
            os.unlink(raw)
        else:
            os.replace(raw, out)

    def restore_by_hand(self, out: str, gzip: bool) -> None:
        raw = out + ".restore"
        if gzip:
            with open(raw, "wb") as file:
                run(["gzip", "-dc", out], stdout=file)
        else:
            shutil.copyfile(out, raw)
        run([self.sqlite3, self.path, f".restore {raw}"])
        os.unlink(raw)


class PostgresEngine(Engine):
    db_type = "postgresql"

    def __init__(self, directory: str, rows: int) -> None:
        self.database = f"dbtk_bench_{secrets.token_hex(4)}"
        self.psql = tool("/usr/lib/postgresql/15/bin/psql", "psql")
        self._sql("postgres", f'CREATE DATABASE "{self.database}"')
        try:
            self._fill(rows)
        except BaseException:
            self.close()
            raise
        bin_dir = os.path.dirname(self.psql)
        self.pg_dump = tool(os.path.join(bin_dir, "pg_dump"), "pg_dump")
        self.pg_restore = tool(os.path.join(bin_dir, "pg_restore"), "pg_restore")

    def _fill(self, rows: int) -> None:
        self._sql(
            self.database,
            "CREATE TABLE bench (id bigint PRIMARY KEY, name text, payload text, "
            "amount numeric(12, 2), created_at timestamptz); "
            "INSERT INTO bench SELECT g, 'customer ' || g, md5(g::text) || md5((g + 1)::text) "
            "|| md5((g + 2)::text) || md5((g + 3)::text), (g % 100000) / 100.0, "
            f"'2024-01-01'::timestamptz + g * interval '1 second' "
            f"FROM generate_series(1, {rows}) g",
        )
        self._sql(self.database, "VACUUM ANALYZE bench")

    def _sql(self, database: str, sql: str) -> str:
        found = subprocess.run(
            [self.psql, "-h", HOST, "-U", "postgres", "-d", database, "-qAtc", sql],
            check=True,
            capture_output=True,
            text=True,
        )
        return found.stdout.strip()

    def conninfo(self) -> str:
        return f"host={HOST} port=5432 user=postgres dbname={self.database}"

    def profile(self) -> dict[str, Any]:
        return {
            "name": "bench",
            "db_type": "postgresql",
            "host": HOST,
            "port": 5432,
            "username": "postgres",
            "database": self.database,
        }

    def size_bytes(self) -> int:
        return int(self._sql(self.database, "SELECT pg_total_relation_size('bench')"))

    def backup_by_hand(self, out: str, gzip: bool) -> None:
        run(
            [
                self.pg_dump,
                "--format=custom",
                f"--compress={6 if gzip else 0}",
                f"--file={out}",
                f"--dbname={self.conninfo()}",
            ]
        )

    def restore_by_hand(self, out: str, gzip: bool) -> None:
        run(
            [
                self.pg_restore,
                "--single-transaction",
                "--no-owner",
                "--clean",
                "--if-exists",
                f"--dbname={self.conninfo()}",
                out,
            ]
        )

    def close(self) -> None:
        self._sql("postgres", f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


class MysqlEngine(Engine):
    db_type = "mysql"
    CONNECTION = ("--host=127.0.0.1", "--port=3306", "--protocol=TCP", "--user=root")

    def __init__(self, directory: str, rows: int) -> None:
        self.database = f"dbtk_bench_{secrets.token_hex(4)}"
        self.client = tool("mariadb", "mysql")
        self.dump = tool("mariadb-dump", "mysqldump")
        self._sql(None, f"CREATE DATABASE `{self.database}`")
        try:
            self._fill(rows)
        except BaseException:
            self.close()
            raise

    def _fill(self, rows: int) -> None:
        self._sql(
            self.database,
            "CREATE TABLE bench (id BIGINT PRIMARY KEY, name VARCHAR(40), payload VARCHAR(128), "
            "amount DECIMAL(12, 2), created_at DATETIME); "
            "INSERT INTO bench SELECT seq, CONCAT('customer ', seq), CONCAT(MD5(seq), "
            "MD5(seq + 1), MD5(seq + 2), MD5(seq + 3)), (seq % 100000) / 100, "
            f"'2024-01-01' + INTERVAL seq SECOND FROM seq_1_to_{rows}; ANALYZE TABLE bench;",
        )

    def _sql(self, database: str | None, sql: str) -> str:
        argv = [self.client, *self.CONNECTION, "-N", "-B", "-e", sql]
        if database:
            argv.insert(1 + len(self.CONNECTION), f"--database={database}")
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

    def profile(self) -> dict[str, Any]:
        return {
            "name": "bench",
            "db_type": "mysql",
            "host": HOST,
            "port": 3306,
            "username": "root",
            "database": self.database,
        }

    def size_bytes(self) -> int:
        return int(
            self._sql(
                None,
                "SELECT SUM(data_length + index_length) FROM information_schema.tables "
                f"WHERE table_schema = '{self.database}'",
            )
        )

    def backup_by_hand(self, out: str, gzip: bool) -> None:
        argv = [
            self.dump,
            *self.CONNECTION,
            "--single-transaction",
            "--routines",
            "--triggers",
            "--hex-blob",
            "--no-tablespaces",
            self.database,
        ]
        with open(out, "wb") as file:
            if gzip:
                pipeline(argv, ["gzip", "-6"], stdout=file)
            else:
                run(argv, stdout=file)

    def restore_by_hand(self, out: str, gzip: bool) -> None:
        client = [self.client, *self.CONNECTION, f"--database={self.database}"]
        if gzip:
            pipeline(["gzip", "-dc", out], client)
        else:
            with open(out, "rb") as file:
                subprocess.run(client, check=True, stdin=file)

    def close(self) -> None:
        self._sql(None, f"DROP DATABASE IF EXISTS `{self.database}`")


def build(db_type: str, directory: str, rows: int) -> Engine:
    if db_type == "sqlite":
        return SqliteEngine(directory, rows)
    if db_type == "postgresql":
        return PostgresEngine(directory, rows)
    return MysqlEngine(directory, rows)


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Figure:
    engine: str
    database_mb: float
    backup_mb: float
    backup_api_s: float
    backup_hand_s: float
    restore_api_s: float
    restore_hand_s: float
    samples: dict[str, list[float]]

    @property
    def backup_ratio(self) -> float:
        return self.backup_api_s / self.backup_hand_s

    @property
    def restore_ratio(self) -> float:
        return self.restore_api_s / self.restore_hand_s


def measure(engine: Engine, daemon: Daemon, directory: str, repeat: int, gzip: bool) -> Figure:
    database_bytes = engine.size_bytes()  # now: restores by hand leave stale statistics
    connection = daemon.request("POST", "/api/v1/connections", engine.profile())["id"]
    samples: dict[str, list[float]] = {
        k: [] for k in ("backup_api", "backup_hand", "restore_api", "restore_hand")
    }
    out = os.path.join(directory, f"by-hand-{engine.db_type}")
    backup_size = 0
    # One unmeasured round of each: caches warm, tools found, the daemon's tool versions known.
    _, warm = daemon.run_job("POST", "/api/v1/backups", {"connection_id": connection, "gzip": gzip})
    engine.backup_by_hand(out, gzip)
    for round_number in range(repeat):
        order = ("api", "hand") if round_number % 2 == 0 else ("hand", "api")
        backup_id = ""
        for side in order:
            if side == "api":
                seconds, record = daemon.run_job(
                    "POST", "/api/v1/backups", {"connection_id": connection, "gzip": gzip}
                )
                samples["backup_api"].append(seconds)
                backup_id, backup_size = str(record["id"]), int(record["size"])
            else:
                samples["backup_hand"].append(timed(lambda: engine.backup_by_hand(out, gzip)))
        for side in order:
            if side == "api":
                path = f"/api/v1/backups/{backup_id}/restore"
                samples["restore_api"].append(daemon.run_job("POST", path, {})[0])
            else:
                samples["restore_hand"].append(timed(lambda: engine.restore_by_hand(out, gzip)))
        daemon.request("DELETE", f"/api/v1/backups/{backup_id}")
        progress(
            f"{engine.db_type}: round {round_number + 1}/{repeat}: "
            + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items())
        )
    daemon.request("DELETE", f"/api/v1/backups/{warm['id']}")
    median = {k: statistics.median(v) for k, v in samples.items()}
    return Figure(
        engine=engine.db_type,
        database_mb=round(database_bytes / 2**20, 1),
        backup_mb=round(backup_size / 2**20, 1),
        backup_api_s=median["backup_api"],
        backup_hand_s=median["backup_hand"],
        restore_api_s=median["restore_api"],
        restore_hand_s=median["restore_hand"],
        samples=samples,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-gzip", action="store_true", help="uncompressed backups")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    options = parser.parse_args(argv)
    rows = int(options.megabytes * 2**20 / ROW_BYTES)
    gzip = not options.no_gzip
    figures: list[Figure] = []
    with running_daemon() as daemon, tempfile.TemporaryDirectory() as directory:
        for db_type in options.engines.split(","):
            progress(f"{db_type}: filling {rows} rows (about {options.megabytes:g} MB)")
            engine = build(db_type, directory, rows)
            try:
                figures.append(measure(engine, daemon, directory, options.repeat, gzip))
            finally:
                engine.close()
    if options.json:
        print(
            json.dumps(
                [
                    {**asdict(f), "backup_ratio": f.backup_ratio, "restore_ratio": f.restore_ratio}
                    for f in figures
                ],
                indent=2,
            )
        )
        return 0
    print(
        f"backup and restore, gzip {'on' if gzip else 'off'}, median of {options.repeat} rounds "
        f"(ratio = api / by hand; aim <= {AIM})"
    )
    print(
        f"{'engine':<11} | {'db MB':>6} | {'file MB':>7} | {'backup api s':>12} | "
        f"{'by hand s':>9} | {'ratio':>5} | {'restore api s':>13} | {'by hand s':>9} | {'ratio':>5}"
    )
    for f in figures:
        print(
            f"{f.engine:<11} | {f.database_mb:6.1f} | {f.backup_mb:7.1f} | "
            f"{f.backup_api_s:12.2f} | {f.backup_hand_s:9.2f} | {f.backup_ratio:5.2f} | "
            f"{f.restore_api_s:13.2f} | "
            f"{f.restore_hand_s:9.2f} | {f.restore_ratio:5.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
