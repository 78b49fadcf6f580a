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

The DB Toolkit UI's frame has no ``type`` (UI-CONTRACT §14): ``{"command": "makemigrations
\"add email\"", "cwd", "dbUrl", "connection_id"?}`` runs the Migrator CLI, the program
``migrator`` on ``PATH`` and never another, with the command split as a shell would split
quoted words. ``DATABASE_URL`` is built here from the saved connection, with its stored
password; ``dbUrl`` (whose password the UI no longer has) only finds that connection when
``connection_id`` is missing, and is never logged. It answers ``{"type": "stdout" | "stderr",
"data": line}``, then ``{"type": "exit", "code", "success"}`` or ``{"type": "error", "data":
sentence}``, and closes the socket with 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import urllib.parse
from typing import Any, TypeGuard

import anyio
from anyio.abc import ObjectSendStream, TaskGroup
from starlette.websockets import WebSocket

from dbtkd.app.backups import ProfileLookup
from dbtkd.app.db.engine import DatabaseError
from dbtkd.app.db.profiles import (
    DB_TYPE_ALIASES,
    DEFAULT_PORTS,
    Profile,
    ProfileNotFoundError,
    ProfileStore,
)
from dbtkd.app.db.sessions import engine_class
from dbtkd.app.duplex import DuplexStream, Inbox
from dbtkd.app.jobs import JobFailed, Jobs, RunningJob, new_id, public_view
from dbtkd.app.programs import child_environment, spawn
from dbtkd.app.responses import describe
from dbtkd.app.sqlmigrations import MigrationError, status, up
from dbtkd.app.streams import Streams, decode_frame

MAX_ARGS = 1000
MAX_ARG_CHARS = 32 * 1024
# A line longer than this is sent in pieces (a message must stay far below the 1 MiB cap).
MAX_LINE_BYTES = 64 * 1024
# Output lines waiting for the socket; past this the command waits (pipes fill, it blocks).
OUTPUT_BUFFER = 256
RECENT_RUNS = 10
CLIENT_LEFT = "cancelled: the client disconnected"
CANCELLED = "cancelled by the client"
# The only program the UI's frame may run (UI-CONTRACT §14: the Migrator CLI).
MIGRATOR_PROGRAM = "migrator"


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


