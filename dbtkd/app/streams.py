"""The open WebSocket streams, so status can count them and a stopping worker can close them.

Every stream endpoint runs its body through ``Streams.serve``, which accepts the socket with
the ``dbtk.v1`` subprotocol, registers it under the stream's name and watches for the client
leaving. ``close_all`` (the worker's stop order) cancels every body and closes every socket
with one code, 1012 for a planned restart or 1001 when going away, so clients reconnect and,
since every stream starts with a snapshot, miss nothing. Each endpoint's task owns its socket
and sends its close frame itself; ``close_all`` only asks and waits.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Awaitable, Callable, Iterable

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from dbtkd.app.security import SUBPROTOCOL
from dbtkd.units import SECONDS

# The worker's graceful timeout is 2 s (DESIGN §2): closing the sockets must leave Hypercorn
# time to drain HTTP requests within it. A client too slow to take a close frame in 1 s is
# dropped with the connection instead.
CLOSE_ALL_TIMEOUT = 1 * SECONDS
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
SERVICE_RESTART = 1012
# Close codes a server may put on the wire (RFC 6455 §7.4): 1004-1006 and 1015 are reserved.
_RESERVED_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})

StreamBody = Callable[[WebSocket], Awaitable[None]]
# RFC 6455 §7.4.1: 1007 "data inconsistent with the message type" — JSON we cannot read; 1008
# "policy": a first frame of the wrong shape. The reason is capped at 123 bytes on the wire.
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MAX_REASON_BYTES = 123
# Deeper than any message a client of ours sends; deeper JSON is refused, not recursed into.
MAX_JSON_DEPTH = 32


class CloseStream(Exception):
    """Raised by a stream body to end its socket with ``code`` and ``reason`` (bad input).

    A stream that cannot answer with an error message (a raw protocol, or a client that sent
    something no message of ours can answer) closes with a reason instead; ``serve`` sends it.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason.encode("utf-8")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


def decode_frame(text: str | bytes) -> object:
    """A client's JSON frame. ``ValueError`` if it is not JSON (the stream may answer that);
    ``CloseStream(1007)`` if it is nested deeper than ``MAX_JSON_DEPTH``, which would otherwise
    end in a ``RecursionError`` and a traceback: such a client is not one of ours."""
    try:
        value = json.loads(text)
    except RecursionError:  # the C decoder gives up cleanly far past any depth of ours
        raise CloseStream(INVALID_PAYLOAD, _TOO_DEEP) from None
    if _depth(text if isinstance(text, str) else text.decode("utf-8", "replace")) > MAX_JSON_DEPTH:
        raise CloseStream(INVALID_PAYLOAD, _TOO_DEEP)
    return value


_TOO_DEEP = f"expected JSON nested at most {MAX_JSON_DEPTH} deep"
# Run on JSON that parsed, so every string is well formed and the pattern matches each one
# in a single pass (on malformed input an unclosed string could make it rescan).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _depth(text: str) -> int:
    """How deep the containers of a valid JSON text nest, at C speed: strings (which may hold
    brackets) and everything else but brackets are cut out, then the running sum's peak."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


class _OpenStream:
    """One accepted socket: its name, the scope that cancels its body, its close code."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cancel_scope = anyio.CancelScope()
        self.close_code = NORMAL_CLOSURE
        self.finished = anyio.Event()


class Streams:
    """Registry of open WebSocket streams by name (``logs``, later ``backups``...)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        # Known names are listed with 0 so status always shows every stream.
        self._open: dict[str, set[_OpenStream]] = {name: set() for name in names}
        self._closing_code: int | None = None

    def counts(self) -> dict[str, int]:
        """Open sockets per stream name."""
        return {name: len(open_streams) for name, open_streams in self._open.items()}

    def count(self, name: str) -> int:
        return len(self._open.get(name, ()))

    async def serve(self, name: str, websocket: WebSocket, body: StreamBody) -> None:
        """Accept ``websocket``, run ``body`` until the client leaves, it ends, or close_all.

        ``body`` only sends; incoming messages are read here (and dropped) to notice the
        client leaving. When ``body`` returns the socket is closed with 1000.
        """
        await websocket.accept(subprotocol=SUBPROTOCOL)
        if self._closing_code is not None:
            # Arrived after the stop order: tell the client to come back to the next worker.
            await websocket.close(self._closing_code)
            return
        stream = _OpenStream(name)
        self._open.setdefault(name, set()).add(stream)
        try:
            client_left = False
            closing: CloseStream | None = None
            with stream.cancel_scope:
                client_left, closing = await _run_until_client_leaves(websocket, body)
            if closing is not None and not client_left:
                await websocket.close(closing.code, closing.reason)
            elif not client_left:
                await websocket.close(stream.close_code)
        except WebSocketDisconnect:
            pass  # the client went away while we were closing: nothing left to tell it
        finally:
            self._open[name].discard(stream)
            stream.finished.set()

    async def close_all(self, code: int) -> None:
        """Close every open socket with ``code`` (1012 restart, 1001 going away).

        Sockets that connect afterwards are accepted and closed with the same code at once.
        Returns when every socket is closed, or after ``CLOSE_ALL_TIMEOUT``.
        """
        if not 1000 <= code <= 4999 or code in _RESERVED_CLOSE_CODES:
            raise ValueError(
                f"expected a close code a server may send (1000-4999 but not 1004-1006 or "
                f"1015); got {code}"
            )
        self._closing_code = code
        open_streams = [stream for group in self._open.values() for stream in group]
        for stream in open_streams:
            stream.close_code = code
            stream.cancel_scope.cancel()
        with anyio.move_on_after(CLOSE_ALL_TIMEOUT):
            for stream in open_streams:
                await stream.finished.wait()


async def _run_until_client_leaves(
    websocket: WebSocket, body: StreamBody
) -> tuple[bool, CloseStream | None]:
    """Run ``body`` beside a reader; (whether the client left first, the body's close)."""
    client_left = False
    closing: CloseStream | None = None
    async with anyio.create_task_group() as task_group:

        async def watch_client() -> None:
            nonlocal client_left
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # streams are one-way: what the client sends is not read
            client_left = True
            task_group.cancel_scope.cancel()

        async def run_body() -> None:
            nonlocal client_left, closing
            try:
                await body(websocket)
            except WebSocketDisconnect:
                client_left = True  # a send failed: the connection is gone
            except CloseStream as close:
                closing = close
            task_group.cancel_scope.cancel()

        task_group.start_soon(watch_client)
        task_group.start_soon(run_body)
    return client_left, closing
