"""Backup schedules: stored in ``schedules.json``, run by the worker, with retention.

A schedule is ``{id, connection_id, name, backup_type, tables, gzip, interval_seconds,
retention, enabled, next_run_at, last_run_at, last_backup_id, last_error, created_at}``.
Routes: ``GET/POST /api/v1/backup-schedules``, ``GET/PUT/DELETE
/api/v1/backup-schedules/{id}``, and ``POST .../{id}/run`` to run one now.

The scheduler is a task of the app's lifespan. It wakes when a schedule is due (and at least
every ``MAX_SLEEP``, so a changed clock or a suspended laptop is noticed), claims the due
schedules under the store's lock, and starts their backups as ordinary jobs.

**Missed runs are caught up once.** ``next_run_at`` is on disk, so a schedule that fell due
while no daemon ran (or while the worker restarted) is due when the next worker starts: it runs
once, at once, however many intervals were missed, and the next run is an interval after that.
A schedule on time keeps its cadence (``next_run_at`` advances by the interval, not from when
the backup happened to start). A run is skipped (and ``last_error`` says so) while the
schedule's previous backup is still running. After each completed backup, the schedule's older
backups beyond ``retention`` are deleted, with their files.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.backups import Backups, ProfileLookup, label_or_error, parse_plan, unknown_fields
from dbtkd.app.db.profiles import ProfileNotFoundError
from dbtkd.app.endpoints import ApiError, JSONResponse, invalid, read_object
from dbtkd.app.events import publish
from dbtkd.app.jobs import UNFINISHED, new_id, now_iso, public_view
from dbtkd.app.recordstore import Record, Records, RecordStore
from dbtkd.app.responses import describe
from dbtkd.app.store import StoreUnwritable
from dbtkd.units import SECONDS

MINUTE = 60 * SECONDS
DAY = 24 * 60 * MINUTE
# A backup more often than once a minute is a replication job, not a schedule.
MIN_INTERVAL = 1 * MINUTE
MAX_INTERVAL = 366 * DAY
MAX_RETENTION = 1000
DEFAULT_RETENTION = 7
# The scheduler re-reads the clock at least this often (wall-clock jumps, suspend/resume).
MAX_SLEEP = 30 * SECONDS
FIELDS = frozenset(
    {
        "connection_id",
        "name",
        "backup_type",
        "tables",
        "gzip",
        "interval_seconds",
        "interval",  # accepted as a synonym of interval_seconds
        "retention",
        "enabled",
        "next_run_at",
        # The UI's names (UI-CONTRACT §10, D9), mapped onto the ones above by ``_from_ui``.
        "schedule",
        "retention_count",
        "compressed",
    }
)
# Fields a UI sends back after a GET; accepted on PUT and ignored.
READ_ONLY = frozenset(
    {
        "id",
        "last_run_at",
        "last_backup_id",
        "last_error",
        "created_at",
        "updated_at",
        "last_run",
        "next_run",
    }
)
# The UI's three cadences (old backend: a month was 30 days).
NAMED_INTERVALS = {"daily": int(DAY), "weekly": int(7 * DAY), "monthly": int(30 * DAY)}
HOUR = 60 * MINUTE

log = logging.getLogger("dbtkd.app.schedules")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def parse_time(value: object, name: str) -> datetime.datetime:
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.astimezone(datetime.UTC)
    raise invalid(
        f"expected {name} to be an ISO 8601 time with a UTC offset, like "
        f"2025-01-31T02:00:00+00:00; got {value!r:.60}"
    )


def _stored_time(record: Record, name: str) -> datetime.datetime | None:
    value = record.get(name)
    try:
        return datetime.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def next_run_after_claim(
    scheduled: datetime.datetime, interval: float, now: datetime.datetime
) -> datetime.datetime:
    """When a schedule runs next once its run due at ``scheduled`` starts at ``now``: one
    interval later on the same cadence, or one interval from now if runs were missed."""
    step = datetime.timedelta(seconds=interval)
    following = scheduled + step
    return following if following > now else now + step


def _integer(body: dict[str, Any], name: str, low: float, high: float) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"expected {name} to be an integer {low:g}-{high:g}; got {value!r:.40}")
    return value


def _from_ui(body: dict[str, Any], existing: Record | None) -> dict[str, Any]:
    """The UI's field names as dbtkd's: ``schedule`` (daily/weekly/monthly) →
    ``interval_seconds``, ``retention_count`` → ``retention`` (null: the default),
    ``compressed`` → ``gzip``."""
    body = dict(body)
    if "schedule" in body:
        cadence = body.pop("schedule")
        if existing and cadence == describe_interval(int(existing["interval_seconds"])):
            pass  # a GET's view sent back unchanged (e.g. "every 6 h"): not a change
        elif cadence not in NAMED_INTERVALS:
            raise invalid(
                f"expected schedule to be one of {', '.join(NAMED_INTERVALS)} (or "
                f"interval_seconds); got {cadence!r:.40}"
            )
        else:
            body.setdefault("interval_seconds", NAMED_INTERVALS[cadence])
    if "retention_count" in body:
        count = body.pop("retention_count")
        body.setdefault("retention", DEFAULT_RETENTION if count is None else count)
    if "compressed" in body:
        body.setdefault("gzip", body.pop("compressed"))
    return body


def describe_interval(seconds: int) -> str:
    """``daily``, ``weekly``, ``monthly``, or e.g. ``every 6 h`` (what the UI shows)."""
    for name, interval in NAMED_INTERVALS.items():
        if seconds == interval:
            return name
    for unit, size in (("d", DAY), ("h", HOUR), ("min", MINUTE)):
        if seconds % size == 0:
            return f"every {seconds // int(size)} {unit}"
    return f"every {seconds} s"


def schedule_view(record: Record) -> Record:
    """A schedule as the API shows it: dbtkd's fields plus the UI's names (§10, D9)."""
    return {
        **record,
        "schedule": describe_interval(int(record["interval_seconds"])),
        "retention_count": record.get("retention"),
        "compressed": record.get("gzip"),
        "last_run": record.get("last_run_at"),
        "next_run": record.get("next_run_at"),
    }


def build_schedule(body: dict[str, Any], existing: Record | None) -> Record:
    """A schedule from a POST body, or a PUT body merged over ``existing``."""
    unknown_fields(body, FIELDS | (READ_ONLY if existing else frozenset()))
    body = _from_ui(body, existing)
    if "interval" in body:
        body = {**body, "interval_seconds": body["interval"]}
    merged: dict[str, Any] = dict(existing or {})
    merged.update({k: v for k, v in body.items() if k in FIELDS and k != "interval"})
    for view_only in ("schedule", "retention_count", "compressed"):  # names of views only
        merged.pop(view_only, None)
    if not isinstance(merged.get("connection_id"), str):
        raise invalid(
            f"expected connection_id to be a connection id; got {merged.get('connection_id')!r:.60}"
        )
    if "interval_seconds" not in merged:
        raise invalid(
            "expected interval_seconds, the time between two backups in seconds; got none"
        )
    interval = _integer(merged, "interval_seconds", MIN_INTERVAL, MAX_INTERVAL)
    merged.setdefault("retention", DEFAULT_RETENTION)
    retention = _integer(merged, "retention", 1, MAX_RETENTION)
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        raise invalid(f"expected enabled to be true or false; got {enabled!r:.40}")
    plan = parse_plan(merged)
    now = utcnow()
    if "next_run_at" in body and body["next_run_at"] is not None:
        next_run = parse_time(body["next_run_at"], "next_run_at")
    elif existing is None or "interval_seconds" in body:
        next_run = now + datetime.timedelta(seconds=interval)
    else:
        next_run = _stored_time(existing, "next_run_at") or now + datetime.timedelta(
            seconds=interval
        )
    name = merged.get("name")
    return {
        "id": existing["id"] if existing else new_id(),
        "connection_id": merged["connection_id"],
        "name": label_or_error(name) if name is not None else None,
        "backup_type": plan.backup_type,
        "tables": list(plan.tables),
        "gzip": plan.gzip,
        "interval_seconds": interval,
        "retention": retention,
        "enabled": enabled,
        "next_run_at": next_run.isoformat(timespec="seconds"),
        "last_run_at": (existing or {}).get("last_run_at"),
        "last_backup_id": (existing or {}).get("last_backup_id"),
        "last_error": (existing or {}).get("last_error"),
        "created_at": (existing or {}).get("created_at") or now_iso(),
        "updated_at": now_iso(),
    }


def _found(record: Record | None, schedule_id: str) -> Record:
    if record is None:
        raise ApiError(
            404,
            "not_found",
            f"expected the id of a backup schedule (GET /api/v1/backup-schedules lists them); "
            f"got {describe(schedule_id)}",
        )
    return record


class Schedules:
    """The schedules store, the scheduler task, and the routes."""

    def __init__(self, data_dir: str, backups: Backups, profile_of: ProfileLookup) -> None:
        self.store = RecordStore(data_dir, "schedules.json", "schedules")
        self.backups = backups
        self.profile_of = profile_of
        self._wake = anyio.Event()
        self._refused = False  # the disk refused the last claim: warned once

    def poke(self) -> None:
        """A schedule changed: look at the clock again now."""
        self._wake.set()

    async def run(self) -> None:
        """The scheduler: start due backups, forever (cancelled with the app's lifespan)."""
        while True:
            self._wake = anyio.Event()
            try:
                for schedule in await self._claim_due():
                    await self._start(schedule)
                wait = await self._seconds_to_next()
                self._refused = False
            except StoreUnwritable as error:  # a full or read-only disk: once per outage
                if not self._refused:
                    log.warning("the scheduler waits for the disk: %s", error)
                self._refused = True
                wait = MAX_SLEEP
            except Exception:  # a broken store must not end the scheduler: log, retry later
                log.exception("the scheduler failed; retrying in %g s", MAX_SLEEP)
                wait = MAX_SLEEP
            with anyio.move_on_after(wait):
                await self._wake.wait()

    async def _claim_due(self) -> list[Record]:
        """Due schedules, each moved on to its next run (under the store's lock, so two workers
        during a handoff never both start one)."""

        def change(records: Records) -> list[Record]:
            now = utcnow()
            due = []
            for record in records.values():
                scheduled = _stored_time(record, "next_run_at")
                if not record.get("enabled") or scheduled is None or scheduled > now:
                    continue
                interval = float(record.get("interval_seconds") or MIN_INTERVAL)
                following = next_run_after_claim(scheduled, interval, now)
                record.update(
                    next_run_at=following.isoformat(timespec="seconds"),
                    last_run_at=now.isoformat(timespec="seconds"),
                )
                due.append(dict(record))
            return due

        claimed: list[Record] = await self.store.update(change)
        return claimed

    async def _seconds_to_next(self) -> float:
        times = [
            _stored_time(r, "next_run_at")
            for r in (await self.store.read()).values()
            if r.get("enabled")
        ]
        pending = [t for t in times if t is not None]
        if not pending:
            return MAX_SLEEP
        return min(max((min(pending) - utcnow()).total_seconds(), 0.0), MAX_SLEEP)

    async def _start(self, schedule: Record) -> dict[str, Any] | None:
        """Start the schedule's backup now; None (and ``last_error``) if it cannot start."""
        schedule_id = schedule["id"]
        running = [
            r
            for r in await self.backups.jobs.records("backup")
            if r.get("schedule_id") == schedule_id and r.get("status") in UNFINISHED
        ]
        error: str | None = None
        backup: dict[str, Any] | None = None
        if running:
            error = f"skipped a run: the previous backup ({running[0]['id']}) was still running"
        else:
            try:
                profile = await self.profile_of(schedule["connection_id"])
            except ProfileNotFoundError:
                error = f"the connection {schedule['connection_id']} no longer exists"
            else:
                label = schedule.get("name") or f"{profile.name} (scheduled)"
                backup = await self.backups.start_backup(
                    profile,
                    parse_plan(schedule),
                    f"{label} {datetime.datetime.now():%Y-%m-%d %H:%M}",
                    schedule_id=schedule_id,
                    after=self._apply_retention,
                )
        await self._note(schedule_id, error, backup["id"] if backup else None)
        if error:
            log.warning("schedule %s: %s", schedule_id, error)
        return backup

    async def _note(self, schedule_id: str, error: str | None, backup_id: str | None) -> None:
        def change(records: Records) -> None:
            record = records.get(schedule_id)
            if record is not None:
                record["last_error"] = error
                if backup_id is not None:
                    record["last_backup_id"] = backup_id

        await self.store.update(change)

    async def _apply_retention(self, backup: dict[str, Any]) -> None:
        """Delete the schedule's backups beyond its retention (the newest are kept)."""
        schedule = (await self.store.read()).get(str(backup.get("schedule_id")))
        if schedule is None:
            return
        keep = int(schedule.get("retention") or DEFAULT_RETENTION)
        others = [
            r
            for r in await self.backups.jobs.records("backup")  # newest first
            if r.get("schedule_id") == schedule["id"] and r["id"] != backup["id"]
        ]
        kept = [backup, *(r for r in others if r.get("status") == "completed")]
        doomed = kept[keep:]
        oldest_kept = str(kept[:keep][-1]["created_at"])
        # Failed runs older than every backup kept explain nothing any more.
        doomed += [
            r for r in others if r.get("status") == "failed" and r["created_at"] < oldest_kept
        ]
        for record in doomed:
            await self.backups.delete(record)
            log.info(
                "schedule %s: deleted backup %s (retention %d)", schedule["id"], record["id"], keep
            )

    # -- routes ------------------------------------------------------------------------------

    async def _get(self, schedule_id: str) -> Record:
        return _found((await self.store.read()).get(schedule_id), schedule_id)


def schedules_of(request: Request) -> Schedules:
    """The app's ``Schedules`` (``app.state.schedules``)."""
    schedules: Schedules = request.app.state.schedules
    return schedules


async def list_schedules(request: Request) -> Response:
    schedules = schedules_of(request)
    records = sorted(
        (await schedules.store.read()).values(), key=lambda r: str(r.get("created_at"))
    )
    # The UI reads {success, schedules} (UI-CONTRACT §10.1).
    return JSONResponse({"success": True, "schedules": [schedule_view(r) for r in records]})


async def create_schedule(request: Request) -> Response:
    schedules = schedules_of(request)
    record = build_schedule(await read_object(request), None)
    await schedules.profile_of(record["connection_id"])  # 404 for an unknown connection
    await schedules.store.update(lambda records: records.__setitem__(record["id"], record))
    schedules.poke()
    publish(request.app, "schedule_changed", id=record["id"], deleted=False)
    return JSONResponse({**schedule_view(record), "success": True}, status_code=201)


async def get_schedule(request: Request) -> Response:
    schedules = schedules_of(request)
    return JSONResponse(schedule_view(await schedules._get(request.path_params["id"])))


async def update_schedule(request: Request) -> Response:
    schedules = schedules_of(request)
    schedule_id = request.path_params["id"]
    body = await read_object(request)
    connection_id = body.get("connection_id")
    existing = await schedules._get(schedule_id)
    if isinstance(connection_id, str) and connection_id != existing["connection_id"]:
        await schedules.profile_of(connection_id)  # 404 for an unknown connection

    def change(records: Records) -> Record:
        # Merged over the schedule as it is now, inside the store's lock: an edit made
        # meanwhile is kept, and a schedule deleted meanwhile stays deleted (404).
        record = build_schedule(body, _found(records.get(schedule_id), schedule_id))
        records[schedule_id] = record
        return record

    record = await schedules.store.update(change)
    schedules.poke()
    publish(request.app, "schedule_changed", id=schedule_id, deleted=False)
    return JSONResponse({**schedule_view(record), "success": True})


async def delete_schedule(request: Request) -> Response:
    schedules = schedules_of(request)
    schedule_id = request.path_params["id"]
    await schedules.store.update(
        lambda records: _found(records.pop(schedule_id, None), schedule_id)
    )
    schedules.poke()
    publish(request.app, "schedule_changed", id=schedule_id, deleted=True)
    return JSONResponse({"success": True, "id": schedule_id})


async def run_schedule(request: Request) -> Response:
    schedules = schedules_of(request)
    schedule = await schedules._get(request.path_params["id"])
    await schedules.profile_of(schedule["connection_id"])
    backup = await schedules._start(schedule)
    if backup is None:
        refreshed = await schedules._get(schedule["id"])
        raise ApiError(409, "schedule_busy", str(refreshed.get("last_error")))
    return JSONResponse(public_view(backup), status_code=202)
