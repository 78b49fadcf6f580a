"""The process side of the API: backups, schedules, jobs, the migrator and the terminal.

``setup_jobs(app, config, streams)`` builds them into ``app.state`` (``backups``,
``schedules``, ``migrator``, ``terminal``; the URLs are in ``dbtkd.app.routes``), with the jobs
endpoints below. It sets ``app.state.jobs`` (the ``Jobs`` registry: the worker's stop calls
its ``cancel_all``,
its pongs report ``running()``) and ``app.state.jobs_running`` (their count, for idle exit),
and wraps the app's lifespan: at startup, jobs left unfinished by a dead worker are failed
(``jobs.startup``), files such a worker left are swept, and the scheduler starts; at shutdown
anything still running is cancelled. Setting up reads no file and imports no driver.

Jobs routes: ``GET /api/v1/jobs[?kind=backup|restore|migration]``, ``GET /api/v1/jobs/{id}``,
``POST /api/v1/jobs/{id}/cancel``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.backups import Backups, ProfileLookup
from dbtkd.app.db.profiles import Profile, ProfileStore
from dbtkd.app.endpoints import ApiError, JSONResponse
from dbtkd.app.jobs import UNFINISHED, Jobs, public_view
from dbtkd.app.migrator import Migrator
from dbtkd.app.programs import sweep_secret_files
from dbtkd.app.responses import describe
from dbtkd.app.schedules import Schedules
from dbtkd.app.store import StoreUnwritable, remove_interrupted_writes
from dbtkd.app.streams import Streams
from dbtkd.app.terminal import Terminal

log = logging.getLogger("dbtkd.app.jobs")

STREAM_NAMES = ("backups", "migrator", "terminal")
# What a job still running when the app shuts down is marked failed with (the worker's stop
# normally cancels them first, with the reason the supervisor gives).
SHUTDOWN_REASON = "interrupted by stop"
KINDS = ("backup", "restore", "migration")
# How often leftovers a read-only data dir kept at start (temporary files of interrupted
# writes, which may hold passwords) are tried again: a listdir while the disk stays read-only.
LEFTOVER_RETRY_INTERVAL = 5.0  # seconds


def _profile_lookup(app: Starlette, data_dir: str) -> ProfileLookup:
    """Saved connections by id: the database API's store when the app exposes it, else the
    connections file itself (written through before every answer, so never stale)."""

    async def profile_of(connection_id: str) -> Profile:
        database = getattr(app.state, "database", None)
        if database is not None:
            profile: Profile = await database.profiles.get(connection_id)
            return profile
        return await ProfileStore(data_dir).get(connection_id)

    return profile_of


def jobs_of(request: Request) -> Jobs:
    """The app's ``Jobs`` (``app.state.jobs``)."""
    jobs: Jobs = request.app.state.jobs
    return jobs


async def list_jobs(request: Request) -> Response:
    kind = request.query_params.get("kind")
    if kind is not None and kind not in KINDS:
        raise ApiError(
            422,
            "invalid_params",
            f"expected kind one of {', '.join(KINDS)}; got {describe(kind)}",
        )
    return JSONResponse([public_view(r) for r in await jobs_of(request).records(kind)])


async def _job(jobs: Jobs, job_id: str) -> dict[str, Any]:
    record = await jobs.get(job_id)
    if record is None:
        raise ApiError(
            404,
            "not_found",
            f"expected the id of a job (GET /api/v1/jobs lists them); got {describe(job_id)}",
        )
    return record


async def get_job(request: Request) -> Response:
    return JSONResponse(public_view(await _job(jobs_of(request), request.path_params["id"])))


async def cancel_job(request: Request) -> Response:
    jobs = jobs_of(request)
    record = await _job(jobs, request.path_params["id"])
    if record.get("status") not in UNFINISHED:
        raise ApiError(
            409, "job_finished", f"expected a running job; this one is {record.get('status')}"
        )
    if not await jobs.cancel(record["id"], "cancelled by the user"):
        raise ApiError(
            409, "job_elsewhere", "the job runs in another worker (a version handoff); retry"
        )
    return JSONResponse(public_view(await _job(jobs, record["id"])))


def setup_jobs(app: Starlette, config: Any, streams: Streams) -> Jobs:
    """The jobs of ``app`` and what runs them: ``app.state.jobs``, ``backups``, ``schedules``,
    ``migrator``, ``terminal`` (the routes in ``dbtkd.app.routes`` read them from there), and
    the lifespan that starts and stops them. Returns its ``Jobs``."""
    jobs = Jobs(config.data_dir)
    feed = getattr(app.state, "events", None)
    if feed is not None:
        from dbtkd.app.events import job_listener

        jobs.listeners.append(job_listener(feed))
    profile_of = _profile_lookup(app, config.data_dir)
    backups = Backups(config, jobs, profile_of)
    schedules = Schedules(config.data_dir, backups, profile_of)
    app.state.backups = backups
    app.state.schedules = schedules
    app.state.migrator = Migrator(streams, jobs, profile_of)
    app.state.terminal = Terminal(streams)
    app.state.jobs = jobs
    app.state.jobs_running = lambda: len(jobs.running())
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with previous(app) as state, anyio.create_task_group() as group:
            await jobs.startup(group)
            try:
                await anyio.to_thread.run_sync(_sweep, jobs, backups)
            except OSError as error:  # housekeeping: never a reason not to serve
                if StoreUnwritable.wraps(error):
                    log.warning(
                        "cannot remove the files of dead workers from %s: %s; retrying every %g s",
                        jobs.data_dir,
                        error.strerror or error,
                        LEFTOVER_RETRY_INTERVAL,
                    )
                else:
                    log.exception("could not sweep the files of dead workers")
                group.start_soon(_remove_leftovers_later, jobs.data_dir, backups.secrets_dir)
            group.start_soon(schedules.run)
            try:
                yield state
            finally:
                with anyio.CancelScope(shield=True):
                    await jobs.cancel_all(SHUTDOWN_REASON)
                group.cancel_scope.cancel()

    app.router.lifespan_context = lifespan
    return jobs


async def _remove_leftovers_later(data_dir: str, secrets_dir: str) -> None:
    """Remove what the start-up sweep could not (a read-only data dir) once it can, with no
    restart. Only files no live process can be writing: store temporaries under their store's
    lock, and secret files of dead workers. Backup files wait for the next start (a backup of
    this worker may be starting one now)."""
    while True:
        await anyio.sleep(LEFTOVER_RETRY_INTERVAL)
        try:
            await anyio.to_thread.run_sync(remove_interrupted_writes, data_dir)
        except OSError:
            continue
        await anyio.to_thread.run_sync(sweep_secret_files, secrets_dir)
        return


def _sweep(jobs: Jobs, backups: Backups) -> None:
    """Remove work files of dead workers: temporary files of store writes they never finished
    (which may hold passwords), hidden backup files no unfinished job claims, and secret files
    (passfiles) of workers that are gone."""
    remove_interrupted_writes(jobs.data_dir)
    records = jobs.store.read_sync()
    claimed = {
        os.path.basename(path)
        for record in records.values()
        if record.get("status") in UNFINISHED
        for path in record.get("partial_files") or []
    }
    if os.path.isdir(backups.files.path) and not os.path.islink(backups.files.path):
        backups.files.sweep(claimed)
    sweep_secret_files(backups.secrets_dir)
