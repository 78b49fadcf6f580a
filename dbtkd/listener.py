"""The worker's side of the listening socket: a cap on open connections, refused cleanly.

Hypercorn has no connection limit of its own (its ``keep_alive_timeout`` closes connections
that never send a complete request head, 5 s by default, but nothing bounds how many wait
meanwhile). Without one, any local process could open connections until ``accept`` failed
with "too many open files", and asyncio logs a traceback for every failed accept, up to the
backlog's length at a time (issue 11 item 7: 1777 tracebacks in 30 s, the log history rotated
away, a legitimate client's p99 at 5.2 s).

``CappedListener`` is the listening socket Hypercorn serves (``worker_serve(sockets=...)``).
asyncio calls its ``accept``; under the cap that returns a ``_Connection`` that frees its slot
when the peer ends its stream or the connection is closed. Over the cap, or when descriptors
run out anyway, the connection is accepted, answered at once with a 503 (``Retry-After: 1``)
and closed: no traceback, no pause in accepting, and at most one log line per
``REPORT_INTERVAL``. Descriptors running out below the cap are met with a spare descriptor
kept for the purpose: freed, used to accept the connection, closed with it, taken again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from typing import Any

from dbtkd.units import SECONDS

# A window keeps a few keep-alive connections and its WebSockets open (tens for a busy
# user); 2048 leaves room for scripts and tools many times over, while 2048 idle connections
# cost the worker about 40 MiB (bench/half_open.py measures it), not an unbounded amount.
MAX_CONNECTIONS = 2048
# Descriptors the worker needs besides connections: database connections, open files, the
# pipes of running programs. The cap stays this far below the open-files limit.
DESCRIPTOR_RESERVE = 256
MIN_CONNECTIONS = 64  # even on a tiny open-files limit the daemon stays usable
# Refusals are logged as a count at most this often, so a flood writes a line per interval.
REPORT_INTERVAL = 10 * SECONDS
# asyncio calls ``accept`` until it raises; refusing this many at a time lets the event loop
# serve established connections between batches of a flood.
REFUSE_BATCH = 64
# Shorter than asyncio's own pause after a failed accept (1 s), which it ends by itself.
QUIET_AFTER_FAILURE = 0.5 * SECONDS
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

log = logging.getLogger("dbtkd.listener")


def connection_cap(open_files_limit: int | None) -> int:
    """How many connections to serve at once under ``open_files_limit`` (None: unlimited)."""
    if open_files_limit is None:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, open_files_limit - DESCRIPTOR_RESERVE))


def refusal(cap: int) -> bytes:
    """The whole HTTP response a connection over the cap gets, in the API's error shape."""
    body = json.dumps(
        {
            "error": "too_many_connections",
            "detail": f"the daemon already serves {cap} connections, its limit; retry shortly",
        }
    ).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )


class CappedListener(socket.socket):
    """A listening socket that hands out at most ``cap`` connections at a time.

    Built by ``adopt`` from the worker's listening socket, which it takes over (the caller
    must not close that one). Owned by Hypercorn's server, which closes it at shutdown.
    """

    cap = MAX_CONNECTIONS
    open_connections = 0
    refused_total = 0
    _refused_unreported = 0
    _last_report = float("-inf")
    _spare = -1
    _quiet_until = float("-inf")
    _refusal = b""

    @classmethod
    def adopt(cls, sock: socket.socket, cap: int) -> CappedListener:
        listener = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        listener.cap = cap
        listener._refusal = refusal(cap)
        listener._take_spare()
        return listener

    def accept(self) -> tuple[socket.socket, Any]:
        if time.monotonic() < self._quiet_until:
            raise BlockingIOError  # asyncio has paused us: end its accept loop quietly
        for _ in range(REFUSE_BATCH):
            try:
                fd, address = self._accept()  # type: ignore[attr-defined]
            except OSError as exc:
                if exc.errno not in OUT_OF_DESCRIPTORS:
                    raise  # BlockingIOError (queue empty) ends asyncio's accept loop
                if self._refuse_with_spare():
                    continue
                # No spare either (another thread took the descriptor): asyncio logs this
                # error once and pauses accepting for a second; without the quiet period it
                # would call us again at once, logging once per pending connection.
                self._quiet_until = time.monotonic() + QUIET_AFTER_FAILURE
                raise
            if self.open_connections < self.cap:
                self.open_connections += 1
                connection = _Connection(self.family, self.type, self.proto, fileno=fd)
                connection.listener = self
                return connection, address
            self._refuse(fd)
        # asyncio treats this as "nothing more for now"; the socket is still readable, so the
        # loop calls us again after serving what else is ready.
        raise ConnectionAbortedError

    def close(self) -> None:
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1
        super().close()

    def _take_spare(self) -> None:
        with contextlib.suppress(OSError):
            self._spare = os.open(os.devnull, os.O_RDONLY)

    def _refuse_with_spare(self) -> bool:
        """Out of descriptors: accept one connection in the spare's place and refuse it."""
        if self._spare < 0:
            self._take_spare()  # maybe descriptors were freed since
            return False
        os.close(self._spare)
        self._spare = -1
        try:
            fd, _ = self._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            # Linux reports EMFILE before looking at the queue: it was empty all along.
            self._take_spare()
            raise
        except OSError:
            self._take_spare()
            return False
        self._refuse(fd, why="the worker is out of file descriptors")
        self._take_spare()  # the descriptor the refused connection just gave back
        return True

    def _refuse(self, fd: int, why: str = "") -> None:
        with socket.socket(fileno=fd) as connection:
            connection.setblocking(False)
            with contextlib.suppress(OSError):
                # Read what the client already sent: closing with unread data sends a reset,
                # which can destroy our answer before the client reads it.
                connection.recv(64 * 1024)
            with contextlib.suppress(OSError):
                connection.send(self._refusal)
                connection.shutdown(socket.SHUT_WR)
        self.refused_total += 1
        self._refused_unreported += 1
        now = time.monotonic()
        if now - self._last_report >= REPORT_INTERVAL:
            log.warning(
                "refused %d connection(s) with 503 since the last report (at most one per %.0f s): "
                "%s",
                self._refused_unreported,
                REPORT_INTERVAL,
                why or f"{self.open_connections} connections are open, the limit",
            )
            self._refused_unreported = 0
            self._last_report = now


class _Connection(socket.socket):
    """An accepted connection that gives its slot back when the peer leaves or it is closed.

    Counting ends at the peer's end of stream, not at our close: Hypercorn keeps a connection
    its client closed until ``keep_alive_timeout`` has passed, and a client making short
    connections one after another must not fill the cap with connections nobody uses.
    """

    listener: CappedListener | None = None

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = super().recv(size, flags)
        if not data:
            self._release()
        return data

    def recv_into(self, buffer: Any, size: int = 0, flags: int = 0) -> int:
        received = super().recv_into(buffer, size, flags)
        if not received and (size or len(buffer)):
            self._release()
        return received

    def close(self) -> None:
        self._release()
        super().close()

    def _release(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.open_connections -= 1
