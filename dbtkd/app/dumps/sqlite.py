"""SQLite backups: the online backup API for a full backup, an SQL script for a partial one.

A full backup (``.sqlite3``, or ``.sqlite3.gz``) is a page-by-page copy made with SQLite's
online backup API, consistent even while the app writes to the database; restoring one copies
it back the same way, replacing the whole target database. Schema-only, data-only and
per-table backups are SQL scripts (``.sql``/``.sql.gz``) in one transaction: ``DROP TABLE IF
EXISTS`` and ``CREATE`` for the tables they cover (not for data-only ones, whose rows are
added to the existing tables), then ``INSERT``s, indexes, triggers and (schema-only) views.
Restoring a script runs it statement by statement; an error rolls all of it back.

No tool is needed: it is all the standard library's ``sqlite3``, in worker threads that check
the job's stop flag between steps, so a cancel takes effect within one step.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

from dbtkd.app.db.profiles import Profile
from dbtkd.app.dumps.base import (
    BackupPlan,
    ByteCounter,
    Dumper,
    Sink,
    Workspace,
    hash_fd,
    is_gzip,
    progress_from,
)
from dbtkd.app.dumps.pipes import chunks, copy_out, read_all
from dbtkd.app.jobs import JobFailed, RunningJob

# Pages copied per backup step (4096 pages of 4 KiB = 16 MiB): a cancel or a progress figure
# waits at most one step, and each step costs one lock of the source.
PAGES_PER_STEP = 4096
LOCK_TIMEOUT_SECONDS = 10.0
SCRIPT_HEADER = b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"
SCRIPT_FOOTER = b"COMMIT;\n"


class _Stopped(Exception):
    """Raised from the backup API's progress callback to abort a cancelled copy."""


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def copy_database(source: str, target: str, counter: ByteCounter, stop: threading.Event) -> None:
    """Copy the database ``source`` over ``target`` with the online backup API."""

    def progress(status: int, remaining: int, total: int) -> None:
        counter.total, counter.done = total, total - remaining
        if stop.is_set():
            raise _Stopped

    try:
        src = sqlite3.connect(source, timeout=LOCK_TIMEOUT_SECONDS)
    except sqlite3.Error as error:
        raise JobFailed(f"cannot open SQLite database {source}: {error}") from None
    try:
        dst = sqlite3.connect(target, timeout=LOCK_TIMEOUT_SECONDS)
        try:
            src.backup(dst, pages=PAGES_PER_STEP, progress=progress)
        finally:
            dst.close()
    except _Stopped:
        raise JobFailed("cancelled") from None
    except sqlite3.Error as error:
        raise JobFailed(f"SQLite backup of {source} failed: {error}") from None
    finally:
        src.close()


def dump_script(
    source: str,
    plan: BackupPlan,
    write: Callable[[bytes], None],
    counter: ByteCounter,
    stop: threading.Event,
) -> None:
    """Write the SQL script of a schema-only, data-only or per-table backup."""
    schema = plan.backup_type in ("schema_only", "tables")
    data = plan.backup_type in ("data_only", "tables")
    try:
        connection = sqlite3.connect(source, timeout=LOCK_TIMEOUT_SECONDS)
    except sqlite3.Error as error:
        raise JobFailed(f"cannot open SQLite database {source}: {error}") from None
    connection.text_factory = bytes  # text that is not UTF-8 is copied as it is
    try:
        connection.execute("BEGIN")  # one snapshot for the whole script
        tables = [
            (name.decode(), sql)
            for name, sql in connection.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
            )
        ]
        if plan.backup_type == "tables":
            known = {name for name, _ in tables}
            missing = [name for name in plan.tables if name not in known]
            if missing:
                raise JobFailed(f"no table named {missing[0]!r} in {source}")
            tables = [(name, sql) for name, sql in tables if name in plan.tables]
        counter.total = len(tables) or 1
        write(SCRIPT_HEADER)
        for name, sql in tables:
            if stop.is_set():
                raise JobFailed("cancelled")
            if schema:
                write(f"DROP TABLE IF EXISTS {quote(name)};\n".encode() + sql + b";\n")
            if data:
                _write_rows(connection, name, write)
            counter.done += 1
        if data:
            _write_sequences(connection, [name for name, _ in tables], write)
        if schema:
            selected = [name for name, _ in tables]
            marks = ",".join("?" * len(selected))
            views = " OR type = 'view'" if plan.backup_type == "schema_only" else ""
            for (sql,) in connection.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND ("
                f"(type IN ('index', 'trigger') AND tbl_name IN ({marks})){views})"
                " ORDER BY type = 'view', name",
                selected,
            ):
                write(sql + b";\n")
        write(SCRIPT_FOOTER)
    except sqlite3.Error as error:
        raise JobFailed(f"reading {source} failed: {error}") from None
    finally:
        connection.close()


