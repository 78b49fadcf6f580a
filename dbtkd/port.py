"""The daemon's one listening socket: binding it, and answering on it while ``failed``.

The socket is bound once, on loopback only, and never closed while the daemon lives: workers
come and go, the port stays, and connections made while no worker serves wait in the backlog.
In state ``failed`` the supervisor itself answers every connection with 503 from a duplicate of
the socket, using no CPU between connections. dbtkctl imports it (``parse_port_range``): stdlib
only, asyncio imported inside the functions that use it.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import sys

from dbtkd import sockshare
from dbtkd.errors import ConfigError, PortRangeExhausted
from dbtkd.units import SECONDS

TYPE_CHECKING = False  # asyncio is the supervisor's; dbtkctl imports parse_port_range
if TYPE_CHECKING:
    import asyncio


LOOPBACK = "127.0.0.1"
# Deep enough to hold every connection that arrives during a worker restart (~0.2 s); the
# worker gives Hypercorn the same.
LISTEN_BACKLOG = 1024
# Deep enough to hold every connection that arrives during a worker restart (~0.2 s).
FAILED_HEAD_TIMEOUT = 2 * SECONDS


def failed_response(reason: str) -> bytes:
    """The 503 every request gets while ``failed``, in the API's error shape (``error``,
    ``detail``) with the reason. No token is checked here, so it says no more than the reason
    (never the worker's output). There is no automatic retry (``next_try`` is null): the cause
    is one a restart alone does not fix, so the detail says what to do."""
    import json

    body = json.dumps(
        {
            "error": "daemon_failed",
            "detail": f"dbtkd failed: {reason}. It does not retry by itself: fix the cause "
            "(dbtkctl status and dbtkctl logs say more), then run dbtkctl restart",
            "state": "failed",
            "reason": reason,
            "next_try": None,
        }
    ).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(body)
    ) + body


def parse_port_range(value: object, source: str) -> tuple[int, int] | None:
    """``"A-B"`` (inclusive, 1-65535) or ``"0"``/``0`` for an OS-assigned port."""
    if value == 0 or value == "0":
        return None
    if isinstance(value, list) and len(value) == 2:
        value = f"{value[0]}-{value[1]}"
    if isinstance(value, str):
        first, sep, last = value.partition("-")
        if sep and first.strip().isdigit() and last.strip().isdigit():
            low, high = int(first), int(last)
            if 1 <= low <= high <= 65535:
                return (low, high)
    raise ConfigError(f"{source}: expected a port range like 8000-8100 or 0, got {value!r}")


def bind_listener(port_range: tuple[int, int] | None, last_port: int | None) -> socket.socket:
    """Bind on 127.0.0.1: ``last_port`` if free and in range, then the range (None: any port).

    The caller owns the returned socket. Raises ``PortRangeExhausted`` naming the range.
    """
    if port_range is None:
        candidates = [0]
    else:
        first, last = port_range
        candidates = list(range(first, last + 1))
        if last_port is not None and first <= last_port <= last:
            candidates.remove(last_port)
            candidates.insert(0, last_port)
    for port in candidates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sys.platform == "win32":
                sockshare.make_exclusive(sock)
            else:
                # Lets a restarted daemon reuse its port while old connections sit in
                # TIME_WAIT; Linux still refuses a second listener on the same address.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES) and port != 0:
                continue
            raise
        return sock
    assert port_range is not None
    raise PortRangeExhausted(*port_range)


async def serve_failed(listener: socket.socket, reason: str) -> asyncio.Server:
    """Answer 503 on ``listener`` until the returned server is closed (``listener`` stays)."""
    import asyncio

    response = failed_response(reason)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answer after the request head so clients read a response rather than a reset.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), FAILED_HEAD_TIMEOUT)
        with contextlib.suppress(Exception):
            writer.write(response)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, sock=listener.dup(), backlog=LISTEN_BACKLOG)