def same_connection(profile: Profile, url: str) -> bool:
    """Whether ``url`` (the UI's ``dbUrl``) names ``profile``'s database; its password is
    ignored (the UI has none to send)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    scheme = DB_TYPE_ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme != profile.db_type:
        return False
    if profile.db_type == "sqlite":
        return urllib.parse.unquote(parts.path).removeprefix("/") == (profile.database or "")
    return (
        (parts.hostname or "") == (profile.host or "").lower()
        and (port or DEFAULT_PORTS.get(profile.db_type)) == profile.port
        and urllib.parse.unquote(parts.path.removeprefix("/")) == (profile.database or "")
        and urllib.parse.unquote(parts.username or "") == (profile.username or "")
    )


def run_record(profile: Profile, argv: list[str], cwd: str) -> dict[str, Any]:
    """The job record of a command run (either protocol)."""
    return {
        "id": new_id(),
        "kind": "migration",
        "name": " ".join(argv)[:200],
        "argv": argv,
        "cwd": cwd,
        "connection_id": profile.id,
        "exit_code": None,
    }


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
        """A snapshot, then the client's first frame picks the protocol (see the docstring)."""
        records = await self.jobs.records("migration")
        snapshot = {
            "type": "snapshot",
            "running": [
                public_view(r) for r in records if r["status"] in ("pending", "in_progress")
            ],
            "recent": [public_view(r) for r in records if r["status"] in ("completed", "failed")][
                :RECENT_RUNS
            ],
        }
        await websocket.send_text(json.dumps(snapshot))
        try:
            first = await inbox.receive()
        except anyio.EndOfStream:
            return  # the client left without a word
        try:
            message = decode_frame(first)
        except ValueError:
            message = None
        if isinstance(message, dict) and "type" not in message and "command" in message:
            await self.legacy_session(websocket, message)
            return
        await self.dbtkd_session(websocket, inbox, first)

    async def dbtkd_session(self, websocket: WebSocket, inbox: Inbox, first: str | bytes) -> None:
        """dbtkd's own protocol (``run``/``sql``/``cancel``), from the client's first frame on."""
        out_send, out_receive = anyio.create_memory_object_stream[dict[str, Any]](OUTPUT_BUFFER)
        current: list[str] = []  # the job id of this socket's run, while it runs

        async def forward() -> None:
            async for message in out_receive:
                await websocket.send_text(json.dumps(message))

        try:
            async with out_send, out_receive, anyio.create_task_group() as group:
                group.start_soon(forward)
                reply = await self._handle(first, current, out_send, group)
                if reply is not None:
                    await out_send.send(reply)
                async for raw in inbox:
                    reply = await self._handle(raw, current, out_send, group)
                    if reply is not None:
                        await out_send.send(reply)
                group.cancel_scope.cancel()  # the client left
        finally:
            with anyio.CancelScope(shield=True):
                for job_id in current:
                    await self.jobs.cancel(job_id, CLIENT_LEFT)

    async def legacy_session(self, websocket: WebSocket, message: dict[str, Any]) -> None:
        """The UI's protocol: one command, its lines, its exit (or an error), then close."""

        async def error(text: str) -> None:
            await websocket.send_text(json.dumps({"type": "error", "data": text}))

        prepared = await self._legacy_command(message)
        if isinstance(prepared, str):
            await error(prepared)
            return
        profile, argv, cwd = prepared
        out_send, out_receive = anyio.create_memory_object_stream[dict[str, Any]](OUTPUT_BUFFER)
        record = run_record(profile, argv, cwd)
        job_id: str | None = None
        try:
            async with out_send, out_receive, anyio.create_task_group() as group:
                job = await self.jobs.submit(
                    record, self._command(profile, argv, cwd, out_send), limited=False
                )
                job_id = job["id"]
                group.start_soon(self._report_exit, job_id, [job_id], out_send)
                async for frame in out_receive:
                    kind = frame.get("type")
                    if kind == "output":
                        await websocket.send_text(
                            json.dumps({"type": frame["stream"], "data": frame["line"]})
                        )
                    elif kind == "exit":
                        code = frame.get("code")
                        if code is None:
                            await error(str(frame.get("error") or "the command did not run"))
                        else:
                            reply = {"type": "exit", "code": code, "success": code == 0}
                            await websocket.send_text(json.dumps(reply))
                        job_id = None
                        return
        finally:
            if job_id is not None:  # the client left (or the worker stops) while it ran
                with anyio.CancelScope(shield=True):
                    await self.jobs.cancel(job_id, CLIENT_LEFT)

    async def _legacy_command(
        self, message: dict[str, Any]
    ) -> tuple[Profile, list[str], str] | str:
        """(connection, argv, cwd) of the UI's frame, or the sentence its error frame says."""
        command = message.get("command")
        if not isinstance(command, str) or not command.strip():
            return "No command provided"
        try:
            words = shlex.split(command)
        except ValueError as problem:
            return f"expected the command's quotes to be closed: {problem}"
        if len(words) > MAX_ARGS or any("\x00" in w or len(w) > MAX_ARG_CHARS for w in words):
            return f"expected at most {MAX_ARGS} words of at most {MAX_ARG_CHARS} characters"
        program = shutil.which(MIGRATOR_PROGRAM)
        if program is None:
            return f"{MIGRATOR_PROGRAM} binary not found in PATH"
        cwd = message.get("cwd")
        if not is_absolute_dir(cwd):
            return f"expected cwd to be the absolute path of an existing directory; got {cwd!r:.80}"
        connection_id = message.get("connection_id")
        if isinstance(connection_id, str):
            try:
                profile = await self.profile_of(connection_id)
            except ProfileNotFoundError:
                return f"expected connection_id of a saved connection; got {connection_id!r:.60}"
        else:
            url = message.get("dbUrl")
            saved = await ProfileStore(self.jobs.data_dir).all()
            matches = [p for p in saved if isinstance(url, str) and same_connection(p, url)]
            if len(matches) != 1:
                return (
                    f"{'no' if not matches else len(matches)} saved connection(s) match this "
                    "project's database: add connection_id to the migrator frame "
                    "(MigrationsPage.js: connection_id: selectedProject.connectionId)"
                )
            # A list carries no passwords (they may be in the OS keyring): fetch this one's.
            profile = await self.profile_of(matches[0].id)
        return profile, [program, *words], cwd

    async def _handle(
        self,
        raw: str | bytes,
        current: list[str],
        out: ObjectSendStream[dict[str, Any]],
        group: TaskGroup,
    ) -> dict[str, Any] | None:
        try:
            message = decode_frame(raw)  # JSON nested too deep closes the socket (1007)
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
            record = run_record(profile, argv, cwd)
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
