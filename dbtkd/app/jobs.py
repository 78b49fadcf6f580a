"""Jobs: the backups, restores and migrations the worker runs, recorded in ``jobs.json``.

DESIGN §2's jobs policy lives here. A job is a record (``id, kind, name, status, progress,
error, created_at, started_at, completed_at`` plus what its kind needs) and, while it runs in
this worker, a task in the app's lifespan task group holding the child processes it started
and the partial files it writes. Status goes ``pending`` → ``in_progress`` → ``completed`` or
``failed``; every transition is written to disk before anyone is told about it.

- ``running()`` lists this worker's unfinished jobs (the supervisor's pongs carry the list to
  ``dbtkctl stop``, and a non-empty list holds off idle exit).
- ``cancel_all(reason)`` SIGKILLs every job's process group, reaps it, removes partial files
  and records ``failed`` with ``reason``, within ``CANCEL_ALL_TIMEOUT``.
- ``startup`` (worker start) marks every unfinished job of a dead worker (a crash, ``kill -9``)
  ``failed: worker restarted``; its process group, if still alive and still the one recorded
  (leader pid and start time), is killed, and its partial files removed. A job of a *live*
  other worker (the old one, during a version handoff) is left to that worker.

A backup's record is also the backup's catalogue entry (``backups.py``). Each change is
published to subscribers (the ``/ws/backups`` streams) as ``{"type": "<kind>_update",
"<kind>": view}``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from dbtkd.app import programs
from dbtkd.app.programs import Child
from dbtkd.app.recordstore import Record, Records, RecordStore
from dbtkd.app.store import StoreUnwritable
from dbtkd.units import SECONDS

# DESIGN §2 + the worker's stop budget: cancelling must leave time to close the WebSockets
# and drain within the 2 s graceful timeout that follows.
CANCEL_ALL_TIMEOUT = 1.5 * SECONDS
# Dump tools are disk- and CPU-heavy; past four at once a laptop only gets slower at all of them.
MAX_CONCURRENT_JOBS = 4
# A progress figure four times a second is smooth in a UI and cheap on the socket.
PROGRESS_INTERVAL = 0.25 * SECONDS
# How often unfinished jobs of another worker (a handoff's old worker) are checked for death.
ORPHAN_CHECK_INTERVAL = 10 * SECONDS
# Finished restores and migrations kept for the record (backups stay until deleted).
MAX_FINISHED_PER_KIND = 100
# Events a subscriber may fall behind by; a client that slow is dropped and reconnects to a
# fresh snapshot, instead of the worker buffering without bound.
EVENT_BUFFER = 512
UNFINISHED = frozenset({"pending", "in_progress"})
WORKER_RESTARTED = "worker restarted"
# Kept in the store for recovery, never shown to clients.
PRIVATE_FIELDS = frozenset(
    {"pgids", "worker_pid", "worker_ticks", "partial_files", "file", "password"}
)

log = logging.getLogger("dbtkd.app.jobs")

Body = Callable[["RunningJob"], Awaitable[dict[str, Any] | None]]
Event = dict[str, Any]


class JobFailed(Exception):
    """A job could not do its work; ``message`` becomes the record's ``error``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def public_view(record: Record) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in PRIVATE_FIELDS}


def _failure_message(error: BaseException) -> str | None:
    """The first ``JobFailed`` message inside ``error`` (task groups wrap them in groups)."""
    if isinstance(error, JobFailed):
        return error.message
    if isinstance(error, StoreUnwritable):  # a full or read-only disk: the user's to fix
        return str(error)
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            message = _failure_message(inner)
            if message is not None:
                return message
    return None


