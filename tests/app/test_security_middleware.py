"""SecurityMiddleware at the ASGI level: each step of DESIGN §5, in order, with tiny apps."""

from __future__ import annotations

import json

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from dbtkd.app.security import DRAIN_TIMEOUT, MAX_BODY_BYTES, SecurityMiddleware
from tests.app.asgi_calls import (
    ALLOWED_ORIGIN,
    ALLOWED_ORIGINS,
    GOOD_SUBPROTOCOLS,
    PORT,
    TOKEN,
    call_http,
    call_websocket,
    http_scope,
    websocket_scope,
)

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


class RecordingApp:
    """Answers 200 with the body it read; remembers whether it ran at all."""

    def __init__(
        self, extra_headers: list[tuple[bytes, bytes]] | None = None, *, read_body: bool = True
    ) -> None:
        self.calls = 0
        self.bytes_read = 0
        self.extra_headers = extra_headers or []
        self.read_body = read_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if scope["type"] == "websocket":
            await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][-1]})
            await send({"type": "websocket.close", "code": 1000})
            return
        body = b""
        while self.read_body:
            message = await receive()
            body += message.get("body", b"")
            self.bytes_read = len(body)
            if not message.get("more_body", False):
                break
        headers = [(b"content-type", b"application/json"), *self.extra_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"read": len(body)}).encode()})


def gate(app: RecordingApp | None = None) -> SecurityMiddleware:
    return SecurityMiddleware(
        app or RecordingApp(), token=TOKEN, port=PORT, allowed_origins=ALLOWED_ORIGINS
    )


def json_headers(length: int) -> list[tuple[str, str]]:
    return [("content-type", "application/json"), ("content-length", str(length))]


# -- step 1: Host ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        f"evil.example:{PORT}",
        f"localhost.evil.example:{PORT}",
        f"0.0.0.0:{PORT}",
        f"127.0.0.1:{PORT + 1}",
        "127.0.0.1",
        "localhost",
        f"[::1]:{PORT}",
    ],
)
async def test_foreign_host_is_403_even_with_the_token(host: str) -> None:
    inner = RecordingApp()
    result = await call_http(gate(inner), http_scope(host=host))
    assert result.status == 403
    assert result.json()["error"] == "host_not_allowed"
    assert repr(host) in result.json()["detail"]
    assert inner.calls == 0


async def test_missing_host_on_http_1_0_is_403_even_with_the_token() -> None:
    result = await call_http(gate(), http_scope(host=None, http_version="1.0"))
    assert result.status == 403
    assert "got no Host header" in result.json()["detail"]


async def test_two_host_headers_are_403() -> None:
    scope = http_scope(headers=[("host", f"evil.example:{PORT}")])
    assert (await call_http(gate(), scope)).status == 403


@pytest.mark.parametrize("host", [f"127.0.0.1:{PORT}", f"localhost:{PORT}"])
async def test_both_loopback_names_with_the_port_are_accepted(host: str) -> None:
    assert (await call_http(gate(), http_scope(host=host))).status == 200


async def test_host_refusal_comes_before_origin_and_has_no_access_control_headers() -> None:
    scope = http_scope(host="evil.example", headers=[("origin", ALLOWED_ORIGIN)])
    result = await call_http(gate(), scope)
    assert result.status == 403
    assert result.json()["error"] == "host_not_allowed"
    assert result.access_control_headers() == set()


# -- step 2: Origin --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "file://", "http://localhost:5173.evil.example", "APP://DBTK"],
)
async def test_foreign_origin_is_403_without_access_control_headers(origin: str) -> None:
    inner = RecordingApp()
    result = await call_http(gate(inner), http_scope(headers=[("origin", origin)]))
    assert result.status == 403
    assert result.json()["error"] == "origin_not_allowed"
    assert result.access_control_headers() == set()
    assert inner.calls == 0


async def test_null_and_file_origins_are_refused_even_when_configured() -> None:
    middleware = SecurityMiddleware(
        RecordingApp(), token=TOKEN, port=PORT, allowed_origins=("null", "file://")
    )
    for origin in ("null", "file://"):
        result = await call_http(middleware, http_scope(headers=[("origin", origin)]))
        assert result.status == 403


