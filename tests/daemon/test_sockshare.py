"""Handing the listening socket from supervisor to worker.

POSIX runs for real: a child process inherits the socket through ``spawn_kwargs``, rebuilds it
with ``import_in_child`` and serves one connection through Hypercorn's own ``fd://`` parser.
The Windows branch runs with ``socket.share`` / ``fromshare`` replaced, and its documented
recipe (``worker_serve(..., sockets=...)``) is run against the real Hypercorn.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dbtkd import sockshare

ROOT = Path(__file__).resolve().parents[2]

# The worker's side, reduced to the transfer: read the info line, rebuild the socket, let
# Hypercorn open the bind string, answer one connection with the bind string and our pid.
CHILD = textwrap.dedent(
    """
    import json, os, socket, sys
    from hypercorn.config import Config
    from dbtkd.sockshare import import_in_child

    sock, bind = import_in_child(json.loads(sys.stdin.readline()))
    port = sock.getsockname()[1]
    sock.close()  # ours is a duplicate: Hypercorn's descriptor must survive this
    config = Config()
    config.bind = [bind]
    (listener,) = config.create_sockets().insecure_sockets
    assert listener.getsockname()[1] == port, (listener, port)
    listener.setblocking(True)
    print("ready", flush=True)
    conn, _ = listener.accept()
    conn.sendall(f"{bind} {os.getpid()}\\n".encode())
    conn.close()
    """
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockshare.make_exclusive(sock)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    with sock:
        yield sock


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Force the Windows branch; record what is shared with whom.

    Tests that also need ``listener`` name it first, so it is bound on the real (POSIX) path.
    """
    seen: dict[str, Any] = {}

    def share(sock: socket.socket, pid: int) -> bytes:
        seen["shared"] = (sock, pid)
        return b"\x00WSAPROTOCOL_INFOW\xff" + pid.to_bytes(4, "little")

    def fromshare(data: bytes) -> socket.socket:
        seen["data"] = data
        result: socket.socket = seen["rebuilt"]
        return result

    monkeypatch.setattr(sockshare, "_WINDOWS", True)
    monkeypatch.setattr(sockshare, "_share", share)
    monkeypatch.setattr(sockshare, "_fromshare", fromshare)
    return seen


# ---------------------------------------------------------------------------------------------
# POSIX, for real


def test_posix_worker_serves_the_supervisors_socket(listener: socket.socket) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
        **sockshare.spawn_kwargs(listener),
    )
    try:
        info = sockshare.export_for_child(listener, child.pid)
        assert info == {"fd": listener.fileno()}
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(json.dumps(info) + "\n")
        child.stdin.flush()
        assert child.stdout.readline() == "ready\n"

        # The connection queues on the supervisor's socket and the child accepts it.
        with socket.create_connection(listener.getsockname(), timeout=10) as client:
            reply = client.makefile().readline()
        assert reply == f"fd://{listener.fileno()} {child.pid}\n"
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()

    # The supervisor's socket outlives the worker: the port never changes.
    listener.settimeout(5)
    with socket.create_connection(listener.getsockname(), timeout=5):
        conn, _ = listener.accept()
        conn.close()


def test_posix_spawn_passes_exactly_the_listening_descriptor(listener: socket.socket) -> None:
    assert sockshare.spawn_kwargs(listener) == {"pass_fds": (listener.fileno(),)}


def test_posix_import_returns_a_duplicate_the_caller_may_close(listener: socket.socket) -> None:
    sock, bind = sockshare.import_in_child({"fd": listener.fileno()})
    assert bind == f"fd://{listener.fileno()}"
    assert sock.fileno() != listener.fileno()
    assert sock.getsockname() == listener.getsockname()
    sock.close()
    os.fstat(listener.fileno())  # still open


def test_posix_import_explains_a_descriptor_that_was_not_passed() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError, match="spawn_kwargs") as caught:
        sockshare.import_in_child({"fd": fd})
    assert caught.value.errno is not None


def test_posix_import_refuses_a_socket_that_is_not_listening() -> None:
    with socket.socket() as unbound, pytest.raises(ValueError, match="not listening"):
        sockshare.import_in_child({"fd": unbound.fileno()})
    left, right = socket.socketpair()
    with left, right, pytest.raises(ValueError, match="AF_UNIX"):
        sockshare.import_in_child({"fd": left.fileno()})