def _write_rows(connection: sqlite3.Connection, table: str, write: Callable[[bytes], None]) -> None:
    columns = [row[1].decode() for row in connection.execute(f"PRAGMA table_info({quote(table)})")]
    values = " || ',' || ".join(f"quote({quote(column)})" for column in columns)
    prefix = f"INSERT INTO {quote(table)} VALUES("
    for (line,) in connection.execute(
        f"SELECT ? || {values} || ');' FROM {quote(table)}", (prefix,)
    ):
        write(line + b"\n")


def _write_sequences(
    connection: sqlite3.Connection, tables: list[str], write: Callable[[bytes], None]
) -> None:
    """AUTOINCREMENT counters of the tables (kept in ``sqlite_sequence``)."""
    if not connection.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
    ).fetchone():
        return
    for name, seq in connection.execute("SELECT name, seq FROM sqlite_sequence"):
        if name.decode() in tables:
            literal = name.decode().replace("'", "''")
            write(
                f"DELETE FROM sqlite_sequence WHERE name = '{literal}';\n"
                f"INSERT INTO sqlite_sequence VALUES('{literal}', {int(seq)});\n".encode()
            )


def run_script(fd: int, gz: bool, target: str, counter: ByteCounter, stop: threading.Event) -> None:
    """Run an SQL script backup against ``target``, statement by statement; all or nothing."""
    try:
        connection = sqlite3.connect(target, timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None)
    except sqlite3.Error as error:
        raise JobFailed(f"cannot open SQLite database {target}: {error}") from None
    statement, number = "", 0
    try:
        pending = b""
        for data in chunks(fd, gz, counter, stop):
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                statement += line.decode("utf-8", "surrogateescape") + "\n"
                if sqlite3.complete_statement(statement):
                    number += 1
                    connection.execute(statement)
                    statement = ""
        if pending.strip() or statement.strip():
            raise JobFailed("the script ends in the middle of a statement: it was cut short")
    except sqlite3.Error as error:
        raise JobFailed(f"the restore failed at statement {number}: {error}") from None
    finally:
        if connection.in_transaction:
            connection.rollback()
        connection.close()