async def test_response_to_an_allowed_origin_echoes_it_and_varies_on_origin() -> None:
    result = await call_http(gate(), http_scope(headers=[("origin", ALLOWED_ORIGIN)]))
    assert result.status == 200
    assert result.header("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "Origin" in result.header_values("vary")
    assert result.header("access-control-allow-credentials") is None


async def test_response_without_origin_has_no_allow_origin_header() -> None:
    result = await call_http(gate(), http_scope())
    assert result.status == 200
    assert result.access_control_headers() == set()


async def test_the_app_cannot_widen_cors_to_star() -> None:
    inner = RecordingApp(extra_headers=[(b"access-control-allow-origin", b"*")])
    result = await call_http(gate(inner), http_scope(headers=[("origin", ALLOWED_ORIGIN)]))
    assert result.header_values("access-control-allow-origin") == [ALLOWED_ORIGIN]


async def test_error_responses_to_an_allowed_origin_carry_cors_headers() -> None:
    scope = http_scope(token=None, headers=[("origin", ALLOWED_ORIGIN)])
    result = await call_http(gate(), scope)
    assert result.status == 401
    assert result.header("access-control-allow-origin") == ALLOWED_ORIGIN


# -- step 3: CORS preflight ------------------------------------------------------------------


def preflight_scope(origin: str, *extra: tuple[str, str]) -> Scope:
    headers = [("origin", origin), ("access-control-request-method", "POST"), *extra]
    return http_scope("OPTIONS", "/api/v1/connections", headers, token=None)


async def test_preflight_from_allowed_origin_is_204_without_token() -> None:
    inner = RecordingApp()
    result = await call_http(gate(inner), preflight_scope(ALLOWED_ORIGIN))
    assert result.status == 204
    assert result.header("access-control-allow-origin") == ALLOWED_ORIGIN
    assert "Origin" in result.header_values("vary")
    assert result.header("access-control-allow-methods") == "GET, POST, PUT, DELETE"
    assert result.header("access-control-allow-headers") == "Authorization, Content-Type"
    assert result.header("access-control-max-age") == "600"
    assert result.header("access-control-allow-credentials") is None
    assert result.header("access-control-allow-private-network") is None
    assert result.body == b""
    assert inner.calls == 0


async def test_preflight_asking_for_private_network_access_is_granted_it() -> None:
    scope = preflight_scope(ALLOWED_ORIGIN, ("access-control-request-private-network", "true"))
    result = await call_http(gate(), scope)
    assert result.status == 204
    assert result.header("access-control-allow-private-network") == "true"


async def test_preflight_from_foreign_origin_is_403_without_access_control_headers() -> None:
    result = await call_http(gate(), preflight_scope("https://evil.example"))
    assert result.status == 403
    assert result.access_control_headers() == set()


async def test_options_without_request_method_is_no_preflight_and_needs_the_token() -> None:
    scope = http_scope("OPTIONS", "/api/v1/health", [("origin", ALLOWED_ORIGIN)], token=None)
    assert (await call_http(gate(), scope)).status == 401


# -- step 4: token ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        "Bearer ",
        f"Basic {TOKEN}",
        TOKEN,
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer tökén",
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/status"),
        ("GET", "/no/such/path"),
        ("POST", "/health"),
        ("HEAD", "/health"),
        ("DELETE", "/api/v1/connections/1"),
    ],
)
async def test_missing_or_wrong_token_is_401_on_every_route(
    authorization: str | None, method: str, path: str
) -> None:
    headers = [("authorization", authorization)] if authorization is not None else []
    inner = RecordingApp()
    result = await call_http(gate(inner), http_scope(method, path, headers, token=None))
    assert result.status == 401
    assert result.header("www-authenticate") == "Bearer"
    assert result.json()["error"] == "unauthorized"
    assert "Bearer <token>" in result.json()["detail"]
    assert TOKEN not in result.body.decode()
    assert inner.calls == 0


async def test_two_authorization_headers_are_401_even_if_one_is_right() -> None:
    scope = http_scope(headers=[("authorization", "Bearer other")])
    assert (await call_http(gate(), scope)).status == 401


async def test_bearer_scheme_is_case_insensitive() -> None:
    scope = http_scope(headers=[("authorization", f"bearer {TOKEN}")], token=None)
    assert (await call_http(gate(), scope)).status == 200


async def test_get_health_is_the_only_request_without_token() -> None:
    result = await call_http(gate(), http_scope("GET", "/health", token=None))
    assert result.status == 200


# -- step 5: JSON bodies only ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/connections", "/no/such/path", "/health"])
async def test_text_plain_body_is_415_on_any_path(path: str) -> None:
    headers = [("content-type", "text/plain"), ("content-length", "2")]
    inner = RecordingApp()
    result = await call_http(gate(inner), http_scope("POST", path, headers), [b"{}"])
    assert result.status == 415
    assert result.json()["error"] == "unsupported_media_type"
    assert "'text/plain'" in result.json()["detail"]
    assert inner.calls == 0


