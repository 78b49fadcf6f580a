"""Backups: the routes, the backup and restore jobs, and the ``/ws/backups`` stream.

``POST /api/v1/backups {connection_id, name, backup_type, tables?, gzip?}`` answers 202 with the
backup (``status: pending``) and runs it as a job; ``GET /api/v1/backups[?connection_id=]``,
``GET/DELETE /api/v1/backups/{id}``; ``POST /api/v1/backups/{id}/restore`` (``{}`` = into the
source connection, or ``{target_connection_id}``) answers 202 with the restore job;
``GET .../download`` streams the file; ``POST .../verify`` recomputes the sha256 and checks
the format. The engines' work is in ``dumps``; the files' rules in ``backupfiles``; the
record keeping, cancelling and crash recovery in ``jobs``.

``/ws/backups`` sends ``{"type": "snapshot", "backups": [...], "restores": [...]}`` (the
unfinished ones) when a client connects, then ``{"type": "backup_update", "backup": {...}}``
and ``{"type": "restore_update", "restore": {...}}`` for jobs started from any window.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket

from dbtkd.app.backupfiles import BackupDir, BackupFileError, LabelError, check_label, download_name
from dbtkd.app.db.profiles import Profile
from dbtkd.app.dumps import (
    BACKUP_TYPES,
    CHUNK_BYTES,
    BackupPlan,
    Dumper,
    Workspace,
    dumper_for,
    hash_fd,
)
from dbtkd.app.endpoints import ApiError, JSONResponse, invalid, read_object
from dbtkd.app.events import publish
from dbtkd.app.jobs import UNFINISHED, JobFailed, Jobs, RunningJob, new_id, now_iso, public_view
from dbtkd.app.responses import describe
from dbtkd.app.streams import Streams
from dbtkd.app.tools import Toolbox, ToolError, configured_tool_paths

log = logging.getLogger("dbtkd.app.backups")

ProfileLookup = Callable[[str], Awaitable[Profile]]
BACKUP_FIELDS = frozenset({"connection_id", "name", "backup_type", "tables", "gzip", "compress"})
# backup_id and tables: what the UI sends (UI-CONTRACT §9.3); checked, then not needed.
RESTORE_FIELDS = frozenset({"target_connection_id", "backup_id", "tables"})
PERCENT = 100
MAX_TABLES = 1000
MAX_TABLE_NAME_CHARS = 1000


def backup_view(record: dict[str, Any]) -> dict[str, Any]:
    """A backup as the API shows it: dbtkd's job fields, plus the names the UI reads
    (UI-CONTRACT §9, D9): ``file_size``, ``compressed``, ``error_message``, ``file_path`` (the
    download's file name, never a directory) and ``progress`` as a percentage (0-100)."""
    view = public_view(record)
    file = record.get("file")
    progress = record.get("progress")
    return {
        **view,
        "progress": round(progress * PERCENT, 1) if isinstance(progress, (int, float)) else None,
        "file_size": record.get("size"),
        "compressed": bool(record.get("gzip")),
        "error_message": record.get("error"),
        "file_path": (
            download_name(str(record.get("name") or "backup"), _extension(str(file)))
            if file
            else ""
        ),
    }


# The job statuses the UI's backup cards know (UI-CONTRACT §9.7: in_progress, completed,
# failed); dbtkd's ``pending`` stays in the ``backup`` object beside them.
UI_STATUS = {"pending": "in_progress"}


def backup_update(view: dict[str, Any]) -> dict[str, Any]:
    """A ``/ws/backups`` frame for one backup (its ``backup_view``): the UI's top-level
    ``backup_id``, ``status``, ``data.progress`` (0-100), ``connection_name`` and, on failure,
    ``error`` (UI-CONTRACT §9.7, D10), with dbtkd's whole ``backup`` beside them."""
    failed = view.get("status") == "failed"
    # The UI knows three statuses (§9.7); a queued backup is shown as running, not unknown.
    status = UI_STATUS.get(str(view.get("status")), view.get("status"))
    data: dict[str, Any] = {
        "progress": view.get("progress"),
        "connection_name": view.get("connection_name"),
        "file_size": view.get("file_size"),
    }
    frame: dict[str, Any] = {
        "type": "backup_update",
        "backup_id": view["id"],
        "status": status,
        "connection_name": view.get("connection_name"),
        "data": data,
        "backup": view,
    }
    if failed:
        data["error"] = frame["error"] = view.get("error_message") or "the backup failed"
    return frame


def parse_plan(body: dict[str, Any]) -> BackupPlan:
    """``backup_type``, ``tables`` and ``gzip`` of a request (or a schedule), checked."""
    backup_type = body.get("backup_type") or "full"
    if backup_type not in BACKUP_TYPES:
        raise invalid(
            f"expected backup_type one of {', '.join(BACKUP_TYPES)}; got {backup_type!r:.40}"
        )
    tables = body.get("tables")
    if backup_type == "tables":
        if (
            not isinstance(tables, list)
            or not 0 < len(tables) <= MAX_TABLES
            or not all(
                isinstance(t, str) and 0 < len(t) <= MAX_TABLE_NAME_CHARS and "\x00" not in t
                for t in tables
            )
        ):
            raise invalid(
                f"expected tables to be a list of 1-{MAX_TABLES} table names (backup_type "
                f"'tables'); got {tables!r:.80}"
            )
    elif tables:
        raise invalid(f"expected no tables with backup_type {backup_type!r} (only with 'tables')")
    if "compress" in body and "gzip" in body and body["compress"] != body["gzip"]:
        raise invalid("expected compress (the UI's name) and gzip to agree; got both, different")
    gzip = body.get("gzip", body.get("compress", True))
    if not isinstance(gzip, bool):
        raise invalid(f"expected gzip (or compress) to be true or false; got {gzip!r:.40}")
    return BackupPlan(backup_type, tuple(tables or ()), gzip)


def label_or_error(name: object) -> str:
    try:
        return check_label(name)
    except LabelError as error:
        raise ApiError(400, "bad_request", str(error)) from None


def unknown_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(f"expected only the fields {', '.join(sorted(allowed))}; got {unknown}")


class Backups:
    """Backups of one app: starting, restoring, verifying, deleting; their routes."""

    def __init__(self, config: Any, jobs: Jobs, profile_of: ProfileLookup) -> None:
        self.config = config
        self.jobs = jobs
        jobs.views["backup"] = backup_view  # events carry what GET /backups shows
        self.profile_of = profile_of
        self.files = BackupDir(config.data_dir)
        self.secrets_dir = os.path.join(config.data_dir, "tmp")
        self._toolbox = Toolbox({})

    def dumper(self, db_type: str) -> Dumper:
        try:
            self._toolbox.tool_paths = configured_tool_paths(self.config)
        except ToolError as error:
            raise JobFailed(str(error)) from None
        return dumper_for(db_type, self._toolbox, self.secrets_dir)

    # -- jobs --------------------------------------------------------------------------------

    async def start_backup(
        self,
        profile: Profile,
        plan: BackupPlan,
        name: str,
        *,
        schedule_id: str | None = None,
        after: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Record a pending backup of ``profile`` and start it; ``after`` runs once it is
        complete (a schedule's retention)."""
        backup_id = new_id()
        record: dict[str, Any] = {
            "id": backup_id,
            "kind": "backup",
            "name": name,
            "connection_id": profile.id,
            "connection_name": profile.name,  # for the UI's notification (§9.7)
            "db_type": profile.db_type,
            "backup_type": plan.backup_type,
            "tables": list(plan.tables),
            "gzip": plan.gzip,
            "schedule_id": schedule_id,
            "format": None,
            "size": None,
            "sha256": None,
        }

        async def run(job: RunningJob) -> dict[str, Any]:
            dumper = self.dumper(profile.db_type)
            workspace = Workspace(self.files, backup_id, backup_id[:12], job)
            try:
                fields = await _explained(dumper.backup(job, profile, plan, workspace))
                final = self.files.final_name(backup_id, dumper.extension(plan))
                workspace.commit(final)
            finally:
                workspace.cleanup()
            done = {**fields, "file": final}
            if after is not None:
                try:
                    await after({**record, **done})
                except Exception:  # retention is housekeeping: it never fails the backup
                    log.exception("after backup %s", backup_id)
            return done

        return await self.jobs.submit(record, run)

    async def start_restore(self, backup: dict[str, Any], target: Profile) -> dict[str, Any]:
        restore_id = new_id()
        record: dict[str, Any] = {
            "id": restore_id,
            "kind": "restore",
            "name": f"restore of {backup.get('name', '')}",
            "backup_id": backup["id"],
            "connection_id": target.id,
            "db_type": target.db_type,
        }

        async def run(job: RunningJob) -> dict[str, Any]:
            dumper = self.dumper(target.db_type)
            workspace = Workspace(self.files, backup["id"], restore_id[:12], job)
            try:
                return await _explained(dumper.restore(job, target, backup, workspace))
            finally:
                workspace.cleanup()

        return await self.jobs.submit(record, run)

    async def verify(self, backup: dict[str, Any]) -> dict[str, Any]:
        """Recompute the sha256 and check the format (a copy is checked, never the file)."""
        expected = backup.get("sha256")
        actual: str | None = None
        problems: list[str] = []
        try:
            fd = self.files.open_read(str(backup["file"]))
            try:
                _, actual = await anyio.to_thread.run_sync(hash_fd, fd)
            finally:
                os.close(fd)
        except BackupFileError as error:
            problems.append(str(error))
        if actual is not None and actual != expected:
            problems.append(
                f"the sha256 is {actual}, but {expected} was recorded: the file changed"
            )
        format_problem: str | None = None
        if actual is not None:
            workspace = Workspace(self.files, backup["id"], new_id()[:12], None)
            try:
                format_problem = await self.dumper(backup["db_type"]).check_format(
                    backup, workspace
                )
            except (JobFailed, BackupFileError) as error:
                format_problem = str(error)
            finally:
                workspace.cleanup()
            if format_problem:
                problems.append(format_problem)
        return {
            "success": not problems,
            "id": backup["id"],
            "sha256": actual,
            "expected_sha256": expected,
            "sha256_matches": actual is not None and actual == expected,
            "format": backup.get("format"),
            "format_ok": actual is not None and format_problem is None,
            "error": "; ".join(problems) or None,
            "checked_at": now_iso(),
        }

    async def delete(self, backup: dict[str, Any]) -> None:
        await self.jobs.cancel(backup["id"], "cancelled: the backup was deleted")
        if backup.get("file"):
            self.files.remove(str(backup["file"]))
        await self.jobs.delete(backup["id"])

    # -- routes ------------------------------------------------------------------------------

    async def _backup(self, backup_id: str) -> dict[str, Any]:
        record = await self.jobs.get(backup_id)
        if record is None or record.get("kind") != "backup":
            raise ApiError(
                404,
                "not_found",
                "expected the id of a backup (GET /api/v1/backups lists them); got "
                + describe(backup_id),
            )
        return record

    @staticmethod
    def _completed(record: dict[str, Any], action: str) -> None:
        if record.get("status") != "completed":
            raise ApiError(
                409,
                "backup_not_completed",
                f"expected a completed backup to {action}; this one is {record.get('status')}"
                + (f" ({record['error']})" if record.get("error") else ""),
            )


def backups_of(connection: HTTPConnection) -> Backups:
    """The app's ``Backups`` (``app.state.backups``)."""
    backups: Backups = connection.app.state.backups
    return backups


async def list_backups(request: Request) -> Response:
    backups = backups_of(request)
    connection_id = request.query_params.get("connection_id")
    records = await backups.jobs.records("backup")
    views = [
        backup_view(r)
        for r in records
        if connection_id is None or r.get("connection_id") == connection_id
    ]
    return JSONResponse({"success": True, "backups": views})


async def create_backup(request: Request) -> Response:
    backups = backups_of(request)
    body = await read_object(request)
    unknown_fields(body, BACKUP_FIELDS)
    connection_id = body.get("connection_id")
    if not isinstance(connection_id, str):
        raise invalid(
            f"expected connection_id to be the id of a saved connection; got {connection_id!r:.60}"
        )
    name = body.get("name")
    label = label_or_error(name) if name is not None else None
    plan = parse_plan(body)
    profile = await backups.profile_of(connection_id)
    label = label or f"{profile.name} {datetime.datetime.now():%Y-%m-%d %H:%M:%S}"
    view = backup_view(await backups.start_backup(profile, plan, label))
    # The UI reads `backup`; dbtkd's clients read the record's own fields.
    return JSONResponse({**view, "success": True, "backup": view}, status_code=202)


async def get_backup(request: Request) -> Response:
    backups = backups_of(request)
    return JSONResponse(backup_view(await backups._backup(request.path_params["id"])))


async def delete_backup(request: Request) -> Response:
    backups = backups_of(request)
    record = await backups._backup(request.path_params["id"])
    await backups.delete(record)
    publish(request.app, "backup_changed", id=record["id"], status="deleted")
    return JSONResponse({"success": True, "id": record["id"]})


async def restore_backup(request: Request) -> Response:
    backups = backups_of(request)
    body = await read_object(request)
    unknown_fields(body, RESTORE_FIELDS)
    record = await backups._backup(request.path_params["id"])
    if body.get("backup_id") not in (None, record["id"]):
        raise invalid(
            f"expected backup_id to be this backup's id ({record['id']}) or absent; got "
            f"{body['backup_id']!r:.60}"
        )
    if body.get("tables"):
        raise invalid(
            "expected no tables: a restore takes the whole backup (make a backup of "
            "the tables you want instead)"
        )
    backups._completed(record, "restore")
    target_id = body.get("target_connection_id") or record["connection_id"]
    if not isinstance(target_id, str):
        raise invalid(f"expected target_connection_id to be a connection id; got {target_id!r:.60}")
    target = await backups.profile_of(target_id)
    if target.db_type != record["db_type"]:
        raise invalid(
            f"expected a {record['db_type']} connection to restore this backup into; "
            f"got a {target.db_type} one"
        )
    job = await backups.start_restore(record, target)
    if request.query_params.get("wait") == "false":
        # dbtkd's clients: the job at once; progress on /ws/backups (restore_update).
        return JSONResponse(public_view(job), status_code=202)
    # The UI (D9): answer when the restore has finished, as the old backend did.
    finished = await backups.jobs.wait(job["id"]) or job
    if finished.get("status") != "completed":
        raise ApiError(
            400,
            "restore_failed",
            f"expected the restore into {target.name!r} to succeed; it "
            f"{finished.get('status')}: {finished.get('error') or 'no reason given'}",
        )
    return JSONResponse(
        {
            "success": True,
            "message": f"backup {record.get('name')!r} restored into {target.name!r}",
            "restore": public_view(finished),
        }
    )


async def download_backup(request: Request) -> Response:
    backups = backups_of(request)
    record = await backups._backup(request.path_params["id"])
    backups._completed(record, "download")
    try:
        fd = backups.files.open_read(str(record["file"]))
    except BackupFileError as error:
        raise ApiError(409, "backup_file_unusable", str(error)) from None
    size = os.fstat(fd).st_size
    filename = download_name(str(record.get("name") or "backup"), _extension(str(record["file"])))
    return StreamingResponse(
        _read_chunks(fd),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Backup-Sha256": str(record.get("sha256") or ""),
        },
    )


async def verify_backup(request: Request) -> Response:
    backups = backups_of(request)
    record = await backups._backup(request.path_params["id"])
    backups._completed(record, "verify")
    return JSONResponse(await backups.verify(record))


async def _stream(websocket: WebSocket) -> None:
    backups = backups_of(websocket)
    kinds = ("backup", "restore")
    # Subscribed before the snapshot is read: an event in between is sent after it.
    with backups.jobs.subscribe() as events:
        unfinished = [r for r in await backups.jobs.records() if r.get("status") in UNFINISHED]
        await websocket.send_text(
            json.dumps(
                {
                    "type": "snapshot",
                    "backups": [backup_view(r) for r in unfinished if r["kind"] == "backup"],
                    "restores": [public_view(r) for r in unfinished if r["kind"] == "restore"],
                }
            )
        )
        async for event in events:
            if "backup" in event:
                await websocket.send_text(json.dumps(backup_update(event["backup"])))
            elif any(kind in event for kind in kinds):
                await websocket.send_text(json.dumps(event))


async def backups_stream(websocket: WebSocket) -> None:
    """``/ws/backups``: a snapshot of unfinished jobs, then every backup and restore event."""
    streams: Streams = websocket.app.state.streams
    await streams.serve("backups", websocket, _stream)


async def _explained(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """A dumper's result, with file and tool failures turned into the job's error message."""
    try:
        return await work
    except BackupFileError as error:
        raise JobFailed(str(error)) from None
    except OSError as error:
        what = f" {error.filename}" if error.filename else ""
        raise JobFailed(f"{error.strerror or error}{what}") from None


def _extension(file_name: str) -> str:
    return file_name[file_name.index(".") :] if "." in file_name else ""


async def _read_chunks(fd: int) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(os.read, fd, CHUNK_BYTES):
            yield chunk
    finally:
        os.close(fd)
