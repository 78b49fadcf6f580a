"""The app behind a real Hypercorn, over real TCP: denial responses really reach the client.

The ASGI-level tests prove what the gate sends; these prove what Hypercorn puts on the wire
for it: a 101 naming ``dbtk.v1``, plain 401/403 HTTP responses instead of an upgrade, a 403
for HTTP/1.0 without Host, and close code 1012 on the worker's stop order. The server is
``serve_app.py`` in a subprocess, serving a socket bound and listened on here and passed as
``fd://N``, the way the supervisor hands the worker its socket.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

SERVE_APP = str(Path(__file__).with_name("serve_app.py"))
REPO_ROOT = str(Path(__file__).resolve().parents[2])
TOKEN = "real-hypercorn-token_0123456789abcdefghijklmnopq"
# Every network wait is bounded: a server that never answers fails the test in 10 s.
DEADLINE_SECONDS = 10.0
SERVICE_RESTART = 1012


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/logs?backlog=5"

    def stop(self, close_code: int) -> None:
        """The stop order: close streams with ``close_code``, then shut down."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{close_code}\n".encode())
        self.process.stdin.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    log_file = tmp_path / "dbtkd.log"
    log_file.write_text("first line\n")
    stderr = open(tmp_path / "server.stderr", "wb")  # noqa: SIM115 - closed in finally
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections wait in the backlog until Hypercorn is up
    port = listener.getsockname()[1]
    python_path = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, SERVE_APP, str(listener.fileno()), str(port), str(log_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        pass_fds=[listener.fileno()],
        env={**os.environ, "PYTHONPATH": python_path},
    )
    listener.close()  # the server owns it now; if it dies, connecting fails fast
    try:
        assert process.stdin is not None
        process.stdin.write(f"{TOKEN}\n".encode())
        process.stdin.flush()
        yield Server(port, process, log_file)
    finally:
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()  # EOF: close_all(1001) and shut down
        try:
            process.wait(timeout=DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=DEADLINE_SECONDS)
        stderr.close()
        errors = (tmp_path / "server.stderr").read_text(errors="replace")
        assert "Traceback" not in errors, errors


def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_SECONDS)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw_exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send hand-written request bytes; the status and body of the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_SECONDS) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            return response.status, response.read()
        finally:
            response.close()


def open_ws(
    server: Server, *, origin: str | None = None, subprotocols: list[str] | None = None
) -> ClientConnection:
    offered = ["dbtk.v1", f"dbtk.bearer.{TOKEN}"] if subprotocols is None else subprotocols
    return connect(
        server.ws_url,
        origin=Origin(origin) if origin is not None else None,
        subprotocols=[Subprotocol(protocol) for protocol in offered],
        open_timeout=DEADLINE_SECONDS,
        close_timeout=DEADLINE_SECONDS,
        proxy=None,
    )


def refused_status(
    server: Server, *, origin: str | None = None, subprotocols: list[str] | None = None
) -> tuple[int, dict[str, str]]:
    with pytest.raises(InvalidStatus) as refused:
        open_ws(server, origin=origin, subprotocols=subprotocols).close()
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


def wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while http_get(server.port, "/health")[0] != 200:  # pragma: no cover - first try works
        assert time.monotonic() < deadline, "server never answered /health"


def test_websocket_with_both_subprotocols_gets_101_selecting_dbtk_v1(server: Server) -> None:
    with open_ws(server, origin="app://dbtk") as websocket:
        assert websocket.response is not None
        assert websocket.response.status_code == 101
        assert websocket.response.headers["Sec-WebSocket-Protocol"] == "dbtk.v1"
        assert websocket.subprotocol == "dbtk.v1"
        message = json.loads(websocket.recv(timeout=DEADLINE_SECONDS))
        assert message == {"type": "line", "line": "first line"}


def test_websocket_without_token_gets_a_real_401(server: Server) -> None:
    status, body = refused_status(server, subprotocols=["dbtk.v1"])
    assert status == 401
    assert body["error"] == "unauthorized"


def test_websocket_with_wrong_token_gets_a_real_401(server: Server) -> None:
    status, _ = refused_status(server, subprotocols=["dbtk.v1", "dbtk.bearer.wrong"])
    assert status == 401


@pytest.mark.parametrize("origin", ["https://evil.example", "null"])
def test_websocket_from_foreign_origin_gets_a_real_403(server: Server, origin: str) -> None:
    status, body = refused_status(server, origin=origin)
    assert status == 403
    assert body["error"] == "origin_not_allowed"


def test_websocket_without_dbtk_v1_gets_a_real_403(server: Server) -> None:
    status, body = refused_status(server, subprotocols=[f"dbtk.bearer.{TOKEN}"])
    assert status == 403
    assert body["error"] == "subprotocol_required"


def test_websocket_with_foreign_host_gets_a_real_403(server: Server) -> None:
    request = (
        f"GET /ws/logs HTTP/1.1\r\nHost: evil.example:{server.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: dbtk.v1, dbtk.bearer.{TOKEN}\r\n\r\n"
    ).encode()
    status, body = raw_exchange(server.port, request)
    assert status == 403
    assert json.loads(body)["error"] == "host_not_allowed"


def test_http_1_0_without_host_is_403_even_with_the_token(server: Server) -> None:
    request = f"GET /api/v1/health HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    status, body = raw_exchange(server.port, request)
    assert status == 403
    assert json.loads(body)["error"] == "host_not_allowed"


def test_http_token_is_required_and_accepted_over_tcp(server: Server) -> None:
    wait_until_serving(server)
    status, headers, _ = http_get(server.port, "/no/such/path")
    assert (status, headers.get("www-authenticate")) == (401, "Bearer")
    status, _, body = http_get(server.port, "/api/v1/status", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert json.loads(body)["worker_pid"] == server.process.pid


def test_2_mib_content_length_is_413_even_if_the_body_never_comes(server: Server) -> None:
    request = (
        f"POST /api/v1/connections HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {2 * 1024 * 1024}\r\n\r\n"
    ).encode()
    status, body = raw_exchange(server.port, request)
    assert status == 413
    assert json.loads(body)["error"] == "payload_too_large"


@pytest.mark.parametrize(("token", "expected"), [(None, 401), (TOKEN, 404)])
def test_unread_2_mib_upload_is_drained_and_the_connection_reused(
    server: Server, token: str | None, expected: int
) -> None:
    # Hypercorn stops reading a connection whose body queue the app leaves full; the gate
    # drains refused and ignored uploads so the exchange completes and keep-alive works.
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (
        f"POST /api/v1/nothing-here HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"{authorization}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"x" * 65536
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 32 + b"0\r\n\r\n"
    second = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_SECONDS) as sock:
        sock.sendall(head + body)
        first_response = http.client.HTTPResponse(sock)
        first_response.begin()
        first_response.read()
        assert first_response.status == expected
        sock.sendall(second)
        second_response = http.client.HTTPResponse(sock)
        second_response.begin()
        assert second_response.status == 200
        assert json.loads(second_response.read()) == {"status": "ok"}


def test_stop_order_closes_open_streams_with_1012(server: Server) -> None:
    with open_ws(server) as websocket:
        assert json.loads(websocket.recv(timeout=DEADLINE_SECONDS))["line"] == "first line"
        server.stop(SERVICE_RESTART)
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=DEADLINE_SECONDS)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == SERVICE_RESTART
    assert server.process.wait(timeout=DEADLINE_SECONDS) == 0