async def test_body_without_content_type_is_415() -> None:
    scope = http_scope("POST", "/api/v1/connections", [("content-length", "2")])
    assert (await call_http(gate(), scope, [b"{}"])).status == 415


async def test_chunked_form_body_is_415() -> None:
    headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("transfer-encoding", "chunked"),
    ]
    scope = http_scope("POST", "/api/v1/connections", headers)
    assert (await call_http(gate(), scope, [b"a=1"])).status == 415


async def test_body_check_comes_after_the_token_check() -> None:
    headers = [("content-type", "text/plain"), ("content-length", "2")]
    scope = http_scope("POST", "/api/v1/connections", headers, token=None)
    assert (await call_http(gate(), scope, [b"{}"])).status == 401


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_body_with_or_without_parameters_passes(content_type: str) -> None:
    headers = [("content-type", content_type), ("content-length", "2")]
    result = await call_http(gate(), http_scope("POST", "/x", headers), [b"{}"])
    assert result.status == 200
    assert result.json() == {"read": 2}


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
@pytest.mark.parametrize("headers", [[], [("content-length", "0")]])
async def test_bodyless_requests_need_no_content_type(
    method: str, headers: list[tuple[str, str]]
) -> None:
    assert (await call_http(gate(), http_scope(method, "/x", headers))).status == 200


async def test_undeclared_non_json_body_is_refused_as_it_arrives() -> None:
    # HTTP/2 may send a body with neither Content-Length nor chunked encoding.
    inner = RecordingApp()
    result = await call_http(gate(inner), http_scope("POST", "/x"), [b"a=1", b""])
    assert result.status == 415
    assert result.body_bytes_consumed == 3


async def test_malformed_content_length_is_400() -> None:
    scope = http_scope("POST", "/x", [("content-type", "application/json")])
    scope["headers"].append((b"content-length", b"12abc"))
    assert (await call_http(gate(), scope)).status == 400


# -- step 6: 1 MiB body cap ------------------------------------------------------------------


async def test_2_mib_content_length_is_413_before_the_app_runs() -> None:
    inner = RecordingApp()
    scope = http_scope("POST", "/api/v1/connections", json_headers(2 * MIB))
    result = await call_http(gate(inner), scope, [b"x" * 1024])
    assert result.status == 413
    assert result.json()["error"] == "payload_too_large"
    assert str(2 * MIB) in result.json()["detail"]
    assert inner.calls == 0
    assert result.body_bytes_consumed == 1024  # drained by the gate, so the connection lives


async def test_chunked_body_over_1_mib_is_413_and_the_app_gets_no_more_of_it() -> None:
    headers = [("content-type", "application/json"), ("transfer-encoding", "chunked")]
    chunks = [b"x" * (256 * 1024)] * 8  # 2 MiB in all
    inner = RecordingApp()
    result = await call_http(gate(inner), http_scope("POST", "/x", headers), chunks)
    assert result.status == 413
    # The app got the first 1 MiB; the chunk that crossed the limit and the rest were drained.
    assert inner.bytes_read == MAX_BODY_BYTES
    assert result.body_bytes_consumed == 2 * MIB


async def test_body_of_exactly_1_mib_passes() -> None:
    chunks = [b"x" * (512 * 1024)] * 2
    scope = http_scope("POST", "/x", json_headers(MAX_BODY_BYTES))
    result = await call_http(gate(), scope, chunks)
    assert result.status == 200
    assert result.json() == {"read": MAX_BODY_BYTES}


async def test_refused_upload_is_drained_so_the_connection_can_be_reused() -> None:
    headers = [("content-type", "application/json"), ("transfer-encoding", "chunked")]
    scope = http_scope("POST", "/x", headers, token=None)
    result = await call_http(gate(), scope, [b"x" * 65536] * 32)
    assert result.status == 401
    assert result.body_bytes_consumed == 32 * 65536


async def test_upload_far_over_the_cap_is_answered_and_drained_beside_the_answer() -> None:
    headers = [("content-type", "application/json"), ("transfer-encoding", "chunked")]
    scope = http_scope("POST", "/x", headers, token=None)
    result = await call_http(gate(), scope, [b"x" * 65536] * 160)  # 10 MiB
    assert result.status == 401
    assert result.body_bytes_consumed == 160 * 65536