class SqliteDumper(Dumper):
    db_type = "sqlite"

    def extension(self, plan: BackupPlan) -> str:
        base = ".sqlite3" if plan.backup_type == "full" else ".sql"
        return base + (".gz" if plan.gzip else "")

    @staticmethod
    def _source(profile: Profile) -> str:
        path = profile.database or ""
        if not os.path.isfile(path):
            raise JobFailed(f"SQLite database {path} does not exist")
        return path

    async def backup(
        self, job: RunningJob, profile: Profile, plan: BackupPlan, workspace: Workspace
    ) -> dict[str, Any]:
        source = self._source(profile)
        counter = ByteCounter()
        fd, path = await workspace.output()
        try:
            async with progress_from(job, counter.fraction):
                if plan.backup_type != "full":
                    sink = Sink(fd, gzip=plan.gzip)
                    await anyio.to_thread.run_sync(
                        dump_script, source, plan, sink.write, counter, job.stop_flag
                    )
                    size, sha256 = await anyio.to_thread.run_sync(sink.finish)
                elif plan.gzip:
                    raw_fd, raw_path = await workspace.scratch("raw")
                    os.close(raw_fd)
                    await anyio.to_thread.run_sync(
                        copy_database, source, raw_path, counter, job.stop_flag
                    )
                    size, sha256 = await anyio.to_thread.run_sync(
                        _compress, raw_path, fd, job.stop_flag
                    )
                else:
                    await anyio.to_thread.run_sync(
                        copy_database, source, path, counter, job.stop_flag
                    )
                    size, sha256 = await anyio.to_thread.run_sync(_sync_and_hash, fd)
        finally:
            os.close(fd)
        return {
            "size": size,
            "sha256": sha256,
            "format": self.extension(plan).lstrip("."),
            "server_version": sqlite3.sqlite_version,
        }

    async def restore(
        self, job: RunningJob, profile: Profile, record: dict[str, Any], workspace: Workspace
    ) -> dict[str, Any]:
        target = profile.database or ""
        if not await anyio.Path(target).parent.is_dir():
            raise JobFailed(f"cannot restore into {target}: its directory does not exist")
        name = str(record["file"])
        fd = workspace.open_backup(record)
        counter = ByteCounter(os.fstat(fd).st_size)
        try:
            async with progress_from(job, counter.fraction):
                if ".sqlite3" not in name:
                    await anyio.to_thread.run_sync(
                        run_script, fd, is_gzip(name), target, counter, job.stop_flag
                    )
                    return {"server_version": sqlite3.sqlite_version}
                # The backup API reads a database by path: copy the file (through its
                # descriptor, never a link) to a scratch file first.
                copy_fd, copy_path = await workspace.scratch("restore")
                try:
                    await anyio.to_thread.run_sync(
                        copy_out, fd, is_gzip(name), copy_fd, job.stop_flag, ByteCounter()
                    )
                finally:
                    os.close(copy_fd)
                await anyio.to_thread.run_sync(
                    copy_database, copy_path, target, counter, job.stop_flag
                )
        finally:
            os.close(fd)
        return {"server_version": sqlite3.sqlite_version}

    async def check_format(self, record: dict[str, Any], workspace: Workspace) -> str | None:
        name = str(record["file"])
        fd = workspace.open_backup(record)
        try:
            if ".sqlite3" not in name:
                tail = await anyio.to_thread.run_sync(
                    read_all, fd, is_gzip(name), threading.Event()
                )
                if not tail.endswith(SCRIPT_FOOTER):
                    return "the script does not end with COMMIT: it was cut short"
                return None
            copy_fd, copy_path = await workspace.scratch("verify")
            try:
                await anyio.to_thread.run_sync(
                    copy_out, fd, is_gzip(name), copy_fd, threading.Event(), ByteCounter()
                )
            finally:
                os.close(copy_fd)
            return await anyio.to_thread.run_sync(_integrity_problem, copy_path)
        except JobFailed as error:
            return error.message
        finally:
            os.close(fd)


def _integrity_problem(path: str) -> str | None:
    try:
        connection = sqlite3.connect(path)
        try:
            rows = connection.execute("PRAGMA integrity_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        return f"not a readable SQLite database: {error}"
    found = [str(row[0]) for row in rows]
    return None if found == ["ok"] else "integrity_check: " + "; ".join(found[:5])


def _compress(raw_path: str, fd: int, stop: threading.Event) -> tuple[int, str]:
    sink = Sink(fd, gzip=True)
    with open(raw_path, "rb") as raw:
        while chunk := raw.read(1024 * 1024):
            if stop.is_set():
                raise JobFailed("cancelled")
            sink.write(chunk)
    return sink.finish()


def _sync_and_hash(fd: int) -> tuple[int, str]:
    os.fsync(fd)
    return hash_fd(fd)
