"""The app's routes: health, status, the ``/ws/logs`` stream, and its JSON error handlers.

Every route here runs behind ``SecurityMiddleware``: by the time an endpoint runs, Host,
Origin and token have been checked. Endpoints close over the ``AppConfig`` and the
``Streams`` registry they are built with, so a test can build routes for a hand-made config.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ExceptionHandler
from starlette.websockets import WebSocket

from dbtkd.app.config import AppConfig
from dbtkd.app.db.profiles import InvalidProfileError, ProfileNotFoundError
from dbtkd.app.endpoints import ApiError
from dbtkd.app.logtail import follow_log, parse_backlog
from dbtkd.app.responses import ErrorResponse, describe
from dbtkd.app.store import StoreTooNewError, StoreUnwritable
from dbtkd.app.streams import Streams

# Every stream the app serves, listed in status even with no client (more join in later
# items: backups, terminal, migrator, analytics).
STREAM_NAMES = ("logs",)


def build_routes(config: AppConfig, streams: Streams) -> list[BaseRoute]:
    """The routes for one app instance."""

    async def health(request: Request) -> Response:
        # Liveness only, and the one route open without a token: it must say nothing more.
        return JSONResponse({"status": "ok"})

    async def api_health(request: Request) -> Response:
        # "healthy", as the old backend answered (UI-CONTRACT; issue 12 item 2).
        return JSONResponse({"status": "healthy", "version": config.version})

    async def status(request: Request) -> Response:
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
        try:
            backlog = parse_backlog(websocket.query_params.get("backlog"))
        except ValueError as error:
            await _deny(websocket, 400, "bad_request", str(error))
            return
        await streams.serve(
            "logs", websocket, functools.partial(follow_log, path=config.log_file, backlog=backlog)
        )

    async def metrics(request: Request) -> Response:
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

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/api/v1/health", api_health, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
        WebSocketRoute("/ws/logs", logs),
    ]
    routes.append(Route("/metrics", metrics, methods=["GET"]))
    if "raise" in config.test_faults:
        routes.append(Route("/api/v1/_test/raise", raise_for_test, methods=["GET"]))
    if "block" in config.test_faults:
        # Watchdog tests: hang the event loop inside a function the stack dump must name,
        # and keep many requests busy without hanging it.
        routes.append(Route("/api/v1/_test/block", block_for_test, methods=["POST"]))
        routes.append(Route("/api/v1/_test/sleep", sleep_for_test, methods=["GET"]))
    return routes


def _test_fault_block_event_loop(seconds: float) -> None:
    """Block the worker's event loop (test fault ``block``); named so stack dumps show it."""
    time.sleep(seconds)


async def _deny(websocket: WebSocket, status: int, error: str, detail: str) -> None:
    """Refuse an upgrade the gate let through (a bad query parameter) with an HTTP status."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(ErrorResponse(status, error, detail))
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
    return ErrorResponse(exc.status_code, error, detail, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A 500 that names no internals: the traceback goes to the log, not to the client."""
    return ErrorResponse(
        500,
        "internal_error",
        f"expected {request.method} {describe(request.url.path)} to succeed; the worker failed "
        "(the traceback is in dbtkd.log: `dbtkctl logs`)",
    )


async def api_error(request: Request, exc: Exception) -> Response:
    """A client mistake a route raised (``ApiError``): its status, code and sentence."""
    assert isinstance(exc, ApiError)
    return ErrorResponse(exc.status, exc.error, exc.detail)


async def unknown_connection(request: Request, exc: Exception) -> Response:
    return ErrorResponse(
        404,
        "not_found",
        "expected the id of a saved connection (GET /api/v1/connections lists them); "
        f"got {describe(str(exc.args[0]) if exc.args else '')}",
    )


async def invalid_profile(request: Request, exc: Exception) -> Response:
    return ErrorResponse(422, "invalid_params", str(exc))


async def store_too_new(request: Request, exc: Exception) -> Response:
    return ErrorResponse(409, "store_too_new", str(exc))


async def store_unwritable(request: Request, exc: Exception) -> Response:
    """A full (507) or read-only (503) data dir: nothing was saved; reads go on."""
    assert isinstance(exc, StoreUnwritable)
    return ErrorResponse(exc.status, exc.code, str(exc))


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
