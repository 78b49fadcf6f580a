"""Every URL the app serves, in one table (``build_routes``), and its one error mapping
(``EXCEPTION_HANDLERS``); the endpoints of health, status, metrics and ``/ws/logs``.

Every route runs behind ``SecurityMiddleware``: by the time an endpoint runs, Host, Origin and
token have been checked. Endpoints are module-level functions that read what they need from
``app.state`` (``config``, ``streams``, ``database``, ``jobs``, ``backups``, ...), which
``create_app`` fills, so a test can build the app for a hand-made config.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ExceptionHandler, Receive, Scope, Send
from starlette.websockets import WebSocket

from dbtkd.app import (
    ai,
    analytics,
    analyticsapi,
    backups,
    connections,
    csvdata,
    data,
    events,
    issues,
    jobapi,
    queries,
    schedules,
    schema,
    uisettings,
)
from dbtkd.app.config import AppConfig
from dbtkd.app.db.profiles import STORE_FILE, InvalidProfileError, ProfileNotFoundError
from dbtkd.app.endpoints import ApiError, route
from dbtkd.app.loading import HEALTH_BODY
from dbtkd.app.logtail import follow_log, parse_backlog
from dbtkd.app.responses import describe, error_response
from dbtkd.app.store import StoreTooNewError, StoreUnwritable
from dbtkd.app.streams import Streams
from dbtkd.passwords import report as password_report

# Streams listed in status even with no client; the jobs' streams (backups, migrator,
# terminal) and /ws/events add their names in create_app.
STREAM_NAMES = ("logs",)


async def health(request: Request) -> Response:
    # Liveness only, and the one route open without a token: it must say nothing more. The
    # same bytes as the worker's answer while it loads the app (dbtkd.app.loading).
    return Response(HEALTH_BODY, media_type="application/json")


async def api_health(request: Request) -> Response:
    config = request.app.state.config
    # "healthy", as the old backend answered (UI-CONTRACT; issue 12 item 2), and where saved
    # passwords are kept (docs/security.md), without any password.
    passwords = await anyio.to_thread.run_sync(
        password_report, os.path.join(config.data_dir, STORE_FILE)
    )
    return JSONResponse({"status": "healthy", "version": config.version, "passwords": passwords})


async def status(request: Request) -> Response:
    config, streams = _state(request)
    now = time.time()
    return JSONResponse(
        {
            "version": config.version,
            "pid": config.daemon_pid,
            "worker_pid": os.getpid(),
            "uptime": round(now - config.daemon_started_at, 3),
            "worker_uptime": round(now - config.worker_started_at, 3),
            "worker_restarts": config.worker_restarts,
            "websockets": streams.counts(),
        }
    )


async def logs(websocket: WebSocket) -> None:
    config, streams = _state(websocket)
    try:
        backlog = parse_backlog(websocket.query_params.get("backlog"))
    except ValueError as error:
        await _deny(websocket, 400, "bad_request", str(error))
        return
    await streams.serve(
        "logs", websocket, functools.partial(follow_log, path=config.log_file, backlog=backlog)
    )


async def metrics(request: Request) -> Response:
    config, streams = _state(request)
    from dbtkd import procstats
    from dbtkd.app.meter import Meter, render

    # The worker wraps the app in its Meter; an app served any other way reports no
    # request figures rather than failing.
    meter = getattr(request.app.state, "meter", None) or Meter(request.app)
    view = getattr(request.app.state, "supervisor_view", {})
    processes = {"worker": procstats.read(os.getpid())}
    if view.get("supervisor"):
        processes["supervisor"] = view["supervisor"]
    text = render(
        meter,
        processes=processes,
        uptime_seconds=time.time() - config.daemon_started_at,
        restarts=view.get("restarts", {}),
        leases=int(view.get("leases", 0)),
        websockets=streams.counts(),
        app_load_seconds=getattr(getattr(request.app.state, "loading", None), "loaded_in", None),
    )
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def raise_for_test(request: Request) -> Response:
    raise RuntimeError("test fault 'raise': GET /api/v1/_test/raise fails on purpose")


async def block_for_test(request: Request) -> Response:
    _test_fault_block_event_loop(float(request.query_params.get("seconds", "1")))
    return JSONResponse({"blocked": True})


async def sleep_for_test(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("seconds", "1")))
    return JSONResponse({"slept": True})


class FromState:
    """An ASGI endpoint that hands the connection to ``app.state.<name>``: the WebSocket
    endpoints that are objects built with the app (``Migrator``, ``Terminal``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await getattr(scope["app"].state, self.name)(scope, receive, send)


def build_routes(config: AppConfig) -> list[BaseRoute]:
    """Every URL the app serves, in one table. Endpoints are module-level functions that read
    what they need from ``request.app.state`` (``database``, ``jobs``, ``backups``, ...)."""
    connection = "/api/v1/connections/{id}"
    analytics_of = "/api/v1/analytics/connections/{id}"
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/v1/health", api_health, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
        # Saved connections, queries, history and schema (docs/database-api.md).
        route(
            "/api/v1/connections",
            {"GET": connections.list_connections, "POST": connections.create_connection},
        ),
        route("/api/v1/connections/test", {"POST": connections.test_connection}),
        route(
            connection,
            {
                "GET": connections.get_connection,
                "PUT": connections.update_connection,
                "DELETE": connections.delete_connection,
            },
        ),
        route(f"{connection}/connect", {"POST": connections.connect}),
        route(f"{connection}/disconnect", {"POST": connections.disconnect}),
        route(f"{connection}/query", {"POST": queries.run_query}),
        route(
            f"{connection}/query/history",
            {"GET": queries.list_history, "DELETE": queries.clear_history},
        ),
        route(f"{connection}/schema", {"GET": schema.tree}),
        route(f"{connection}/schema/refresh", {"POST": schema.refresh}),
        route(f"{connection}/schema/{{schema}}/tables/{{table}}", {"GET": schema.table}),
        route(f"{connection}/data/browse", {"POST": data.browse}),
        route(f"{connection}/data/count", {"GET": data.count}),
        route(f"{connection}/data/cell", {"POST": data.cell}),
        route(f"{connection}/data/row", {"PUT": data.update_row, "DELETE": data.delete_row}),
        route("/api/v1/csv/export", {"POST": csvdata.export}),
        route("/api/v1/csv/import", {"POST": csvdata.import_csv}),
        route("/api/v1/ai/query/generate", {"POST": ai.generate}),
        route("/api/v1/ai/schema/analyze", {"POST": ai.analyze}),
        route("/api/v1/issues", {"POST": issues.report_issue}),
        route("/api/v1/analytics/connections/{id}", {"GET": analytics.connection_stats}),
        route(f"{analytics_of}/history", {"GET": analyticsapi.history}),
        route(f"{analytics_of}/slow-queries", {"GET": analyticsapi.slow_queries}),
        route(f"{analytics_of}/table-stats", {"GET": analyticsapi.table_stats}),
        route(f"{analytics_of}/pool-stats", {"GET": analyticsapi.pool_stats}),
        route(f"{analytics_of}/kill", {"POST": analyticsapi.kill}),
        route(f"{analytics_of}/query-plan", {"POST": analyticsapi.query_plan}),
        route(f"{analytics_of}/export-pdf", {"GET": analyticsapi.export_pdf}),
        route("/api/v1/settings", {"GET": uisettings.get_settings, "PUT": uisettings.put_settings}),
        route("/api/v1/settings/reset", {"POST": uisettings.reset_settings}),
        # Jobs: backups, restores, schedules (docs/jobs.md).
        route("/api/v1/jobs", {"GET": jobapi.list_jobs}),
        route("/api/v1/jobs/{id}", {"GET": jobapi.get_job}),
        route("/api/v1/jobs/{id}/cancel", {"POST": jobapi.cancel_job}),
        route("/api/v1/backups", {"GET": backups.list_backups, "POST": backups.create_backup}),
        route("/api/v1/backups/{id}", {"GET": backups.get_backup, "DELETE": backups.delete_backup}),
        route("/api/v1/backups/{id}/restore", {"POST": backups.restore_backup}),
        route("/api/v1/backups/{id}/download", {"GET": backups.download_backup}),
        route("/api/v1/backups/{id}/verify", {"POST": backups.verify_backup}),
        route(
            "/api/v1/backup-schedules",
            {"GET": schedules.list_schedules, "POST": schedules.create_schedule},
        ),
        route(
            "/api/v1/backup-schedules/{id}",
            {
                "GET": schedules.get_schedule,
                "PUT": schedules.update_schedule,
                "DELETE": schedules.delete_schedule,
            },
        ),
        route("/api/v1/backup-schedules/{id}/run", {"POST": schedules.run_schedule}),
        # Streams (docs/jobs.md, docs/database-api.md).
        WebSocketRoute("/ws/logs", logs),
        WebSocketRoute("/ws/events", events.events_stream),
        WebSocketRoute("/ws/backups", backups.backups_stream),
        WebSocketRoute("/ws/analytics", analytics.AnalyticsStream()),
        WebSocketRoute("/ws/migrator", FromState("migrator")),
        WebSocketRoute("/ws/terminal", FromState("terminal")),
    ]
    if "raise" in config.test_faults:
        routes.append(Route("/api/v1/_test/raise", raise_for_test, methods=["GET"]))
    if "block" in config.test_faults:
        # Watchdog tests: hang the event loop inside a function the stack dump must name,
        # and keep many requests busy without hanging it.
        routes.append(Route("/api/v1/_test/block", block_for_test, methods=["POST"]))
        routes.append(Route("/api/v1/_test/sleep", sleep_for_test, methods=["GET"]))
    return routes


