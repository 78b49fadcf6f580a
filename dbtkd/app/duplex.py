"""Two-way WebSocket streams: the client's messages reach the stream's body through an inbox.

``Streams.serve`` reads every incoming message itself, to notice the client leaving, and drops
it. A two-way stream (``/ws/migrator``, ``/ws/terminal``) is served through a ``receive`` that
also copies each data message into a bounded inbox the body reads; when the client leaves,
the inbox ends (``anyio.EndOfStream``). A full inbox holds the reader back (backpressure on a
client typing faster than the shell reads) instead of dropping input. The socket is still
registered with ``Streams``, so a stopping worker closes it with 1012/1001 like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from dbtkd.app.responses import error_response
from dbtkd.app.streams import Streams

INBOX_MESSAGES = 64

Inbox = MemoryObjectReceiveStream[str | bytes]
DuplexBody = Callable[[WebSocket, Inbox], Awaitable[None]]


class DuplexStream:
    """The raw ASGI endpoint of a two-way stream named ``name``."""

    def __init__(self, streams: Streams, name: str, body: DuplexBody) -> None:
        self.streams = streams
        self.name = name
        self.body = body

    async def refuse(self, websocket: WebSocket) -> tuple[int, str, str] | None:
        """(status, error, detail) to refuse this upgrade before accepting it, or None."""
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inbox_in, inbox_out = anyio.create_memory_object_stream[str | bytes](INBOX_MESSAGES)

        async def copying_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                # The body may have ended already; then nobody reads what comes.
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await inbox_in.send(data)
            elif message["type"] == "websocket.disconnect":
                inbox_in.close()
            return message

        websocket = WebSocket(scope, copying_receive, send)
        refusal = await self.refuse(websocket)
        if refusal is not None:
            await deny(websocket, *refusal)
            return
        with inbox_in, inbox_out:
            await self.streams.serve(
                self.name, websocket, lambda socket: self.body(socket, inbox_out)
            )


async def deny(websocket: WebSocket, status: int, error: str, detail: str) -> None:
    """Refuse an upgrade with an HTTP status (or, if the server cannot, a close frame)."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        await websocket.send_denial_response(error_response(status, error, detail))
    else:
        await websocket.close(1013 if status == 503 else 1008, detail[:120])