class RunningJob:
    """One job running in this worker, as its body sees it: progress, children, partial files.

    The body registers each child process and each partial file *before* relying on it, so a
    cancel (or the next worker, after a crash) knows what to kill and what to remove.
    """

    def __init__(self, jobs: Jobs, record: Record, limited: bool) -> None:
        self._jobs = jobs
        self.record = record
        self.limited = limited
        self.scope = anyio.CancelScope()
        self.children: list[Child] = []
        self.partial_files: list[str] = []
        self.finished = anyio.Event()
        self.cancel_reason: str | None = None
        # Set on cancel, for work running in a thread (which a cancel scope cannot reach).
        self.stop_flag = threading.Event()
        self.completed = False
        self._published_at = 0.0

    @property
    def id(self) -> str:
        return str(self.record["id"])

    def set_progress(self, fraction: float) -> None:
        fraction = round(min(max(fraction, 0.0), 1.0), 4)
        if fraction == self.record.get("progress"):
            return
        self.record["progress"] = fraction
        now = time.monotonic()
        if now - self._published_at >= PROGRESS_INTERVAL or fraction >= 1.0:
            self._published_at = now
            self._jobs.publish(self.record)

    async def add_child(self, child: Child) -> None:
        """Record a started child's process group (killed on cancel and after a crash)."""
        self.children.append(child)
        if self.cancel_reason is not None:
            child.kill()  # cancelled while it was being started
        pgids = [*self.record.get("pgids", []), [child.pgid, child.start_ticks]]
        await self._jobs.save(self.record, pgids=pgids)

    async def add_partial(self, path: str) -> None:
        """Record a file about to be written, removed unless the job completes."""
        self.partial_files.append(path)
        await self._jobs.save(self.record, partial_files=list(self.partial_files))

    def forget_partial(self, path: str) -> None:
        """``path`` was renamed into place (or removed) by the job itself."""
        with contextlib.suppress(ValueError):
            self.partial_files.remove(path)

    def cancel(self, reason: str) -> None:
        """Kill the job's process groups now (a signal), and cancel its task."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.stop_flag.set()
        for child in self.children:
            child.kill()
        self.scope.cancel()


class Jobs:
    """Every job of one data dir, and the ones running in this worker."""

    def __init__(self, data_dir: str, *, max_concurrent: int = MAX_CONCURRENT_JOBS) -> None:
        self.data_dir = data_dir
        # Written at every step of every job, read by people seldom: one line is 4x faster.
        self.store = RecordStore(data_dir, "jobs.json", "jobs", indent=None)
        self._active: dict[str, RunningJob] = {}
        self._subscribers: set[MemoryObjectSendStream[Event]] = set()
        # Called with each record published (the change feed of /ws/events listens here).
        self.listeners: list[Callable[[Record], None]] = []
        # How a kind's record is shown in events (backups: with the UI's field names).
        self.views: dict[str, Callable[[Record], dict[str, Any]]] = {}
        self._slots = anyio.Semaphore(max_concurrent)
        self._recover_refused = False  # the disk refused the last recover: warned once
        self._task_group: TaskGroup | None = None
        self._pid = os.getpid()
        self._ticks = programs.start_ticks(self._pid)

    # -- life of the worker ------------------------------------------------------------------

    async def startup(self, task_group: TaskGroup) -> None:
        """Take jobs from here on; fail the jobs a dead worker left unfinished."""
        self._pid = os.getpid()
        self._ticks = programs.start_ticks(self._pid)
        await self._recover_logged()
        self._task_group = task_group
        task_group.start_soon(self._watch_orphans)

    async def recover(self) -> list[Record]:
        """Mark unfinished jobs of dead workers ``failed: worker restarted``; returns them."""

        def change(records: Records) -> list[Record]:
            failed = []
            for record in records.values():
                if record.get("status") in UNFINISHED and self._is_orphan(record):
                    _kill_leftovers(record)
                    _remove_files(record.get("partial_files") or [])
                    record.update(
                        status="failed",
                        error=WORKER_RESTARTED,
                        completed_at=now_iso(),
                        pgids=[],
                        partial_files=[],
                    )
                    failed.append(record)
            return failed

        failed: list[Record] = await self.store.update(change)
        for record in failed:
            log.warning("%s %s was left unfinished by a dead worker", record["kind"], record["id"])
            self.publish(record)
        return failed

    async def _recover_logged(self) -> None:
        """``recover``, but a store it cannot write (from a newer daemon, on a full disk) is
        logged, not fatal: the worker must serve anyway."""
        try:
            await self.recover()
        except StoreUnwritable as error:
            # Retried every ORPHAN_CHECK_INTERVAL: one warning per outage, not a traceback
            # every 10 s (which would rotate the log's history out).
            if not self._recover_refused:
                log.warning(
                    "cannot mark the jobs of a dead worker failed yet: %s (retrying every %g s)",
                    error,
                    ORPHAN_CHECK_INTERVAL,
                )
            self._recover_refused = True
        except Exception:
            log.exception("could not mark the jobs of a dead worker failed in %s", self.store.path)
        else:
            self._recover_refused = False

    def _is_orphan(self, record: Record) -> bool:
        if record.get("id") in self._active:
            return False
        pid, ticks = record.get("worker_pid"), record.get("worker_ticks")
        if not isinstance(pid, int) or (pid == self._pid and ticks == self._ticks):
            return True  # no worker recorded, or this one, which does not run it
        return not programs.is_running(pid, ticks if isinstance(ticks, int) else None)

    async def _watch_orphans(self) -> None:
        while True:
            await anyio.sleep(ORPHAN_CHECK_INTERVAL)
            try:
                records = await self.store.read()
            except OSError:
                continue
            if any(
                r.get("status") in UNFINISHED and r.get("id") not in self._active
                for r in records.values()
            ):
                await self._recover_logged()

    def running(self) -> list[dict[str, Any]]:
        """This worker's unfinished jobs, for the supervisor's pong (cheap; no I/O)."""
        return [
            {
                "id": job.id,
                "kind": job.record["kind"],
                "name": job.record.get("name", ""),
                "status": job.record["status"],
                "started_at": job.record.get("started_at") or job.record["created_at"],
            }
            for job in self._active.values()
        ]

    async def cancel_all(self, reason: str) -> None:
        """Cancel every job of this worker: process groups killed and reaped, partial files
        removed, each recorded ``failed`` with ``reason``. Returns within CANCEL_ALL_TIMEOUT
        (plus one store write)."""
        jobs = list(self._active.values())
        for job in jobs:
            job.cancel(reason)
        with anyio.move_on_after(CANCEL_ALL_TIMEOUT):
            for job in jobs:
                await job.finished.wait()
        stuck = [job for job in jobs if not job.finished.is_set()]
        if stuck:
            # A task that could not finish in time (a blocking call that ignores cancellation):
            # record the outcome for it; its own ending will not overwrite a finished record.
            for job in stuck:
                _remove_files(job.partial_files)
                job.record.update(status="failed", error=reason, completed_at=now_iso())
            ended = [dict(job.record) for job in stuck]
            await self.store.update(lambda records: _replace(records, ended))

    # -- reading -----------------------------------------------------------------------------

    async def records(self, kind: str | None = None) -> list[Record]:
        """Records on disk (live progress for this worker's jobs), newest first."""
        records = await self.store.read()
        for job_id, job in self._active.items():
            if job_id in records:
                records[job_id] = dict(job.record)
        found = [r for r in records.values() if kind is None or r.get("kind") == kind]
        found.sort(key=lambda r: str(r.get("created_at", "")), reverse=True)
        return found

    async def get(self, job_id: str) -> Record | None:
        job = self._active.get(job_id)
        if job is not None:
            return dict(job.record)
        return (await self.store.read()).get(job_id)

    def snapshot(self, kinds: frozenset[str]) -> list[dict[str, Any]]:
        """Views of this worker's unfinished jobs of ``kinds`` (a stream's first message)."""
        return [
            public_view(job.record) for job in self._active.values() if job.record["kind"] in kinds
        ]

    # -- changing ----------------------------------------------------------------------------

    async def submit(self, record: Record, body: Body, *, limited: bool = True) -> Record:
        """Record ``record`` as ``pending`` (on disk) and start ``body`` in the background.

        ``limited`` jobs (backups, restores) wait for one of ``MAX_CONCURRENT_JOBS`` slots.
        """
        if self._task_group is None:
            raise RuntimeError("jobs are not running: the app's lifespan has not started")
        record.update(
            status="pending",
            progress=0.0,
            error=None,
            created_at=record.get("created_at") or now_iso(),
            started_at=None,
            completed_at=None,
            worker_pid=self._pid,
            worker_ticks=self._ticks,
        )
        job = RunningJob(self, record, limited)
        await self.store.update(lambda records: records.__setitem__(job.id, dict(record)))
        self._active[job.id] = job
        self.publish(record)
        self._task_group.start_soon(self._run, job, body)
        return dict(record)

    async def save(self, record: Record, **changes: Any) -> None:
        """Apply ``changes`` to ``record`` (a running job's) and write it through."""
        record.update(changes)
        snapshot = dict(record)
        await self.store.update(lambda records: _replace(records, [snapshot]))

    async def cancel(self, job_id: str, reason: str) -> bool:
        """Cancel one job of this worker; False if it is not running here."""
        job = self._active.get(job_id)
        if job is None:
            return False
        job.cancel(reason)
        with anyio.move_on_after(CANCEL_ALL_TIMEOUT):
            await job.finished.wait()
        return True

    async def wait(self, job_id: str) -> Record | None:
        """Wait for a job of this worker to end; its final record (None if unknown)."""
        job = self._active.get(job_id)
        if job is not None:
            await job.finished.wait()
            return dict(job.record)
        return await self.get(job_id)

    async def delete(self, job_id: str) -> Record | None:
        """Remove a finished job's record; returns it (None if there was none)."""

        def change(records: Records) -> Record | None:
            return records.pop(job_id, None)

        removed: Record | None = await self.store.update(change)
        return removed

    async def _run(self, job: RunningJob, body: Body) -> None:
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            with job.scope:
                async with self._slots if job.limited else contextlib.nullcontext():
                    await self.save(job.record, status="in_progress", started_at=now_iso())
                    self.publish(job.record)
                    result = await body(job) or {}
                    job.completed = True
        except Exception as failure:
            error = _failure_message(failure)
            if error is None:
                log.exception("%s %s failed", job.record["kind"], job.id)
                error = (
                    f"internal error ({type(failure).__name__}: {failure}); the traceback is "
                    "in dbtkd.log (dbtkctl logs)"
                )
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(job, result, error)

    async def _finish(
        self, job: RunningJob, result: dict[str, Any] | None, error: str | None
    ) -> None:
        for child in job.children:
            await child.kill_and_reap()
        record = job.record
        if job.completed and error is None and result is not None:
            record.update(result)
            record.update(status="completed", progress=1.0, error=None)
        else:
            _remove_files(job.partial_files)
            # A cancel explains the failure better than what the killed tool said about it.
            reason = job.cancel_reason or error or "cancelled"
            record.update(status="failed", error=reason)
        record.update(completed_at=now_iso(), pgids=[], partial_files=[])
        final = dict(record)

        def change(records: Records) -> None:
            current = records.get(job.id)
            if current is None or current.get("status") not in UNFINISHED:
                return  # deleted while it ran, or cancel_all already recorded its end
            records[job.id] = final
            _prune(records, final["kind"])

        try:
            await self.store.update(change)
        except Exception:
            log.exception("could not record the end of %s %s", record["kind"], job.id)
        finally:
            self._active.pop(job.id, None)
            job.finished.set()
            self.publish(record)
        log.info("%s %s %s", record["kind"], job.id, record["status"])

    # -- events ------------------------------------------------------------------------------

    def publish(self, record: Record) -> None:
        kind = str(record["kind"])
        event = {"type": f"{kind}_update", kind: self.views.get(kind, public_view)(record)}
        for listener in self.listeners:
            listener(record)
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(event)
            except anyio.WouldBlock:
                # Too far behind: end its stream; the client reconnects to a fresh snapshot.
                self._subscribers.discard(subscriber)
                subscriber.close()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(subscriber)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """Every job event from now on, until the block ends."""
        send, receive = anyio.create_memory_object_stream[Event](EVENT_BUFFER)
        self._subscribers.add(send)
        try:
            with send, receive:
                yield receive
        finally:
            self._subscribers.discard(send)


def _replace(records: Records, changed: list[Record]) -> None:
    """Write the new state of jobs that are still recorded: one deleted while it ran (a backup
    deleted by its user) stays deleted."""
    for record in changed:
        if record["id"] in records:
            records[record["id"]] = record


def _kill_leftovers(record: Record) -> None:
    for entry in record.get("pgids") or []:
        valid = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
        if valid and programs.kill_stale_group(entry[0], entry[1]):
            log.warning(
                "killed process group %d left by %s %s",
                entry[0],
                record.get("kind"),
                record.get("id"),
            )


def _remove_files(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)  # unlink never follows a symlink: it removes the link itself


def _prune(records: Records, kind: str) -> None:
    """Keep the newest ``MAX_FINISHED_PER_KIND`` finished records of ``kind`` (not backups,
    which are the catalogue of files and go only when deleted)."""
    if kind == "backup":
        return
    finished = [
        r for r in records.values() if r.get("kind") == kind and r.get("status") not in UNFINISHED
    ]
    finished.sort(key=lambda r: str(r.get("created_at", "")))
    for record in finished[: max(0, len(finished) - MAX_FINISHED_PER_KIND)]:
        records.pop(record["id"], None)
