"""The built-in migration runner: a folder of numbered ``.sql`` files and a tracking table.

Files are named ``<number>[_-]<description>.sql`` (``0001_create_users.sql``, ``2-add-index.sql``)
and applied in the order of their numbers; two files with one number are an error. The table
``dbtk_schema_migrations (version, name, checksum, applied_at)`` in the target database records
what was applied and the sha256 of the file as it was then. ``status`` lists every file as
applied, pending or changed-since-applied; ``up`` applies the pending ones in order, stopping at
the first failure. On PostgreSQL and SQLite each file runs in a transaction with its tracking
row (all of it or nothing); MariaDB and MySQL commit DDL as they go, so a file that fails
half-way there leaves what ran before the failing statement.

Statements run through the API's own engines (``dbtkd.app.db``) on a connection of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from dbtkd.app.db.engine import DatabaseError, Engine
from dbtkd.units import SECONDS

# A migration may rewrite a big table; an hour is the longest the API lets any statement run.
STATEMENT_TIME_LIMIT = 3600 * SECONDS
TRACKING_TABLE = "dbtk_schema_migrations"
MIGRATION_FILE = re.compile(r"^(\d+)[_-]?(.*)\.sql$", re.IGNORECASE)
MAX_FILE_BYTES = 64 * 1024 * 1024
CREATE_TRACKING = {
    "postgresql": f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (version bigint PRIMARY KEY,"
    " name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    "mysql": f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (version BIGINT PRIMARY KEY,"
    " name VARCHAR(255) NOT NULL, checksum CHAR(64) NOT NULL,"
    " applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    "sqlite": f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL, checksum TEXT NOT NULL,"
    " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')))",
}
INSERT_TRACKING = {
    "postgresql": f"INSERT INTO {TRACKING_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
    "mysql": f"INSERT INTO {TRACKING_TABLE} (version, name, checksum) VALUES (%s, %s, %s)",
    "sqlite": f"INSERT INTO {TRACKING_TABLE} (version, name, checksum) VALUES (?, ?, ?)",
}
TRANSACTIONAL_DDL = frozenset({"postgresql", "sqlite"})

Emit = Callable[[str, str], Awaitable[None]]  # (stream "stdout" | "stderr", line)


class MigrationError(Exception):
    """The folder or a file cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    file: str
    checksum: str


def discover(directory: str) -> list[Migration]:
    """The numbered ``.sql`` files of ``directory``, in order. Blocking."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise MigrationError(f"cannot read {directory}: {error.strerror or error}") from None
    found: dict[int, Migration] = {}
    for name in names:
        match = MIGRATION_FILE.match(name)
        path = os.path.join(directory, name)
        if match is None or not os.path.isfile(path):
            continue
        version = int(match[1])
        if version in found:
            raise MigrationError(
                f"two migrations have the number {version}: {found[version].file} and {name}"
            )
        with open(path, "rb") as file:
            content = file.read(MAX_FILE_BYTES + 1)
        if len(content) > MAX_FILE_BYTES:
            raise MigrationError(f"{name} is larger than {MAX_FILE_BYTES // 2**20} MiB")
        found[version] = Migration(
            version, match[2] or name, name, hashlib.sha256(content).hexdigest()
        )
    return [found[v] for v in sorted(found)]


def read_sql(directory: str, migration: Migration) -> str:
    with open(os.path.join(directory, migration.file), encoding="utf-8") as file:
        return file.read()


async def _run(engine: Engine, sql: str, params: list[Any] | None = None) -> list[list[Any]]:
    result = await engine.execute(
        sql, params, limit=10_000, offset=0, time_limit=STATEMENT_TIME_LIMIT
    )
    return result.rows


async def applied_versions(engine: Engine) -> dict[int, dict[str, Any]]:
    await _run(engine, CREATE_TRACKING[engine.db_type])
    rows = await _run(
        engine, f"SELECT version, name, checksum, applied_at FROM {TRACKING_TABLE} ORDER BY version"
    )
    return {int(v): {"name": n, "checksum": c, "applied_at": _text(a)} for v, n, c, a in rows}


def _text(moment: Any) -> str | None:
    """A time as ISO 8601 text (engines hand some back as ``datetime``)."""
    if moment is None or isinstance(moment, str):
        return moment
    return str(moment.isoformat()) if hasattr(moment, "isoformat") else str(moment)


async def status(engine: Engine, directory: str, emit: Emit) -> list[dict[str, Any]]:
    """Every migration with its state; emits one line each."""
    migrations = await anyio.to_thread.run_sync(discover, directory)
    applied = await applied_versions(engine)
    report = []
    for migration in migrations:
        done = applied.get(migration.version)
        state = "pending"
        if done is not None:
            state = "applied" if done["checksum"] == migration.checksum else "changed"
        report.append(
            {
                "version": migration.version,
                "name": migration.name,
                "file": migration.file,
                "state": state,
                "applied_at": done["applied_at"] if done else None,
            }
        )
        note = " (the file changed after it was applied)" if state == "changed" else ""
        await emit("stdout", f"{state:8} {migration.file}{note}")
    missing = sorted(set(applied) - {m.version for m in migrations})
    for version in missing:
        await emit("stdout", f"applied  {version} ({applied[version]['name']}): its file is gone")
    return report


async def up(engine: Engine, directory: str, emit: Emit) -> bool:
    """Apply the pending migrations in order; False after the first that fails."""
    migrations = await anyio.to_thread.run_sync(discover, directory)
    applied = await applied_versions(engine)
    pending = [m for m in migrations if m.version not in applied]
    if not pending:
        await emit("stdout", "nothing to apply: every migration is applied")
        return True
    transactional = engine.db_type in TRANSACTIONAL_DDL
    for migration in pending:
        sql = await anyio.to_thread.run_sync(read_sql, directory, migration)
        await emit("stdout", f"applying {migration.file}")
        started = anyio.current_time()
        try:
            if transactional:
                await _run(engine, "BEGIN")
            if sql.strip():
                await _run(engine, sql)
            await _run(
                engine,
                INSERT_TRACKING[engine.db_type],
                [migration.version, migration.name[:255], migration.checksum],
            )
            if transactional:
                await _run(engine, "COMMIT")
        except DatabaseError as error:
            if transactional:
                with contextlib.suppress(DatabaseError):  # a gone connection rolled back
                    await _run(engine, "ROLLBACK")
            await emit("stderr", f"failed   {migration.file}: {error.message}")
            return False
        elapsed = (anyio.current_time() - started) * 1000
        await emit("stdout", f"applied  {migration.file} ({elapsed:.0f} ms)")
    return True
