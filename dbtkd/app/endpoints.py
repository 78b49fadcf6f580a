"""What the database routes share: the ``Database`` they serve, JSON bodies, and HTTP errors.

Two kinds of failure leave a database route. The client's own mistakes (an unknown connection
id, a limit out of range, a body that is not a JSON object) are HTTP errors in the app's one
error shape, ``{"error": code, "detail": sentence}``: 404, 422, 400. The database's refusals (bad
SQL, wrong password, a server that went away, a timeout) are not HTTP errors at all: the route
answers 200 with ``success: false`` and the database's message, so the UI shows it where the
result would have been. ``dbtkd.app.routes.EXCEPTION_HANDLERS`` maps the first kind (the
app's one error mapping); each route handles the second.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from dbtkd.app.db.history import QueryHistory
from dbtkd.app.db.profiles import ProfileStore
from dbtkd.app.db.sessions import Sessions
from dbtkd.app.db.tablecache import TableDescriptions
from dbtkd.app.jsontext import lone_surrogate_path
from dbtkd.app.responses import describe

log = logging.getLogger("dbtkd.app.db")

Endpoint = Callable[[Request], Awaitable[Response]]


class Database:
    """The database API's state in one worker: saved connections, open sessions, history.

    Nothing is read or opened until the first request that needs it, so building the app
    (and starting the worker) touches no file and imports no driver.
    """

    def __init__(self, data_dir: str) -> None:
        self.profiles = ProfileStore(data_dir)
        self.sessions = Sessions()
        self.history = QueryHistory(data_dir)
        self.tables = TableDescriptions()  # the data explorer's, see db/tablecache.py


class JSONResponse(Response):
    """A JSON response serialised by orjson with the API's value encodings (``values.dumps``):
    about ten times faster than ``json.dumps`` on a page of 10,000 rows."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        from dbtkd.app.db.values import dumps  # imports orjson with the first response

        return dumps(content)


class ApiError(Exception):
    """A client mistake, answered with ``status`` in the app's error shape."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


def invalid(detail: str) -> ApiError:
    return ApiError(422, "invalid_params", detail)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def database_of(connection: HTTPConnection) -> Database:
    """The app's ``Database`` (``app.state.database``), for a request or a WebSocket."""
    database: Database = connection.app.state.database
    return database


async def read_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    return parse_object(await request.body())


def parse_object(body: bytes | bytearray) -> dict[str, Any]:
    """``body`` as a JSON object (empty is ``{}``), or the API's 400 saying why not."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:
        raise ApiError(
            400, "bad_request", f"expected a JSON object as the body; got {error}"
        ) from None
    if not isinstance(value, dict):
        raise ApiError(
            400, "bad_request", f"expected a JSON object as the body; got a {type(value).__name__}"
        )
    where = lone_surrogate_path(value)
    if where is not None:
        # Stored, it would break every later answer that lists it (see jsontext).
        raise ApiError(
            400,
            "invalid_text",
            f"expected {where} to be text UTF-8 can carry; got a lone surrogate "
            "(a \\ud800-\\udfff escape without its pair). Nothing was saved.",
        )
    return value


def integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"expected {name} to be an integer {low}-{high}; got {value!r:.40}")
    return value


def number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise invalid(
            f"expected {name} to be a number of seconds, more than {low:g} and at most "
            f"{high:g}; got {value!r:.40}"
        )
    return float(value)


def query_integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise invalid(f"expected {name} to be an integer {low}-{high}; got {describe(raw)}")
    return int(raw)


def route(path: str, handlers: dict[str, Endpoint]) -> Route:
    """One route for ``path`` with a handler per method, so a 405 lists every allowed method."""

    async def endpoint(request: Request) -> Response:
        # Starlette answers HEAD through the GET handler (it drops the body).
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers))
