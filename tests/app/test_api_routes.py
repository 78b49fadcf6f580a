"""The app from ``create_app``: routes, JSON errors, and the gate in front of routing."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from starlette.applications import Starlette
from starlette.types import Message

from dbtkd.app import AppConfig, create_app
from tests.app.asgi_calls import (
    ALLOWED_ORIGIN,
    TOKEN,
    call_http,
    http_scope,
    open_websocket,
    websocket_scope,
)

pytestmark = pytest.mark.anyio


async def test_health_is_liveness_only_and_needs_no_token(app: Starlette) -> None:
    result = await call_http(app, http_scope("GET", "/health", token=None))
    assert result.status == 200
    assert result.json() == {"status": "ok"}


async def test_api_health_names_the_version(app: Starlette) -> None:
    result = await call_http(app, http_scope("GET", "/api/v1/health"))
    health = result.json()
    # Where passwords are kept depends on this machine's keyring (tests/app/db/test_keyring.py).
    assert health.pop("passwords")["store"] in ("keyring", "file")
    assert health == {"status": "healthy", "version": "9.9.9"}


async def test_status_reports_daemon_worker_and_streams(app: Starlette) -> None:
    result = await call_http(app, http_scope("GET", "/api/v1/status"))
    assert result.status == 200
    status = result.json()
    assert status["version"] == "9.9.9"
    assert status["pid"] == 4242
    assert status["worker_pid"] == os.getpid()
    assert 99 < status["uptime"] < 200
    assert 9 < status["worker_uptime"] < 100
    assert status["worker_restarts"] == 3
    assert status["websockets"] == {
        "logs": 0,
        "backups": 0,
        "migrator": 0,
        "terminal": 0,
        "events": 0,
    }
    assert TOKEN not in result.body.decode()


async def test_status_counts_open_log_streams(app: Starlette) -> None:
    async with open_websocket(app, websocket_scope(query_string=b"backlog=0")) as client:
        assert (await client.receive())["type"] == "websocket.accept"
        result = await call_http(app, http_scope("GET", "/api/v1/status"))
        assert result.json()["websockets"]["logs"] == 1
    result = await call_http(app, http_scope("GET", "/api/v1/status"))
    assert result.json()["websockets"]["logs"] == 0


async def test_unknown_path_without_token_is_401_not_404(app: Starlette) -> None:
    result = await call_http(app, http_scope("GET", "/no/such/path", token=None))
    assert result.status == 401
    assert result.header("www-authenticate") == "Bearer"


async def test_unknown_path_with_token_is_a_json_404(app: Starlette) -> None:
    result = await call_http(app, http_scope("GET", "/no/such/path"))
    assert result.status == 404
    assert result.json()["error"] == "not_found"
    assert "/no/such/path" in result.json()["detail"]


async def test_trailing_slash_is_404_not_a_redirect(app: Starlette) -> None:
    assert (await call_http(app, http_scope("GET", "/api/v1/health/"))).status == 404


async def test_wrong_method_is_a_json_405_naming_the_allowed_ones(app: Starlette) -> None:
    result = await call_http(app, http_scope("DELETE", "/api/v1/status"))
    assert result.status == 405
    assert result.json()["error"] == "method_not_allowed"
    assert "GET" in result.json()["detail"]
    assert "GET" in (result.header("allow") or "")


async def test_test_route_is_absent_without_the_fault(app: Starlette) -> None:
    result = await call_http(app, http_scope("GET", "/api/v1/_test/raise"))
    assert result.status == 404


async def test_raise_fault_gives_a_real_500_with_cors_headers(app_config: AppConfig) -> None:
    app = create_app(dataclasses.replace(app_config, test_faults=frozenset({"raise"})))
    scope = http_scope("GET", "/api/v1/_test/raise", [("origin", ALLOWED_ORIGIN)])
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    # Starlette answers, then re-raises so the server logs the traceback.
    with pytest.raises(RuntimeError, match="test fault 'raise'"):
        await app(scope, receive, send)
    assert sent[0]["status"] == 500
    headers = dict(sent[0]["headers"])
    assert headers[b"access-control-allow-origin"] == ALLOWED_ORIGIN.encode()
    body = json.loads(b"".join(message["body"] for message in sent[1:]))
    assert body["error"] == "internal_error"
    assert "RuntimeError" not in body["detail"]  # the traceback goes to the log only


async def test_raise_fault_still_needs_the_token(app_config: AppConfig) -> None:
    app = create_app(dataclasses.replace(app_config, test_faults=frozenset({"raise"})))
    result = await call_http(app, http_scope("GET", "/api/v1/_test/raise", token=None))
    assert result.status == 401


async def test_text_plain_post_to_unknown_path_is_415_not_404(app: Starlette) -> None:
    headers = [("content-type", "text/plain"), ("content-length", "5")]
    result = await call_http(app, http_scope("POST", "/nope", headers), [b"hello"])
    assert result.status == 415


def test_config_repr_hides_the_token(app_config: AppConfig) -> None:
    assert TOKEN not in repr(app_config)


@pytest.mark.parametrize(
    ("changes", "message"), [({"token": ""}, "non-empty token"), ({"port": 0}, "TCP port")]
)
def test_config_refuses_values_that_would_weaken_the_gate(
    app_config: AppConfig, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(app_config, **changes)  # type: ignore[arg-type]
