"""Helpers for the jobs tests: waiting for jobs, holding a dump tool, streams, child processes.

A backup finishes in milliseconds on a test database, too fast to watch. ``hold_table`` makes
it wait instead: an admin session locks a table (PostgreSQL ``ACCESS EXCLUSIVE``, MariaDB
``LOCK TABLES ... WRITE``), so the dump tool blocks on it, alive and in progress, until the
test lets go. ``dump_children`` finds the worker's child processes through ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import websockets.sync.client
from websockets.typing import Subprotocol

from tests.app.db.conftest import mysql_admin, pg_admin
from tests.app.db.support import Api, DbServer
from tests.support import Daemon, pid_alive, wait_until

FINISHED = ("completed", "failed")


def wait_job(api: Api, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """The job's record once it has finished."""

    def finished() -> dict[str, Any]:
        record: dict[str, Any] = api.ok("GET", f"/api/v1/jobs/{job_id}")
        return record if record["status"] in FINISHED else {}

    return wait_until(finished, timeout, 0.02, f"job {job_id} to finish")


def backup(api: Api, connection: str, **options: Any) -> dict[str, Any]:
    """Start a backup and return its record once finished."""
    started = api.ok("POST", "/api/v1/backups", {"connection_id": connection, **options}, 202)
    assert started["status"] == "pending"
    return wait_job(api, started["id"])


def restore(api: Api, backup_id: str, **options: Any) -> dict[str, Any]:
    """Restore as dbtkd's clients do (``?wait=false``: the job at once), then wait for it."""
    started = api.ok("POST", f"/api/v1/backups/{backup_id}/restore?wait=false", options, 202)
    assert started["kind"] == "restore"
    return wait_job(api, started["id"])


def connect_stream(daemon: Daemon, path: str) -> websockets.sync.client.ClientConnection:
    return websockets.sync.client.connect(
        f"ws://127.0.0.1:{daemon.port}{path}",
        subprotocols=[Subprotocol("dbtk.v1"), Subprotocol(f"dbtk.bearer.{daemon.token}")],
        open_timeout=10,
    )


def receive(socket: websockets.sync.client.ClientConnection, timeout: float = 10) -> Any:
    return json.loads(socket.recv(timeout=timeout))


def receive_until(
    socket: websockets.sync.client.ClientConnection, wanted: Any, timeout: float = 20
) -> list[Any]:
    """Messages up to and including the first for which ``wanted(message)`` is true."""
    seen = []
    while True:
        message = receive(socket, timeout)
        seen.append(message)
        if wanted(message):
            return seen


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().decode().rpartition(")")[2].split()
    except OSError:
        return None


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return [arg.decode("utf-8", "replace") for arg in file.read().split(b"\0") if arg]


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as file:
        pairs = [entry.decode("utf-8", "replace") for entry in file.read().split(b"\0") if entry]
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields and fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(name))
    return found


def dump_child(worker_pid: int, tool: str) -> int:
    """The pid of the worker's child running ``tool`` (waits for it to appear)."""

    def find() -> int:
        for pid in children_of(worker_pid):
            with contextlib.suppress(OSError):
                args = cmdline(pid)  # empty between fork and exec
                # Not the ``--version`` probe that picks the tool before the job runs it.
                if args and os.path.basename(args[0]) == tool and "--version" not in args:
                    return pid
        return 0

    found: int = wait_until(find, 20, 0.02, f"a {tool} child of worker {worker_pid}")
    return found


def gone(pid: int) -> bool:
    return not pid_alive(pid)


@contextlib.contextmanager
def hold_table(server: DbServer, table: str) -> Iterator[None]:
    """Lock ``table`` from an admin session until the block ends: a dump waits for it."""
    if server.db_type == "postgresql":
        admin = pg_admin(server.database)
        try:
            admin.execute("BEGIN")
            admin.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            yield
        finally:
            admin.close()  # ends the session: the lock goes with it
        return
    connection = mysql_admin(server.database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLES `{table}` WRITE")
        yield
    finally:
        connection.close()


def backup_files(daemon: Daemon) -> list[str]:
    directory = daemon.home / "data" / "backups"
    return sorted(os.listdir(directory)) if directory.exists() else []


def stored_jobs(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """``jobs.json`` as the daemon left it (read while it is stopped)."""
    document = json.loads((daemon.home / "data" / "jobs.json").read_text())
    return {record["id"]: record for record in document["jobs"]}


def close_of(socket: websockets.sync.client.ClientConnection, timeout: float = 10) -> Any:
    """Read (and drop) frames until the server closes; the ``ConnectionClosed`` it raised."""
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            socket.recv(timeout=timeout)
    except ConnectionClosed as closed:
        return closed
