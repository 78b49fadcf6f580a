"""PostgreSQL backups: ``pg_dump`` (custom format) and ``pg_restore``, of the server's version.

The backup is one custom-format archive (``.dump``), compressed by ``pg_dump`` itself when
``gzip`` is asked (``--compress=6``, else ``0``), written straight from the tool into the
backup file. ``pg_restore --single-transaction`` loads it: all or nothing. Except for a
data-only backup it runs ``--clean --if-exists``, so the objects in the backup replace those of
the same name; ``--no-owner`` makes the restoring user own them.

Connection details go in ``--dbname`` as a quoted conninfo string (so a database named
``a=b`` stays a name); the password goes only in a 0600 ``PGPASSFILE`` made for that child (or,
for a password with a newline, which a passfile cannot hold, the child's own ``PGPASSWORD``).
Progress: the tables ``pg_dump --verbose`` reports dumped; for a restore, how far
``pg_restore`` has read its input (``/proc/PID/fdinfo/0``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread

from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError
from dbtkd.app.db.profiles import Profile
from dbtkd.app.db.sessions import engine_class
from dbtkd.app.dumps.base import (
    BackupPlan,
    ByteCounter,
    Dumper,
    ToolOutput,
    Workspace,
    fdinfo_position,
    hash_fd,
    progress_from,
)
from dbtkd.app.jobs import JobFailed, RunningJob
from dbtkd.app.programs import child_environment, secret_file, spawn
from dbtkd.app.tools import Tool, ToolError, pg_server_major

# How long a tool may take to reach the server before it gives up (libpq's connect_timeout).
CONNECT_TIMEOUT_SECONDS = 10
COUNT_TABLES = """
SELECT current_setting('server_version_num')::int, current_setting('server_version'),
       (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema'
           AND n.nspname NOT LIKE 'pg\\_%')