async def test_client_that_stalls_mid_body_still_gets_its_answer() -> None:
    scope = http_scope("POST", "/x", json_headers(2 * MIB), token=None)
    with anyio.fail_after(5 * DRAIN_TIMEOUT):
        result = await call_http(gate(), scope, [b"x" * 1024], body_ends=False)
    assert result.status == 401


async def test_body_the_app_left_unread_is_drained_before_its_answer_ends() -> None:
    inner = RecordingApp(read_body=False)
    scope = http_scope("POST", "/x", json_headers(3 * 4096))
    result = await call_http(gate(inner), scope, [b"x" * 4096] * 3)
    assert result.status == 200
    assert inner.bytes_read == 0
    assert result.body_bytes_consumed == 3 * 4096


# -- step 7: routing happens only after the gate ---------------------------------------------


async def test_lifespan_passes_straight_through() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = SecurityMiddleware(
        lifespan_app, token=TOKEN, port=PORT, allowed_origins=ALLOWED_ORIGINS
    )

    async def no_receive() -> Message:
        raise AssertionError("not called")

    async def no_send(message: Message) -> None:
        raise AssertionError("not called")

    await middleware({"type": "lifespan"}, no_receive, no_send)
    assert seen == ["lifespan"]


def test_an_empty_token_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="non-empty token"):
        SecurityMiddleware(RecordingApp(), token="", port=PORT, allowed_origins=())


# -- WebSocket -------------------------------------------------------------------------------


def denial(messages: list[Message]) -> tuple[int, dict[str, str]]:
    """The status and JSON body of a denial response; fails on anything else."""
    assert [m["type"] for m in messages] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ], messages
    body = messages[1]["body"]
    return messages[0]["status"], json.loads(body)


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "file://"])
async def test_websocket_from_foreign_or_null_origin_is_403_denial_response(origin: str) -> None:
    inner = RecordingApp()
    scope = websocket_scope(headers=[("origin", origin)])
    status, body = denial(await call_websocket(gate(inner), scope))
    assert (status, body["error"]) == (403, "origin_not_allowed")
    assert inner.calls == 0


@pytest.mark.parametrize("host", [f"evil.example:{PORT}", f"0.0.0.0:{PORT}", None])
async def test_websocket_with_foreign_or_missing_host_is_403(host: str | None) -> None:
    status, body = denial(await call_websocket(gate(), websocket_scope(host=host)))
    assert (status, body["error"]) == (403, "host_not_allowed")


async def test_websocket_without_token_is_401_denial_response() -> None:
    scope = websocket_scope(subprotocols=["dbtk.v1"])
    status, body = denial(await call_websocket(gate(), scope))
    assert (status, body["error"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    "bearers",
    [["dbtk.bearer.wrong"], ["dbtk.bearer."], [f"dbtk.bearer.{TOKEN}", "dbtk.bearer.other"]],
)
async def test_websocket_with_wrong_token_is_401(bearers: list[str]) -> None:
    scope = websocket_scope(subprotocols=["dbtk.v1", *bearers])
    status, body = denial(await call_websocket(gate(), scope))
    assert status == 401
    assert TOKEN not in json.dumps(body)


async def test_websocket_without_dbtk_v1_is_403_even_with_the_token() -> None:
    scope = websocket_scope(subprotocols=[f"dbtk.bearer.{TOKEN}"])
    status, body = denial(await call_websocket(gate(), scope))
    assert (status, body["error"]) == (403, "subprotocol_required")
    assert TOKEN not in json.dumps(body)


async def test_websocket_origin_is_checked_before_the_token() -> None:
    scope = websocket_scope(headers=[("origin", "null")], subprotocols=["dbtk.v1"])
    status, _ = denial(await call_websocket(gate(), scope))
    assert status == 403


async def test_websocket_with_both_subprotocols_is_accepted_selecting_dbtk_v1() -> None:
    # RecordingApp tries to select the last offered subprotocol, the bearer one.
    scope = websocket_scope(headers=[("origin", ALLOWED_ORIGIN)], subprotocols=GOOD_SUBPROTOCOLS)
    messages = await call_websocket(gate(), scope)
    assert messages[0] == {"type": "websocket.accept", "subprotocol": "dbtk.v1"}


async def test_websocket_refusal_without_the_denial_extension_closes_before_accept() -> None:
    scope = websocket_scope(subprotocols=["dbtk.v1"], denial_extension=False)
    messages = await call_websocket(gate(), scope)
    assert messages == [{"type": "websocket.close", "code": 1008}]