@pytest.mark.parametrize(
    "info", [{}, {"fd": "3"}, {"fd": True}, {"fd": -1}, {"fd": 3, "extra": 1}, {"share": "AA=="}]
)
def test_posix_import_refuses_malformed_info(info: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=re.escape('expected {"fd": N}')):
        sockshare.import_in_child(info)


def test_posix_make_exclusive_leaves_the_socket_alone() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"make_exclusive used {name} on POSIX")

    sockshare.make_exclusive(Untouchable())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Windows, through the seams


def test_windows_spawn_needs_no_inheritance(
    listener: socket.socket, windows: dict[str, Any]
) -> None:
    assert sockshare.spawn_kwargs(listener) == {}


def test_windows_share_round_trips_through_json_to_fromshare(
    listener: socket.socket, windows: dict[str, Any]
) -> None:
    info = sockshare.export_for_child(listener, 4242)
    assert windows["shared"] == (listener, 4242)
    assert set(info) == {"share"}
    wire = json.loads(json.dumps(info))  # what travels over the worker's stdin

    windows["rebuilt"] = socket.create_server(("127.0.0.1", 0))
    sock, bind = sockshare.import_in_child(wire)
    with sock:
        assert sock is windows["rebuilt"]
        assert bind == ""  # Hypercorn must get it through sockets=, not a bind string
        assert windows["data"] == b"\x00WSAPROTOCOL_INFOW\xff" + (4242).to_bytes(4, "little")
        assert base64.b64decode(info["share"]) == windows["data"]


@pytest.mark.parametrize("info", [{"share": "not base64!"}, {"share": 3}, {"fd": 3}, {}])
def test_windows_import_refuses_malformed_info(windows: dict[str, Any], info: Any) -> None:
    with pytest.raises(ValueError, match=r"share|base64"):
        sockshare.import_in_child(info)


def test_windows_import_refuses_a_shared_socket_that_is_not_listening(
    windows: dict[str, Any],
) -> None:
    windows["rebuilt"] = rebuilt = socket.socket()
    with pytest.raises(ValueError, match="not listening"):
        sockshare.import_in_child({"share": base64.b64encode(b"x").decode()})
    assert rebuilt.fileno() == -1  # closed, not leaked


def test_windows_listening_socket_is_made_exclusive(windows: dict[str, Any]) -> None:
    class Recorder:
        def __init__(self, sticks: bool) -> None:
            self.options: dict[tuple[int, int], int] = {}
            self.sticks = sticks

        def setsockopt(self, level: int, option: int, value: int) -> None:
            self.options[level, option] = value

        def getsockopt(self, level: int, option: int) -> int:
            return self.options.get((level, option), 0) if self.sticks else 0

    assert sockshare.SO_EXCLUSIVEADDRUSE == -5  # ~SO_REUSEADDR, as ws2def.h defines it
    sock = Recorder(sticks=True)
    sockshare.make_exclusive(sock)  # type: ignore[arg-type]
    assert sock.options == {(socket.SOL_SOCKET, sockshare.SO_EXCLUSIVEADDRUSE): 1}
    with pytest.raises(OSError, match="did not stick"):
        sockshare.make_exclusive(Recorder(sticks=False))  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_windows_recipe_serves_through_hypercorn_sockets(
    listener: socket.socket, windows: dict[str, Any]
) -> None:
    # The path the Windows worker must take, run against the real Hypercorn 0.18 API.
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Config, Sockets
    from hypercorn.utils import wrap_app

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = [(b"content-length", b"6")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"served"})

    sockshare.export_for_child(listener, os.getpid())
    windows["rebuilt"] = socket.socket(fileno=os.dup(listener.fileno()))
    sock, bind = sockshare.import_in_child({"share": base64.b64encode(b"x").decode()})
    assert bind == ""
    config = Config()
    config.accesslog = None
    config.errorlog = None
    stop = anyio.Event()

    async def request() -> bytes:
        stream = await anyio.connect_tcp(*listener.getsockname()[:2])
        async with stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            received = b""
            try:
                while True:
                    received += await stream.receive()
            except anyio.EndOfStream:
                return received

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: worker_serve(
                wrap_app(app, config.wsgi_max_body_size, "asgi"),
                config,
                sockets=Sockets([], [sock], []),
                shutdown_trigger=stop.wait,
            )
        )
        with anyio.fail_after(10):
            response = await request()
        stop.set()
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"served")