"""
DUMPING_TABLE = "dumping contents of table"


def conninfo(profile: Profile, application: str) -> str:
    """A libpq conninfo string without the password; every value single-quoted."""
    values = {
        "host": profile.host,
        "port": str(profile.port) if profile.port else None,
        "user": profile.username,
        "dbname": profile.database or profile.username,
        "application_name": application,
        "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
    }
    return " ".join(f"{key}={quote_conninfo(value)}" for key, value in values.items() if value)


def quote_conninfo(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def passfile_line(password: str) -> str:
    """One ``.pgpass`` line matching any server (the file is this child's alone)."""
    return "*:*:*:*:" + password.replace("\\", "\\\\").replace(":", "\\:") + "\n"


def table_pattern(name: str) -> str:
    """``schema.table`` or ``table`` as a ``pg_dump --table`` pattern matched literally
    (inside double quotes, ``*``, ``?`` and ``.`` are not wildcards)."""
    schema, dot, table = name.partition(".")
    parts = [schema, table] if dot else [name]
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


class PostgresDumper(Dumper):
    db_type = "postgresql"

    def extension(self, plan: BackupPlan) -> str:
        return ".dump"

    async def _server(self, profile: Profile) -> tuple[str, str, int]:
        """(major version, full version, number of tables) of the server behind ``profile``."""
        try:
            engine = await engine_class("postgresql").open(profile, "backup")
        except DatabaseError as error:
            raise JobFailed(error.message) from None
        try:
            result = await engine.execute(
                COUNT_TABLES, None, limit=1, offset=0, time_limit=METADATA_TIMEOUT
            )
        except DatabaseError as error:
            raise JobFailed(error.message) from None
        finally:
            await engine.close()
        number, version, tables = result.rows[0]
        return pg_server_major(int(number)), str(version), int(tables)

    async def _tool(self, name: str, major: str) -> Tool:
        try:
            return await self.toolbox.postgresql(name, major)
        except ToolError as error:
            raise JobFailed(str(error)) from None

    @contextlib.contextmanager
    def _environment(self, profile: Profile) -> Iterator[dict[str, str]]:
        password = profile.password or ""
        if "\n" in password or "\r" in password:
            yield child_environment({"PGPASSWORD": password})
            return
        with secret_file(self.secrets_dir, passfile_line(password), suffix=".pgpass") as path:
            yield child_environment({"PGPASSFILE": path})

    async def backup(
        self, job: RunningJob, profile: Profile, plan: BackupPlan, workspace: Workspace
    ) -> dict[str, Any]:
        major, version, table_count = await self._server(profile)
        pg_dump = await self._tool("pg_dump", major)
        argv = [
            pg_dump.path,
            "--format=custom",
            f"--compress={6 if plan.gzip else 0}",
            "--verbose",
            "--no-password",
        ]
        if plan.backup_type == "schema_only":
            argv.append("--schema-only")
        elif plan.backup_type == "data_only":
            argv.append("--data-only")
        elif plan.backup_type == "tables":
            argv += [f"--table={table_pattern(name)}" for name in plan.tables]
            argv.append("--strict-names")  # a table that does not exist is an error
            table_count = len(plan.tables)
        argv.append(f"--dbname={conninfo(profile, 'dbtk-backup')}")

        dumped = ByteCounter(max(table_count, 1))

        def on_line(line: str) -> None:
            if DUMPING_TABLE in line:
                dumped.done += 1

        output = ToolOutput(on_line)
        fd, _ = await workspace.output()
        try:
            with self._environment(profile) as env:
                child = await spawn(argv, env=env, stdout=fd, stderr=asyncio.subprocess.PIPE)
                await job.add_child(child)
                async with progress_from(job, dumped.fraction):
                    await output.read(child.process.stderr)
                    code = await child.wait()
            if code != 0:
                raise JobFailed(output.failure("pg_dump", code, interesting=_is_error))
            size, sha256 = await anyio.to_thread.run_sync(_sync_and_hash, fd)
        finally:
            os.close(fd)
        return {
            "size": size,
            "sha256": sha256,
            "format": "pg_custom",
            "server_version": version,
            "server_major": major,
            "tool": pg_dump.version,
        }

    async def restore(
        self, job: RunningJob, profile: Profile, record: dict[str, Any], workspace: Workspace
    ) -> dict[str, Any]:
        major, version, _ = await self._server(profile)
        pg_restore = await self._tool("pg_restore", major)
        argv = [
            pg_restore.path,
            "--verbose",
            "--no-password",
            "--single-transaction",  # all or nothing (implies --exit-on-error)
            "--no-owner",
        ]
        if record.get("backup_type") != "data_only":
            argv += ["--clean", "--if-exists"]
        argv.append(f"--dbname={conninfo(profile, 'dbtk-restore')}")
        fd = workspace.open_backup(record)
        try:
            size = os.fstat(fd).st_size
            output = ToolOutput()
            with self._environment(profile) as env:
                child = await spawn(argv, env=env, stdin=fd, stderr=asyncio.subprocess.PIPE)
                await job.add_child(child)

                def fraction() -> float:
                    return (fdinfo_position(child.pid, 0) or 0) / size if size else 0.0

                async with progress_from(job, fraction):
                    await output.read(child.process.stderr)
                    code = await child.wait()
        finally:
            os.close(fd)
        if code != 0:
            raise JobFailed(output.failure("pg_restore", code, interesting=_is_error))
        return {"server_version": version}

    async def check_format(self, record: dict[str, Any], workspace: Workspace) -> str | None:
        major = str(record.get("server_major") or "")
        if not major:
            return "the backup record does not say which PostgreSQL version wrote it"
        try:
            pg_restore = await self.toolbox.postgresql("pg_restore", major)
        except ToolError as error:
            return str(error)
        fd = workspace.open_backup(record)
        try:
            child = await spawn(
                [pg_restore.path, "--list"],
                env=child_environment(),
                stdin=fd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        finally:
            os.close(fd)
        try:
            assert child.process.stdout is not None
            assert child.process.stderr is not None
            listing, errors = await asyncio.gather(
                child.process.stdout.read(), child.process.stderr.read()
            )
            code = await child.wait()
        finally:
            await child.kill_and_reap()
        if code != 0 or b"Archive created at" not in listing:
            text = errors.decode("utf-8", "replace").strip() or "no table of contents"
            return f"pg_restore --list does not read it: {text}"
        return None


def _is_error(line: str) -> bool:
    return any(mark in line for mark in ("error:", "FATAL", "DETAIL:", "HINT:", "fatal:"))


def _sync_and_hash(fd: int) -> tuple[int, str]:
    os.fsync(fd)  # a completed backup survives a power cut
    return hash_fd(fd)
