"""The app's one route table and one error mapping (issue 12 item 5).

Every URL is listed in ``dbtkd/app/routes.py`` and nowhere else; endpoints are module-level
and read what they share from ``app.state``; every API error class is answered by one
``EXCEPTION_HANDLERS``, the same way on every route.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route, WebSocketRoute

from dbtkd.app import AppConfig
from dbtkd.app.routes import build_routes
from tests.app.asgi_calls import call_http, http_scope

APP_DIR = Path(__file__).resolve().parents[2] / "dbtkd" / "app"
# The route table, and the helper that builds one route with a handler per method.
TABLE_FILES = {APP_DIR / "routes.py", APP_DIR / "endpoints.py"}
ROUTE_BUILDERS = {"Route", "WebSocketRoute", "Mount", "Host", "route"}


def _shape(route: BaseRoute) -> tuple[str, str, tuple[str, ...]]:
    if isinstance(route, WebSocketRoute):
        return ("ws", route.path, ())
    assert isinstance(route, Route)
    return ("http", route.path, tuple(sorted(route.methods or ())))


def _route_building_calls(path: Path) -> list[str]:
    """Where ``path`` builds a route or adds one to a router: ``file:line what``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        adds = name in ("append", "extend", "insert", "add_route", "add_websocket_route")
        if name in ROUTE_BUILDERS or (adds and "route" in receiver):
            found.append(f"{path.relative_to(APP_DIR)}:{node.lineno} {ast.unparse(func)}")
    return found


def test_no_module_but_the_table_builds_a_route() -> None:
    elsewhere = [
        call
        for path in sorted(APP_DIR.rglob("*.py"))
        if path not in TABLE_FILES
        for call in _route_building_calls(path)
    ]
    assert elsewhere == [], f"expected every URL in dbtkd/app/routes.py; also built in {elsewhere}"


def test_the_app_serves_exactly_the_table(app: Starlette, app_config: AppConfig) -> None:
    served = [_shape(route) for route in app.routes]
    assert served == [_shape(route) for route in build_routes(app_config)]
    assert len(set(served)) == len(served), "a URL is listed twice"


# The table as any app gets it (no test fault on); the config only says which faults are.
TABLE = build_routes(
    AppConfig(
        token="only-to-list-the-table",
        port=1,
        allowed_origins=(),
        version="0",
        daemon_pid=1,
        daemon_started_at=0.0,
        worker_started_at=0.0,
        worker_restarts=0,
        log_file="",
        data_dir="",
    )
)

# Every route under a saved connection's id, each method, with placeholders filled.
CONNECTION_ROUTES = [
    (method, re.sub(r"\{(\w+)\}", lambda m: "no-such-id" if m[1] == "id" else "x", r.path))
    for r in TABLE
    if isinstance(r, Route) and "/connections/{id}" in r.path
    for method in sorted((r.methods or set()) - {"HEAD"})
]


def test_the_connection_routes_are_all_checked() -> None:
    # query, history, schema, analytics, connect...: more than a handful, or the sweep broke.
    assert len(CONNECTION_ROUTES) >= 12, CONNECTION_ROUTES


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), CONNECTION_ROUTES)
async def test_an_unknown_connection_is_one_404_on_every_route(
    app: Starlette, method: str, path: str
) -> None:
    """One handler answers ProfileNotFoundError, whichever endpoint raised it."""
    scope = http_scope(method, path, [("content-type", "application/json")])
    result = await call_http(app, scope, [b"{}"])
    assert result.status == 404, (method, path, result.body)
    assert result.json() == {
        "error": "not_found",
        "detail": "expected the id of a saved connection (GET /api/v1/connections lists them); "
        "got 'no-such-id'",
    }