def _state(connection: HTTPConnection) -> tuple[AppConfig, Streams]:
    state = connection.app.state
    return state.config, state.streams


def _test_fault_block_event_loop(seconds: float) -> None:
    """Block the worker's event loop (test fault ``block``); named so stack dumps show it."""
    time.sleep(seconds)


async def _deny(websocket: WebSocket, status: int, error: str, detail: str) -> None:
    """Refuse an upgrade the gate let through (a bad query parameter) with an HTTP status."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(error_response(status, error, detail))
    else:
        # A close reason is capped at 123 bytes: name the problem, not the detail.
        await websocket.close(1008, error)


async def http_error(request: Request, exc: Exception) -> Response:
    """404, 405 and other HTTPExceptions in the app's JSON error shape."""
    assert isinstance(exc, HTTPException)
    path = describe(request.url.path)
    if exc.status_code == 404:
        error, detail = "not_found", f"expected a known route; got {request.method} {path}"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        error = "method_not_allowed"
        detail = f"expected {allowed} on {path}; got {request.method}"
    else:
        error = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        detail = exc.detail
    return error_response(exc.status_code, error, detail, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A 500 that names no internals: the traceback goes to the log, not to the client."""
    return error_response(
        500,
        "internal_error",
        f"expected {request.method} {describe(request.url.path)} to succeed; the worker failed "
        "(the traceback is in dbtkd.log: `dbtkctl logs`)",
    )


async def api_error(request: Request, exc: Exception) -> Response:
    """A client mistake a route raised (``ApiError``): its status, code and sentence."""
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail)


async def unknown_connection(request: Request, exc: Exception) -> Response:
    return error_response(
        404,
        "not_found",
        "expected the id of a saved connection (GET /api/v1/connections lists them); "
        f"got {describe(str(exc.args[0]) if exc.args else '')}",
    )


async def invalid_profile(request: Request, exc: Exception) -> Response:
    return error_response(422, "invalid_params", str(exc))


async def store_too_new(request: Request, exc: Exception) -> Response:
    return error_response(409, "store_too_new", str(exc))


async def store_unwritable(request: Request, exc: Exception) -> Response:
    """A full (507) or read-only (503) data dir: nothing was saved; reads go on."""
    assert isinstance(exc, StoreUnwritable)
    return error_response(exc.status, exc.code, str(exc))


# The app's one error mapping: every error class a route may raise, to its HTTP answer in the
# app's shape {"error": code, "detail": sentence}. Starlette picks the nearest class in the
# exception's MRO. Exception (and 500) goes to Starlette's ServerErrorMiddleware, which
# re-raises after answering, so Hypercorn still logs the traceback.
EXCEPTION_HANDLERS: Mapping[Any, ExceptionHandler] = {
    ApiError: api_error,
    ProfileNotFoundError: unknown_connection,
    InvalidProfileError: invalid_profile,
    StoreTooNewError: store_too_new,
    StoreUnwritable: store_unwritable,
    HTTPException: http_error,
    Exception: internal_error,
}
