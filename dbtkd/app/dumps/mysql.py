"""MariaDB and MySQL backups: ``mariadb-dump``/``mysqldump`` and the ``mariadb``/``mysql`` client.

The backup is the dump tool's SQL (``.sql``, or ``.sql.gz`` compressed by the worker as it
arrives), taken with ``--single-transaction`` (a consistent InnoDB snapshot without locking
the tables), with routines, triggers and binary columns as hex. It names no database, so it
restores into any. Restoring pipes it into the client with the target connection's database
selected; ``DROP TABLE IF EXISTS`` before each ``CREATE TABLE`` makes the tables of the backup
replace those of the same name. MariaDB and MySQL commit DDL as they go, so a restore that
fails half-way is not rolled back (PostgreSQL's is).

Host, port and user are arguments; the password goes in a 0600 ``--defaults-extra-file``
written for that child (``MYSQL_PWD`` is deprecated) and removed once it exits. The client
reads the usual option files too: a ``password`` in ``~/.my.cnf`` would win over it.
Progress: the tables the dump tool reports (``--verbose``); for a restore, bytes fed to it.
"""

from __future__ import annotations

import asyncio
import os
import threading
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
    Sink,
    ToolOutput,
    Workspace,
    is_gzip,
    progress_from,
)
from dbtkd.app.dumps.pipes import feed, pump, read_all
from dbtkd.app.jobs import JobFailed, RunningJob
from dbtkd.app.programs import child_environment, secret_file, spawn
from dbtkd.app.tools import Tool, ToolError

SERVER_FACTS = (
    "SELECT VERSION(), (SELECT COUNT(*) FROM information_schema.tables"
    " WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE')"
)
TABLE_LINE = "-- Retrieving table structure for table"
DUMP_COMPLETED = b"-- Dump completed"
# Option-file escapes understood by the MariaDB and MySQL clients (my_default.c).
_OPTION_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def defaults_file(password: str | None) -> str:
    """An option file holding only the password (quoted and escaped), for ``[client]``."""
    if not password:
        return "[client]\n"
    escaped = "".join(_OPTION_ESCAPES.get(char, char) for char in password)
    return f'[client]\npassword="{escaped}"\n'


