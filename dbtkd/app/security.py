"""The one gate in front of every HTTP request and WebSocket upgrade (DESIGN §5).

Binding to 127.0.0.1 protects nothing by itself: every local user can reach the port, and any
web page in the user's browser can send it requests (DNS rebinding, simple POSTs, WebSockets,
which ignore CORS). ``SecurityMiddleware`` wraps the whole Starlette app, outside routing and
outside Starlette's error middleware, and checks in this order: Host, Origin, CORS preflight,
bearer token, JSON-only bodies, the 1 MiB body cap. Only then does a request reach routing, so
an unknown path without a token is 401, never 404. WebSocket upgrades are refused before
accept, as an HTTP response (the ASGI ``websocket.http.response`` extension), so a client sees
a plain 401 or 403 instead of a socket that opens and closes at once.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbtkd.app.responses import describe, error_document
from dbtkd.units import SECONDS

# The application subprotocol every WebSocket client must offer, and the only one the server
# ever selects: selecting the bearer one would echo the token in the handshake response.
SUBPROTOCOL = "dbtk.v1"
# Browsers cannot set headers on a WebSocket upgrade; the offered subprotocols are the one
# place a token can travel without ending up in a URL (and so in logs and history).
BEARER_SUBPROTOCOL_PREFIX = "dbtk.bearer."
# Requests are JSON documents (a connection, a query); 1 MiB is far above any of them and low
# enough that a hostile page cannot make the worker buffer much.
MAX_BODY_BYTES = 1024 * 1024
# A CSV import travels as the file's text inside its JSON body (UI-CONTRACT §6.2): that route
# alone takes up to 64 MiB, about a million rows of a dozen short columns. The import reads it
# once and inserts it in chunks (csvdata), so the worker holds the text, not rows of it.
LARGE_BODY_ROUTES = {"/api/v1/csv/import": 64 * 1024 * 1024}
# Origins that identify no one (sandboxed iframes, local files): refused whatever the
# configured allowlist says.
NEVER_ALLOWED_ORIGINS = frozenset({"null", "file://"})
CORS_ALLOW_METHODS = b"GET, POST, PUT, DELETE"
CORS_ALLOW_HEADERS = b"Authorization, Content-Type"
# Ten minutes of cached preflights: few enough round trips for the UI, short enough that a
# narrowed allowlist takes effect soon after a restart.
CORS_MAX_AGE_SECONDS = 600
# A refused or ignored upload up to this size is read and dropped before the answer, so the
# connection stays usable; beyond it, closing the connection is cheaper than reading on.
MAX_DRAIN_BYTES = 4 * MAX_BODY_BYTES
# Loopback moves megabytes in milliseconds; a client that stops mid-body gets its answer
# after this long instead of never.
DRAIN_TIMEOUT = 0.5 * SECONDS
# Close code for the fallback refusal when the server lacks the denial-response extension.
POLICY_VIOLATION = 1008

_Headers = list[tuple[bytes, bytes]]


class _BodyRefusedError(Exception):
    """Raised from ``receive`` once the gate has answered 413/415 mid-body; ends the app."""


@dataclass(frozen=True)
class Refusal:
    """An answer the gate gives instead of the app: status, error code, detail, headers."""

    status: int
    error: str
    detail: str
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def response_headers(self, body: bytes) -> _Headers:
        return [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            *self.headers,
        ]


def _header_values(scope: Scope) -> dict[bytes, list[bytes]]:
    """Request headers by lower-cased name, every value kept so duplicates can be refused."""
    values: dict[bytes, list[bytes]] = {}
    for name, value in scope.get("headers", ()):
        values.setdefault(bytes(name).lower(), []).append(bytes(value))
    return values


def _is_json(content_types: list[bytes]) -> bool:
    """True for exactly one ``application/json`` Content-Type, parameters allowed."""
    if len(content_types) != 1:
        return False
    media_type = content_types[0].split(b";", 1)[0].strip().lower()
    return media_type == b"application/json"


def _declares_body(headers: dict[bytes, list[bytes]]) -> bool:
    """True if the headers announce a body: chunked, or a Content-Length other than 0."""
    if any(b"chunked" in value.lower() for value in headers.get(b"transfer-encoding", [])):
        return True
    return any(value.strip() not in (b"0", b"") for value in headers.get(b"content-length", []))


class SecurityMiddleware:
    """Host, Origin, CORS, token and body checks for every HTTP request and WebSocket upgrade.

    Must be the outermost layer (outside Starlette's ``ServerErrorMiddleware``), so even a 500
    carries the CORS headers and nothing runs for a request the gate refuses.
    """

    def __init__(
        self, app: ASGIApp, *, token: str, port: int, allowed_origins: Iterable[str]
    ) -> None:
        if not token:
            raise ValueError("expected a non-empty token; got an empty string")
        self.app = app
        self.port = port
        # Bytes on both sides: hmac.compare_digest refuses non-ASCII str, and header values
        # arrive as bytes anyway.
        self._token = token.encode("utf-8")
        self._hosts = frozenset({f"127.0.0.1:{port}".encode(), f"localhost:{port}".encode()})
        self._origins = frozenset(
            origin.encode("utf-8")
            for origin in allowed_origins
            if origin not in NEVER_ALLOWED_ORIGINS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _HttpGate(self, scope, receive, send).run()
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:  # lifespan: nothing to check
            await self.app(scope, receive, send)

    # -- checks shared by HTTP and WebSocket ---------------------------------------------------

    def check_host(self, headers: dict[bytes, list[bytes]]) -> Refusal | None:
        """Step 1: defeats DNS rebinding, where a hostile name resolves to 127.0.0.1."""
        hosts = headers.get(b"host", [])
        if len(hosts) == 1 and hosts[0] in self._hosts:
            return None
        if not hosts:
            got = "no Host header"
        elif len(hosts) > 1:
            got = f"{len(hosts)} Host headers"
        else:
            got = describe(hosts[0])
        return Refusal(
            403,
            "host_not_allowed",
            f"expected Host 127.0.0.1:{self.port} or localhost:{self.port}; got {got}",
        )

    def check_origin(self, headers: dict[bytes, list[bytes]]) -> Refusal | None:
        """Step 2: an Origin, when sent, must be on the allowlist (exact match)."""
        origins = headers.get(b"origin", [])
        if not origins or (len(origins) == 1 and origins[0] in self._origins):
            return None
        got = f"{len(origins)} Origin headers" if len(origins) > 1 else describe(origins[0])
        allowed = ", ".join(sorted(origin.decode() for origin in self._origins)) or "none"
        return Refusal(
            403,
            "origin_not_allowed",
            f"expected no Origin or one of the allowed origins ({allowed}); got {got}",
        )

    def token_matches(self, candidate: bytes) -> bool:
        return hmac.compare_digest(candidate, self._token)

    # -- WebSocket --------------------------------------------------------------------------------

    def check_subprotocols(self, offered: list[str]) -> Refusal | None:
        """Steps 3-4 for WebSocket: ``dbtk.v1`` offered (403), then the bearer token (401)."""
        if SUBPROTOCOL not in offered:
            # The offered list may hold the token: count it, never quote it.
            return Refusal(
                403,
                "subprotocol_required",
                f"expected subprotocol {SUBPROTOCOL} among the offered ones; "
                f"got {len(offered)} other subprotocol(s)",
            )
        bearers = [
            protocol[len(BEARER_SUBPROTOCOL_PREFIX) :]
            for protocol in offered
            if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX)
        ]
        if len(bearers) == 1 and self.token_matches(bearers[0].encode("utf-8", "replace")):
            return None
        if not bearers:
            got = "none"
        elif len(bearers) > 1:
            got = f"{len(bearers)} of them"
        else:
            got = "one whose token does not match this daemon's"
        return Refusal(
            401,
            "unauthorized",
            f"expected subprotocol {BEARER_SUBPROTOCOL_PREFIX}<token> (token from "
            f"`dbtkctl port --json`); got {got}",
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _header_values(scope)
        refusal = (
            self.check_host(headers)
            or self.check_origin(headers)
            or self.check_subprotocols(list(scope.get("subprotocols") or ()))
        )
        if refusal is not None:
            await _deny_websocket(scope, send, refusal)
            return

        async def send_selecting_subprotocol(message: Message) -> None:
            # Whatever an endpoint asks for, the handshake names dbtk.v1: the bearer
            # subprotocol must never be echoed back.
            if message["type"] == "websocket.accept":
                message = {**message, "subprotocol": SUBPROTOCOL}
            await send(message)

        await self.app(scope, receive, send_selecting_subprotocol)


async def _deny_websocket(scope: Scope, send: Send, refusal: Refusal) -> None:
    """Refuse an upgrade before accept: an HTTP response if the server can send one."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = error_document(refusal.error, refusal.detail)
        await send(
            {
                "type": "websocket.http.response.start",
                "status": refusal.status,
                "headers": refusal.response_headers(body),
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # Without the extension, a close before accept is the only refusal ASGI offers;
        # servers turn it into a bare 403.
        await send({"type": "websocket.close", "code": POLICY_VIOLATION})


class _HttpGate:
    """One HTTP request through the gate: the checks, then the app with guarded I/O."""

    def __init__(
        self, policy: SecurityMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.policy = policy
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = _header_values(scope)
        self.cors_headers: _Headers = [(b"vary", b"Origin")]
        self.response_started = False
        self.refused = False  # the gate answered; the app's own response goes nowhere
        self.body_bytes = 0
        self.max_body = LARGE_BODY_ROUTES.get(scope["path"], MAX_BODY_BYTES)
        self.json_body = _is_json(self.headers.get(b"content-type", []))
        self.body_expected = _declares_body(self.headers)
        self.body_finished = False  # the last http.request (more_body False) was received
        self.disconnected = False

    async def run(self) -> None:
        policy = self.policy
        refusal = policy.check_host(self.headers) or policy.check_origin(self.headers)
        if refusal is not None:
            # Before the Origin is known good: no Access-Control-* headers at all.
            await self.answer(refusal)
            return
        origins = self.headers.get(b"origin")
        if origins:
            self.cors_headers.append((b"access-control-allow-origin", origins[0]))
            if self.is_preflight():
                await self.answer_preflight()
                return
        refusal = self.check_token() or self.check_body_headers()
        if refusal is not None:
            await self.answer(refusal)
            return
        try:
            await policy.app(self.scope, self.guarded_receive, self.guarded_send)
        except _BodyRefusedError:
            if not self.refused:  # pragma: no cover - only this gate raises it
                raise

    # -- steps 3-6 ----------------------------------------------------------------------------

    def is_preflight(self) -> bool:
        return self.scope["method"] == "OPTIONS" and b"access-control-request-method" in (
            self.headers
        )

    async def answer_preflight(self) -> None:
        """Step 3: a preflight from an allowed origin needs no token (browsers send none)."""
        headers = [
            *self.cors_headers,
            (b"access-control-allow-methods", CORS_ALLOW_METHODS),
            (b"access-control-allow-headers", CORS_ALLOW_HEADERS),
            (b"access-control-max-age", str(CORS_MAX_AGE_SECONDS).encode("ascii")),
        ]
        # Chrome's Private Network Access asks before a public page may reach loopback; the
        # Origin check above already decided whether this page may.
        asked = self.headers.get(b"access-control-request-private-network", [])
        if [value.strip().lower() for value in asked] == [b"true"]:
            headers.append((b"access-control-allow-private-network", b"true"))
        await self.send({"type": "http.response.start", "status": 204, "headers": headers})
        await self.end_response({"type": "http.response.body", "body": b""})

    def check_token(self) -> Refusal | None:
        """Step 4: ``Authorization: Bearer <token>`` everywhere but ``GET /health``."""
        if self.scope["method"] == "GET" and self.scope["path"] == "/health":
            return None
        values = self.headers.get(b"authorization", [])
        if len(values) == 1:
            scheme, _, credentials = values[0].strip().partition(b" ")
            if scheme.lower() == b"bearer" and self.policy.token_matches(credentials.strip()):
                return None
        # Never quote the header: a client that forgot the scheme sent the bare token.
        if not values:
            got = "no Authorization header"
        elif len(values) > 1:
            got = f"{len(values)} Authorization headers"
        elif values[0].strip().partition(b" ")[0].lower() != b"bearer":
            got = "an Authorization header that is not 'Bearer <token>'"
        else:
            got = "a bearer token that does not match this daemon's"
        return Refusal(
            401,
            "unauthorized",
            "expected 'Authorization: Bearer <token>' (token from `dbtkctl port --json`); "
            f"got {got}",
            ((b"www-authenticate", b"Bearer"),),
        )

    def check_body_headers(self) -> Refusal | None:
        """Steps 5-6 from the headers: JSON bodies only (415), at most 1 MiB declared (413;
        64 MiB for a CSV import).

        Forms and text/plain are what a hostile page can POST without a preflight; refusing
        every non-JSON body closes that door for routes that ignore the body too.
        """
        lengths = self.headers.get(b"content-length", [])
        if len(lengths) > 1 or (lengths and not lengths[0].strip().isdigit()):
            got = f"{len(lengths)} headers" if len(lengths) > 1 else describe(lengths[0])
            return Refusal(400, "bad_request", f"expected one decimal Content-Length; got {got}")
        declared = int(lengths[0]) if lengths else None
        if self.body_expected and not self.json_body:
            return self.unsupported_media_type()
        if declared is not None and declared > self.max_body:
            return self.too_large(f"Content-Length {declared}")
        return None

    def unsupported_media_type(self) -> Refusal:
        content_types = self.headers.get(b"content-type", [])
        if not content_types:
            got = "no Content-Type"
        elif len(content_types) > 1:
            got = f"{len(content_types)} Content-Type headers"
        else:
            got = describe(content_types[0])
        return Refusal(
            415,
            "unsupported_media_type",
            f"expected Content-Type application/json for a request body; got {got}",
        )

    def too_large(self, got: str) -> Refusal:
        return Refusal(
            413,
            "payload_too_large",
            f"expected a request body of at most {self.max_body} bytes "
            f"({self.max_body // MAX_BODY_BYTES} MiB); got {got}",
        )

    # -- guarded I/O --------------------------------------------------------------------------

    async def guarded_receive(self) -> Message:
        """Counts body bytes as they stream in (chunked bodies declare no length)."""
        if self.refused:
            raise _BodyRefusedError
        message = await self.receive()
        self.note(message)
        if message["type"] == "http.request" and message.get("body"):
            self.body_bytes += len(message["body"])
            refusal = None
            # A body the headers did not announce (HTTP/2 without Content-Length) still has
            # to be JSON.
            if not self.json_body:
                refusal = self.unsupported_media_type()
            elif self.body_bytes > self.max_body:
                refusal = self.too_large(f"more than {self.max_body} bytes")
            if refusal is not None:
                if not self.response_started:
                    await self.answer(refusal)
                self.refused = True
                raise _BodyRefusedError
        return message

    def note(self, message: Message) -> None:
        if message["type"] == "http.disconnect":
            self.disconnected = True
        elif message["type"] == "http.request" and not message.get("more_body", False):
            self.body_finished = True

    async def guarded_send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
            # The gate alone decides CORS: drop whatever the app set, add the gate's.
            headers = [
                (name, value)
                for name, value in message.get("headers", ())
                if not bytes(name).lower().startswith(b"access-control-")
            ]
            message = {**message, "headers": [*headers, *self.cors_headers]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            await self.end_response(message)
            return
        await self.send(message)

    async def answer(self, refusal: Refusal) -> None:
        body = error_document(refusal.error, refusal.detail)
        self.response_started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [*refusal.response_headers(body), *self.cors_headers],
            }
        )
        await self.end_response({"type": "http.response.body", "body": body})

    # -- the end of a response, and the rest of the request body ------------------------------

    @property
    def body_unread(self) -> bool:
        """A request body is (or may be) still arriving, and nobody has read it."""
        announced = self.body_expected or self.body_bytes > 0
        return announced and not (self.body_finished or self.disconnected)

    async def end_response(self, final: Message) -> None:
        """Send the last body message of a response, first dropping the unread request body.

        Hypercorn queues request-body chunks for the app (10 at most). When a response ends
        with the request body unfinished, it closes the connection, and queues
        ``http.disconnect`` first: with the queue full, that send would block for good and
        pin the task, the connection and its buffers until the worker exits. So the rest of
        the body is read and dropped, briefly, which also lets the connection be reused; and
        whatever is still unread when the final message goes out is drained beside it.
        """
        if self.body_unread:  # no timer otherwise: /health answers before anyio's loop loads
            dropped = 0
            with anyio.move_on_after(DRAIN_TIMEOUT):
                while self.body_unread and dropped <= MAX_DRAIN_BYTES:
                    message = await self.receive()
                    self.note(message)
                    dropped += len(message.get("body", b""))
        if not self.body_unread:
            await self.send(final)
            return
        async with anyio.create_task_group() as task_group:

            async def drain_until_closed() -> None:
                while self.body_unread:
                    self.note(await self.receive())

            task_group.start_soon(drain_until_closed)
            await self.send(final)
