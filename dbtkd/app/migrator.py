"""``/ws/migrator``: run a migration command, or the built-in ``.sql`` runner, and stream it.

When a client connects it gets ``{"type": "snapshot", "running": [...], "recent": [...]}``
(migration jobs of every window). Then it sends one of:

- ``{"type": "run", "connection_id", "argv": [...], "cwd": "/abs/project"}``: ``argv`` runs
  as given (no shell: ``;`` and ``$(...)`` are plain characters) in ``cwd``, in a process
  group of its own, with ``DATABASE_URL`` for the connection in its environment (and
  ``PYTHONUNBUFFERED=1``, so Python tools print as they go);
- ``{"type": "sql", "action": "status" | "up", "connection_id", "directory": "/abs/dir"}``:
  the built-in runner of numbered ``.sql`` files (``sqlmigrations``);
- ``{"type": "cancel"}``: kill the running command's process group (and reap it).

and receives ``{"type": "started", "job_id", "pid"}``, ``{"type": "output", "stream":
"stdout" | "stderr", "line"}`` as each line is written, ``{"type": "status", "migrations":
[...]}`` (``sql status``) and ``{"type": "exit", "job_id", "code", "status", "error"}``. One
run at a time per socket. A client that disconnects cancels its run. Each run is a job of kind
``migration``: listed by ``dbtkctl stop``, cancelled by a stop, recorded in ``jobs.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import urllib.parse
from typing import Any, TypeGuard

import anyio
from anyio.abc import ObjectSendStream, TaskGroup
from starlette.websockets import WebSocket

from dbtkd.app.backups import ProfileLookup
from dbtkd.app.children import child_environment, spawn
from dbtkd.app.db.engine import DatabaseError
from dbtkd.app.db.profiles import Profile, ProfileNotFoundError
from dbtkd.app.db.sessions import engine_class
from dbtkd.app.duplex import DuplexStream, Inbox
from dbtkd.app.jobs import JobFailed, Jobs, RunningJob, new_id, public_view
from dbtkd.app.responses import describe
from dbtkd.app.sqlmigrations import MigrationError, status, up
from dbtkd.app.streams import Streams

MAX_ARGS = 1000
MAX_ARG_CHARS = 32 * 1024
# A line longer than this is sent in pieces (a message must stay far below the 1 MiB cap).
MAX_LINE_BYTES = 64 * 1024
# Output lines waiting for the socket; past this the command waits (pipes fill, it blocks).
OUTPUT_BUFFER = 256
RECENT_RUNS = 10
CLIENT_LEFT = "cancelled: the client disconnected"
CANCELLED = "cancelled by the client"


def database_url(profile: Profile) -> str:
    """``postgresql://user:password@host:port/db`` (``mysql://``, ``sqlite:////abs/path``)."""
    if profile.db_type == "sqlite":
        return "sqlite:///" + (profile.database or "")
    quote = urllib.parse.quote
    user = quote(profile.username or "", safe="")
    if profile.password:
        user += ":" + quote(profile.password, safe="")
    host = profile.host or "localhost"
    if ":" in host:
        host = f"[{host}]"  # IPv6
    return (
        f"{profile.db_type}://{user}@{host}:{profile.port}/{quote(profile.database or '', safe='')}"
    )


def is_absolute_dir(path: object) -> TypeGuard[str]:
    return isinstance(path, str) and os.path.isabs(path) and os.path.isdir(path)


def _error(error: str, detail: str) -> dict[str, Any]:
    return {"type": "error", "error": error, "detail": detail}


def parse_run(message: dict[str, Any]) -> tuple[list[str], str] | dict[str, Any]:
    """(argv, cwd) of a ``run`` message, or the error message to send back."""
    argv = message.get("argv")
    if (
        not isinstance(argv, list)
        or not 0 < len(argv) <= MAX_ARGS
        or not all(isinstance(a, str) and len(a) <= MAX_ARG_CHARS and "\x00" not in a for a in argv)
        or not argv[0]
    ):
        return _error(
            "invalid_params",
            f"expected argv to be a list of 1-{MAX_ARGS} strings (the program first; no shell); "
            f"got {describe(json.dumps(argv))}",
        )
    cwd = message.get("cwd")
    if not is_absolute_dir(cwd):
        return _error(
            "invalid_params",
            f"expected cwd to be the absolute path of an existing directory; got {cwd!r:.80}",
        )
    return argv, cwd