class MysqlDumper(Dumper):
    db_type = "mysql"

    def extension(self, plan: BackupPlan) -> str:
        return ".sql.gz" if plan.gzip else ".sql"

    @staticmethod
    def _database(profile: Profile) -> str:
        if not profile.database:
            raise JobFailed(
                f"{profile.describe()} names no database; set the connection's database to "
                "back it up or restore into it"
            )
        return profile.database

    async def _server(self, profile: Profile) -> tuple[str, int]:
        """(``VERSION()``, number of tables in the connection's database)."""
        try:
            engine = await engine_class("mysql").open(profile, "backup")
        except DatabaseError as error:
            raise JobFailed(error.message) from None
        try:
            result = await engine.execute(
                SERVER_FACTS, None, limit=1, offset=0, time_limit=METADATA_TIMEOUT
            )
        except DatabaseError as error:
            raise JobFailed(error.message) from None
        finally:
            await engine.close()
        version, tables = result.rows[0]
        return str(version), int(tables)

    async def _tool(self, role: str, version: str) -> Tool:
        try:
            return await self.toolbox.mysql(role, version)
        except ToolError as error:
            raise JobFailed(str(error)) from None

    @staticmethod
    def _connection_args(tool: Tool, option_file: str, profile: Profile) -> list[str]:
        # --defaults-extra-file must come first; TCP even for "localhost", as the API's driver.
        return [
            tool.path,
            f"--defaults-extra-file={option_file}",
            f"--host={profile.host}",
            f"--port={profile.port}",
            "--protocol=TCP",
            f"--user={profile.username}",
        ]

    async def backup(
        self, job: RunningJob, profile: Profile, plan: BackupPlan, workspace: Workspace
    ) -> dict[str, Any]:
        database = self._database(profile)
        version, table_count = await self._server(profile)
        dump = await self._tool("dump", version)
        options = ["--single-transaction", "--hex-blob", "--no-tablespaces", "--verbose"]
        if plan.backup_type == "schema_only":
            options += ["--no-data", "--routines", "--triggers"]
        elif plan.backup_type == "data_only":
            options += ["--no-create-info", "--skip-triggers"]
        else:
            options += ["--routines", "--triggers"]
        names = list(plan.tables) if plan.backup_type == "tables" else []
        if names:
            table_count = len(names)

        tables = ByteCounter(max(table_count, 1))

        def on_line(line: str) -> None:
            if line.startswith(TABLE_LINE):
                tables.done += 1

        output = ToolOutput(on_line)
        fd, _ = await workspace.output()
        read_fd, write_fd = os.pipe()
        try:
            sink = Sink(fd, gzip=plan.gzip)
            with secret_file(
                self.secrets_dir, defaults_file(profile.password), suffix=".cnf"
            ) as cnf:
                argv = [
                    *self._connection_args(dump, cnf, profile),
                    *options,
                    "--",
                    database,
                    *names,
                ]
                try:
                    child = await spawn(
                        argv,
                        env=child_environment(),
                        stdout=write_fd,
                        stderr=asyncio.subprocess.PIPE,
                    )
                finally:
                    os.close(write_fd)
                await job.add_child(child)
                async with progress_from(job, tables.fraction), anyio.create_task_group() as group:
                    group.start_soon(output.read, child.process.stderr)
                    await anyio.to_thread.run_sync(pump, read_fd, sink, ByteCounter())
                code = await child.wait()
            if code != 0:
                raise JobFailed(output.failure(dump.name, code, interesting=_is_error))
            size, sha256 = await anyio.to_thread.run_sync(sink.finish)
        finally:
            os.close(read_fd)
            os.close(fd)
        return {
            "size": size,
            "sha256": sha256,
            "format": "sql.gz" if plan.gzip else "sql",
            "server_version": version,
            "tool": dump.version,
        }

    async def restore(
        self, job: RunningJob, profile: Profile, record: dict[str, Any], workspace: Workspace
    ) -> dict[str, Any]:
        database = self._database(profile)
        version, _ = await self._server(profile)
        client = await self._tool("client", version)
        fd = workspace.open_backup(record)
        output = ToolOutput()
        try:
            fed = ByteCounter(os.fstat(fd).st_size)
            with secret_file(
                self.secrets_dir, defaults_file(profile.password), suffix=".cnf"
            ) as cnf:
                read_fd, write_fd = os.pipe()
                try:
                    child = await spawn(
                        [*self._connection_args(client, cnf, profile), f"--database={database}"],
                        env=child_environment(),
                        stdin=read_fd,
                        stderr=asyncio.subprocess.PIPE,
                    )
                except BaseException:
                    os.close(write_fd)
                    raise
                finally:
                    os.close(read_fd)
                await job.add_child(child)
                gz = is_gzip(str(record["file"]))
                async with progress_from(job, fed.fraction), anyio.create_task_group() as group:
                    group.start_soon(output.read, child.process.stderr)
                    await anyio.to_thread.run_sync(feed, fd, gz, write_fd, fed, job.stop_flag)
                code = await child.wait()
        finally:
            os.close(fd)
        if code != 0:
            raise JobFailed(output.failure(client.name, code, interesting=_is_error))
        return {"server_version": version}

    async def check_format(self, record: dict[str, Any], workspace: Workspace) -> str | None:
        fd = workspace.open_backup(record)
        try:
            tail = await anyio.to_thread.run_sync(
                read_all, fd, is_gzip(str(record["file"])), threading.Event()
            )
        except JobFailed as error:
            return error.message
        finally:
            os.close(fd)
        if DUMP_COMPLETED not in tail:
            return "the dump does not end with '-- Dump completed': it was cut short"
        return None


def _is_error(line: str) -> bool:
    return not line.startswith("--") and bool(line.strip())
