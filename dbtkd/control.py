"""The control socket server: connections, limits and dispatch of protocol v1 commands.

Each accepted connection is read in chunks, split into lines by ``protocol.LineFramer`` and
decoded by ``protocol.decode_request``; each request goes to ``handler.cmd_<name>(request,
stream)``, so an unknown command is a reply, never a crash. Every bad line gets exactly one
error reply and the connection stays usable, except for the errors in
``protocol.ERRORS_THAT_CLOSE``. A command that streams (``attach``, ``logs`` with ``follow``)
keeps the connection: the handler gets a ``Stream`` to send events on, and the lease or
subscription lasts until ``stream.closed`` is set (either side closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dbtkd import protocol
from dbtkd.protocol import Request, RequestError
from dbtkd.units import SECONDS

# A client that connects and says nothing, or sends half a line, holds a slot; 10 s is ample
# for any real client (dbtkctl sends its request right after connecting) and frees slots from
# stuck ones. The whole line must arrive within it: a byte now and then does not extend it.
IDLE_TIMEOUT = 10 * SECONDS
# Windows, dbtkctl calls and leases share one pool; 256 is far beyond real use and keeps a
# runaway script from exhausting the supervisor's file descriptors.
MAX_CONNECTIONS = 256
READ_CHUNK = 64 * 1024
# How long a refused client may keep sending before we close anyway.
REFUSE_LINGER = 1 * SECONDS

log = logging.getLogger("dbtkd.control")


# A command that wrote its own reply (``handoff`` attaches descriptors to it) returns this.
ALREADY_REPLIED = object()


class Stream:
    """The write side of a streaming command; owned by the connection, not the handler.

    A handler that expects more lines from the client on this connection (``handoff`` waits
    for the successor's verdict) sets ``lines`` to a queue; otherwise further lines are
    ignored and the stream lives until the connection closes.
    """

    def __init__(self, writer: asyncio.StreamWriter, request_id: int | str | None) -> None:
        self._writer = writer
        self.id = request_id
        self.closed = asyncio.Event()
        self.lines: asyncio.Queue[bytes] | None = None

    def dup_socket(self) -> socket.socket:
        """A blocking-API duplicate of the connection, for ``sendmsg`` with descriptors.

        It shares the file description (and its non-blocking flag) with the transport; use
        it only for a small write while the transport has nothing buffered. Caller closes it.
        """
        transport_socket = self._writer.get_extra_info("socket")
        duplicate: socket.socket = transport_socket.dup()
        return duplicate

    def send(self, event: str, **fields: Any) -> None:
        if self.closed.is_set():
            return
        try:
            self._writer.write(protocol.encode_event(self.id, event, fields))
        except (ConnectionError, RuntimeError):
            self.closed.set()


class Handler(Protocol):
    def daemon_info(self) -> dict[str, Any]: ...
    def touch(self) -> None: ...


Command = Callable[[Request, "Stream | None"], Awaitable[Any]]


class _Slot:
    """One connection's place in the pool; ``waiting_since`` is set until its first request
    is complete (monotonic time), which makes it the first to go when the pool is full."""

    def __init__(self, writer: asyncio.StreamWriter, waiting_since: float) -> None:
        self.writer = writer
        self.waiting_since: float | None = waiting_since


class ControlServer:
    """Serves one daemon's control endpoint on behalf of ``handler`` (the supervisor)."""

    def __init__(
        self,
        handler: Handler,
        *,
        uid: int | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        refuse_linger: float = REFUSE_LINGER,
    ) -> None:
        """The limits are parameters so a test can serve a socket pair in-process with small
        ones (tests/daemon/test_control_server.py); the daemon uses the defaults."""
        self.handler = handler
        self.uid = os.getuid() if uid is None and hasattr(os, "getuid") else uid
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.refuse_linger = refuse_linger
        self.connections: dict[asyncio.Task[None], _Slot] = {}
        self.streams: set[Stream] = set()

    async def on_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_uid: int | None
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if peer_uid is not None and peer_uid != self.uid:
                log.warning("refused control connection from uid %s", peer_uid)
                await self._refuse(
                    writer,
                    protocol.FORBIDDEN,
                    f"this daemon belongs to uid {self.uid}; run dbtkctl as that user",
                    reader,
                )
                return
            if len(self.connections) >= self.max_connections and not self._evict_oldest_waiting():
                await self._refuse(
                    writer,
                    protocol.BUSY,
                    f"more than {self.max_connections} control connections; retry shortly",
                    reader,
                )
                return
            slot = self.connections[task] = _Slot(writer, time.monotonic())
            await self._serve(reader, writer, slot)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left; nothing to answer
        finally:
            self.connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _evict_oldest_waiting(self) -> bool:
        """Make room by closing the oldest connection that never completed a request.

        Leases, streams and clients that have spoken keep their slots; a connection that has
        sent nothing or half a line is the cheapest to lose (a real client reconnects), so a
        pile of stuck ones cannot lock the owner's ``dbtkctl`` out until their timeouts.
        """
        waiting = {t: s.waiting_since for t, s in self.connections.items() if s.waiting_since}
        if not waiting:
            return False
        task = min(waiting, key=waiting.__getitem__)
        slot = self.connections.pop(task)
        slot.writer.write(
            protocol.encode_error(
                None,
                protocol.BUSY,
                f"closed to make room: {self.max_connections} control connections are open and "
                "this one sent no complete request; send the request right after connecting",
                self.handler.daemon_info(),
            )
        )
        slot.writer.close()  # its reader sees EOF and its task ends
        return True

    async def _refuse(
        self,
        writer: asyncio.StreamWriter,
        code: str,
        message: str,
        reader: asyncio.StreamReader | None = None,
    ) -> None:
        """Send one error and close politely: half-close, then discard what the client sent.

        Closing with unread bytes would make the kernel send a reset, and a reset can destroy
        our reply before the client reads it.
        """
        writer.write(protocol.encode_error(None, code, message, self.handler.daemon_info()))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            if reader is not None and writer.can_write_eof():
                writer.write_eof()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.refuse_linger):
                        while await reader.read(READ_CHUNK):
                            pass

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: _Slot
    ) -> None:
        framer = protocol.LineFramer()
        stream: Stream | None = None
        # Non-streaming connections must deliver each whole request line within the idle
        # timeout of the connect or of the previous reply, partial lines included.
        deadline = time.monotonic() + self.idle_timeout
        try:
            while True:
                try:
                    timeout = max(0.0, deadline - time.monotonic()) if stream is None else None
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
                except TimeoutError:
                    return
                if not data:
                    return
                try:
                    lines = framer.feed(data)
                except protocol.LineTooLong as exc:
                    await self._refuse(writer, exc.code, exc.message, reader)
                    return
                for line in lines:
                    slot.waiting_since = None  # it has spoken: no longer first to be evicted
                    if stream is not None:
                        if stream.lines is not None:
                            stream.lines.put_nowait(line)
                        continue  # otherwise a streaming connection only listens for the close
                    stream = await self._handle_line(line, writer)
                    await writer.drain()
                if lines:
                    deadline = time.monotonic() + self.idle_timeout
        finally:
            if stream is not None:
                stream.closed.set()
                self.streams.discard(stream)

    async def _handle_line(self, line: bytes, writer: asyncio.StreamWriter) -> Stream | None:
        """Answer one line; return the ``Stream`` if the command keeps the connection open."""
        request_id: int | str | None = None
        self.handler.touch()  # any request, even a bad one, is activity for idle exit
        try:
            request = protocol.decode_request(line)
            request_id = request.id
            stream = Stream(writer, request_id) if protocol.opens_stream(request) else None
            command: Command = getattr(self.handler, "cmd_" + request.cmd)
            result = await command(request, stream)
        except RequestError as exc:
            writer.write(
                protocol.encode_error(
                    exc.id if exc.id is not None else request_id,
                    exc.code,
                    exc.message,
                    self.handler.daemon_info(),
                )
            )
            return None
        except Exception:
            # A bug in one command must not end the daemon or the connection.
            log.exception("control command failed: %s", line[:200])
            writer.write(
                protocol.encode_error(
                    request_id,
                    "internal_error",
                    "the daemon hit an error; see its log",
                    self.handler.daemon_info(),
                )
            )
            return None
        if result is not ALREADY_REPLIED:
            writer.write(protocol.encode_reply(request_id, result, self.handler.daemon_info()))
        if stream is not None:
            self.streams.add(stream)
        return stream