class Migrator(DuplexStream):
    """The ``/ws/migrator`` endpoint."""

    def __init__(self, streams: Streams, jobs: Jobs, profile_of: ProfileLookup) -> None:
        super().__init__(streams, "migrator", self.session)
        self.jobs = jobs
        self.profile_of = profile_of

    async def session(self, websocket: WebSocket, inbox: Inbox) -> None:
        out_send, out_receive = anyio.create_memory_object_stream[dict[str, Any]](OUTPUT_BUFFER)
        current: list[str] = []  # the job id of this socket's run, while it runs

        async def forward() -> None:
            async for message in out_receive:
                await websocket.send_text(json.dumps(message))

        records = await self.jobs.records("migration")
        await websocket.send_text(
            json.dumps(
                {
                    "type": "snapshot",
                    "running": [
                        public_view(r) for r in records if r["status"] in ("pending", "in_progress")
                    ],
                    "recent": [
                        public_view(r) for r in records if r["status"] in ("completed", "failed")
                    ][:RECENT_RUNS],
                }
            )
        )
        try:
            async with out_send, out_receive, anyio.create_task_group() as group:
                group.start_soon(forward)
                async for raw in inbox:
                    reply = await self._handle(raw, current, out_send, group)
                    if reply is not None:
                        await out_send.send(reply)
                group.cancel_scope.cancel()  # the client left
        finally:
            with anyio.CancelScope(shield=True):
                for job_id in current:
                    await self.jobs.cancel(job_id, CLIENT_LEFT)

    async def _handle(
        self,
        raw: str | bytes,
        current: list[str],
        out: ObjectSendStream[dict[str, Any]],
        group: TaskGroup,
    ) -> dict[str, Any] | None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("type") not in ("run", "sql", "cancel"):
            return _error(
                "invalid_request",
                'expected {"type": "run" | "sql" | "cancel", ...}; got ' + describe(raw),
            )
        if message["type"] == "cancel":
            if not current:
                return _error("not_running", "expected a running command to cancel; none runs")
            await self.jobs.cancel(current[0], CANCELLED)
            return None
        if current:
            return _error(
                "busy", f"a run ({current[0]}) is in progress; cancel it or wait for its exit"
            )
        connection_id = message.get("connection_id")
        try:
            if not isinstance(connection_id, str):
                raise ProfileNotFoundError(connection_id)
            profile = await self.profile_of(connection_id)
        except ProfileNotFoundError:
            return _error(
                "not_found",
                f"expected connection_id of a saved connection; got {connection_id!r:.60}",
            )
        if message["type"] == "run":
            parsed = parse_run(message)
            if isinstance(parsed, dict):
                return parsed
            argv, cwd = parsed
            record = {
                "id": new_id(),
                "kind": "migration",
                "name": " ".join(argv)[:200],
                "argv": argv,
                "cwd": cwd,
                "connection_id": profile.id,
                "exit_code": None,
            }
            body = self._command(profile, argv, cwd, out)
        else:
            action, directory = message.get("action"), message.get("directory")
            if action not in ("status", "up"):
                return _error(
                    "invalid_params", f"expected action 'status' or 'up'; got {action!r:.40}"
                )
            if not is_absolute_dir(directory):
                return _error(
                    "invalid_params",
                    "expected directory to be the absolute path of a folder of .sql files; got "
                    f"{directory!r:.80}",
                )
            record = {
                "id": new_id(),
                "kind": "migration",
                "name": f"sql {action} {directory}"[:200],
                "directory": directory,
                "action": action,
                "connection_id": profile.id,
                "exit_code": None,
            }
            body = self._sql(profile, action, directory, out)
        job = await self.jobs.submit(record, body, limited=False)
        current.append(job["id"])
        group.start_soon(self._report_exit, job["id"], current, out)
        return None

    async def _report_exit(
        self, job_id: str, current: list[str], out: ObjectSendStream[dict[str, Any]]
    ) -> None:
        record = await self.jobs.wait(job_id) or {}
        with contextlib.suppress(ValueError):
            current.remove(job_id)
        await out.send(
            {
                "type": "exit",
                "job_id": job_id,
                "code": record.get("exit_code"),
                "status": record.get("status"),
                "error": record.get("error"),
            }
        )

    def _command(
        self, profile: Profile, argv: list[str], cwd: str, out: ObjectSendStream[dict[str, Any]]
    ) -> Any:
        async def run(job: RunningJob) -> dict[str, Any]:
            env = child_environment(
                {"DATABASE_URL": database_url(profile), "PYTHONUNBUFFERED": "1"}
            )
            try:
                child = await spawn(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            except OSError as error:
                raise JobFailed(f"cannot start {argv[0]}: {error.strerror or error}") from None
            await job.add_child(child)
            await out.send({"type": "started", "job_id": job.id, "pid": child.pid})
            async with anyio.create_task_group() as group:
                group.start_soon(_lines, child.process.stdout, "stdout", out)
                group.start_soon(_lines, child.process.stderr, "stderr", out)
            code = await child.wait()
            job.record["exit_code"] = code
            if code != 0:
                raise JobFailed(f"{argv[0]} exited with status {code}")
            return {"exit_code": 0}

        return run

    def _sql(
        self, profile: Profile, action: str, directory: str, out: ObjectSendStream[dict[str, Any]]
    ) -> Any:
        async def emit(stream: str, line: str) -> None:
            await out.send({"type": "output", "stream": stream, "line": line})

        async def run(job: RunningJob) -> dict[str, Any]:
            await out.send({"type": "started", "job_id": job.id, "pid": None})
            try:
                engine = await engine_class(profile.db_type).open(profile, "migrator")
            except DatabaseError as error:
                job.record["exit_code"] = 1
                await emit("stderr", error.message)
                raise JobFailed(error.message) from None
            try:
                if action == "status":
                    report = await status(engine, directory, emit)
                    await out.send({"type": "status", "migrations": report})
                    ok = True
                else:
                    ok = await up(engine, directory, emit)
            except (MigrationError, DatabaseError, OSError, UnicodeDecodeError) as error:
                message = getattr(error, "message", None) or str(error)
                await emit("stderr", message)
                job.record["exit_code"] = 1
                raise JobFailed(message) from None
            finally:
                await engine.close()
            job.record["exit_code"] = 0 if ok else 1
            if not ok:
                raise JobFailed("a migration failed (see its output)")
            return {"exit_code": 0}

        return run


async def _lines(
    stream: asyncio.StreamReader | None, name: str, out: ObjectSendStream[dict[str, Any]]
) -> None:
    """Send each line of ``stream`` as it arrives (a long line in pieces)."""
    if stream is None:
        return
    while True:
        try:
            raw = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as partial:
            raw = partial.partial  # the last line, without its newline, at EOF
        except asyncio.LimitOverrunError as over:
            raw = await stream.readexactly(min(over.consumed, MAX_LINE_BYTES) or 1)
        if not raw:
            return
        text = raw.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
        await out.send({"type": "output", "stream": name, "line": text})
