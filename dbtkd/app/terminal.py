"""``/ws/terminal``: the user's shell on a pseudo-terminal, one per socket, a few per daemon.

The client's first frame chooses the protocol (UI-CONTRACT §13, D10); nothing is sent before it:

- ``{"session_id": "tab-1"}`` (the DB Toolkit UI): **raw**. The shell starts as a login shell
  (``-l``) with ``TERM=xterm-256color`` and ``COLORTERM=truecolor``, 24 x 80, in the home
  directory. Text frames are keystrokes, written to the PTY as they are, except
  ``RESIZE:<rows>:<cols>`` (clamped to 1-1000); binary frames are raw bytes. The output comes
  as binary frames of PTY bytes, never a JSON envelope; when the shell exits the socket closes
  with 1000. A first frame of another shape closes the socket with 1008 and a reason.
- ``{"type": "start"}`` (dbtkd's JSON protocol, below).

In the JSON protocol the worker opens a PTY (``pty.openpty``) and starts the user's shell
on it in a new session, with the PTY as its controlling terminal, then sends ``{"type":
"snapshot", "sessions", "max_sessions"}`` and ``{"type": "started", "pid", "shell", "rows",
"cols"}``. The client sends ``{"type": "input", "data": "..."}`` (or binary frames, as raw
bytes) and ``{"type": "resize", "rows", "cols"}`` (1-1000 each; anything else is answered with
an ``error`` message and the session goes on). The shell's output arrives as ``{"type":
"output", "data": "..."}`` (UTF-8, undecodable bytes replaced) and its end as ``{"type":
"exit", "code"}``, after which the socket closes with 1000.

At most ``MAX_SESSIONS`` run at once per daemon; one more is refused before the upgrade with
503 ``busy``. When the client disconnects (or the shell exits, or the worker stops), every
process of the shell's session is SIGKILLed, background jobs included, and the shell reaped.
Terminals are not jobs: a stop does not wait for them. Windows has no PTY here (no ConPTY
backend): the socket is accepted and closed at once with 1003 and a reason saying so.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import struct
import sys
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from dbtkd.app.duplex import DuplexStream, Inbox, deny
from dbtkd.app.programs import Child, child_environment, spawn
from dbtkd.app.responses import describe
from dbtkd.app.security import SUBPROTOCOL
from dbtkd.app.streams import (
    INVALID_PAYLOAD,
    POLICY_VIOLATION,
    CloseStream,
    Streams,
    decode_frame,
)
from dbtkd.units import SECONDS

# Each session is a shell and a PTY pair; eight is more windows than anyone reads at once,
# and keeps a runaway UI from filling the process table.
MAX_SESSIONS = 8
MIN_SIZE, MAX_SIZE = 1, 1000
DEFAULT_ROWS, DEFAULT_COLUMNS = 24, 80
READ_BYTES = 64 * 1024
# After the PTY reports the end of output, how long the shell may take to exit.
EXIT_GRACE = 2 * SECONDS
UNSUPPORTED_CLOSE_CODE = 1003
UNSUPPORTED_REASON = "terminal not supported on this platform (no ConPTY backend)"
# The UI sends its first frame as soon as the socket opens; a client silent this long is not
# one of ours (the old backend waited 10 s too).
FIRST_FRAME_TIMEOUT = 10 * SECONDS
_RESIZE = re.compile(r"^RESIZE:(\d{1,9}):(\d{1,9})$")


def pty_supported() -> bool:
    """Whether this OS has the PTY the terminal needs (tests patch it to see Windows' path)."""
    return os.name == "posix"


def user_shell() -> str:
    if sys.platform == "win32":  # never reached: no PTY there (``pty_supported``)
        raise NotImplementedError("the terminal needs a PTY")
    shell = os.environ.get("SHELL", "")
    if shell and os.access(shell, os.X_OK):
        return shell
    with contextlib.suppress(KeyError, ImportError):
        import pwd

        entry = pwd.getpwuid(os.getuid()).pw_shell
        if entry and os.access(entry, os.X_OK):
            return entry
    return "/bin/sh"


def set_size(fd: int, rows: int, columns: int) -> None:
    if sys.platform == "win32":
        raise NotImplementedError("the terminal needs a PTY")
    import fcntl
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def parse_size(message: dict[str, Any]) -> tuple[int, int] | str:
    """(rows, cols) of a resize message, or why not."""
    rows, columns = message.get("rows"), message.get("cols")
    for name, value in (("rows", rows), ("cols", columns)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not MIN_SIZE <= value <= MAX_SIZE
        ):
            return f"expected {name} to be an integer {MIN_SIZE}-{MAX_SIZE}; got {value!r:.40}"
    assert isinstance(rows, int)
    assert isinstance(columns, int)
    return rows, columns


class Terminal(DuplexStream):
    """The ``/ws/terminal`` endpoint and its session count."""

    def __init__(self, streams: Streams) -> None:
        super().__init__(streams, "terminal", self.session)
        self.sessions = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not pty_supported():
            websocket = WebSocket(scope, receive, send)
            await websocket.accept(subprotocol=SUBPROTOCOL)
            await websocket.close(UNSUPPORTED_CLOSE_CODE, UNSUPPORTED_REASON)
            return
        if self.sessions >= MAX_SESSIONS:
            await deny(
                WebSocket(scope, receive, send),
                503,
                "busy",
                f"expected fewer than {MAX_SESSIONS} terminal sessions; {self.sessions} are open "
                "(close one first)",
            )
            return
        self.sessions += 1  # counted before the first await: no two upgrades pass the cap
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.sessions -= 1

    async def session(self, websocket: WebSocket, inbox: Inbox) -> None:
        first = await first_frame(inbox)
        if isinstance(first, dict) and isinstance(first.get("session_id"), str):
            await self.raw_session(websocket, inbox)
            return
        if not (isinstance(first, dict) and first.get("type") == "start"):
            raise CloseStream(
                POLICY_VIOLATION, 'expected {"session_id": ...} or {"type": "start"} first'
            )
        sending = anyio.Lock()

        async def send(message: dict[str, Any]) -> None:
            async with sending:
                await websocket.send_text(json.dumps(message))

        await send({"type": "snapshot", "sessions": self.sessions, "max_sessions": MAX_SESSIONS})
        master, child, shell = await start_shell([], {})
        try:
            await send(
                {
                    "type": "started",
                    "pid": child.pid,
                    "shell": shell,
                    "rows": DEFAULT_ROWS,
                    "cols": DEFAULT_COLUMNS,
                }
            )
            client_left = False
            async with anyio.create_task_group() as group:

                async def take_input() -> None:
                    nonlocal client_left
                    await _input(inbox, master, send)
                    client_left = True
                    group.cancel_scope.cancel()

                group.start_soon(take_input)
                await _output(master, send)  # until the PTY's last holder is gone
                group.cancel_scope.cancel()
            if client_left:
                return
            code: int | None = None
            with anyio.move_on_after(EXIT_GRACE):
                code = await child.wait()
            await send({"type": "exit", "code": code})
        finally:
            with anyio.CancelScope(shield=True):
                await child.kill_and_reap()
                os.close(master)

    async def raw_session(self, websocket: WebSocket, inbox: Inbox) -> None:
        """The UI's protocol: raw keystrokes in, raw PTY bytes out, no envelope at all."""
        master, child, _ = await start_shell(["-l"], {"COLORTERM": "truecolor"})
        try:
            client_left = False
            async with anyio.create_task_group() as group:

                async def take_input() -> None:
                    nonlocal client_left
                    async for raw in inbox:
                        if isinstance(raw, str) and (size := _RESIZE.match(raw)):
                            rows, columns = (clamp(int(n)) for n in size.groups())
                            set_size(master, rows, columns)
                        else:
                            await _write(master, raw.encode() if isinstance(raw, str) else raw)
                    client_left = True
                    group.cancel_scope.cancel()

                group.start_soon(take_input)
                while data := await _read(master):
                    await websocket.send_bytes(data)
                group.cancel_scope.cancel()
            if not client_left:
                with anyio.move_on_after(EXIT_GRACE):
                    await child.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await child.kill_and_reap()
                os.close(master)


def clamp(size: int) -> int:
    return min(max(size, MIN_SIZE), MAX_SIZE)


async def first_frame(inbox: Inbox) -> object:
    """The client's first frame, decoded; closes the socket (1008) if none comes in time."""
    with anyio.move_on_after(FIRST_FRAME_TIMEOUT):
        try:
            raw = await inbox.receive()
        except anyio.EndOfStream:
            raise CloseStream(1000, "") from None
        try:
            return decode_frame(raw)
        except ValueError:
            raise CloseStream(INVALID_PAYLOAD, "expected a JSON text frame first") from None
    raise CloseStream(POLICY_VIOLATION, f"expected a first frame within {FIRST_FRAME_TIMEOUT:g} s")


async def start_shell(arguments: list[str], extra_env: dict[str, str]) -> tuple[int, Child, str]:
    """A PTY (24 x 80) and the user's shell on it as session leader: (master fd, child, shell)."""
    if sys.platform == "win32":
        raise NotImplementedError("the terminal needs a PTY")
    import pty

    master, slave = pty.openpty()
    try:
        set_size(slave, DEFAULT_ROWS, DEFAULT_COLUMNS)
        os.set_blocking(master, False)
        shell = user_shell()
        child = await spawn(
            [shell, *arguments],
            env=child_environment({"TERM": "xterm-256color", **extra_env}, keep_credentials=True),
            cwd=str(await anyio.Path("~").expanduser()),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            session=True,
            controlling_tty=True,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the shell holds it now; ours would keep the PTY from ending
    return master, child, shell


async def _read(master: int) -> bytes:
    """The PTY's next bytes; b"" once every process holding its other side has gone."""
    while True:
        await anyio.wait_readable(master)
        try:
            return os.read(master, READ_BYTES)
        except BlockingIOError:
            continue
        except OSError:  # EIO: every process holding the PTY's other side has gone
            return b""


async def _output(master: int, send: Any) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        data = await _read(master)
        text = decoder.decode(data, final=not data)
        if text:
            await send({"type": "output", "data": text})
        if not data:
            return


async def _input(inbox: Inbox, master: int, send: Any) -> None:
    """Client messages until it leaves: keystrokes to the PTY, resizes to its window size."""
    async for raw in inbox:
        if isinstance(raw, bytes):
            await _write(master, raw)
            continue
        try:
            message = decode_frame(raw)  # deeply nested JSON closes the socket (1007)
        except ValueError:
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "input" and isinstance(message, dict) and isinstance(message.get("data"), str):
            await _write(master, message["data"].encode("utf-8"))
        elif kind == "resize" and isinstance(message, dict):
            size = parse_size(message)
            if isinstance(size, str):
                await send({"type": "error", "error": "invalid_params", "detail": size})
                continue
            set_size(master, *size)
            await send({"type": "resized", "rows": size[0], "cols": size[1]})
        else:
            await send(
                {
                    "type": "error",
                    "error": "invalid_request",
                    "detail": 'expected {"type": "input", "data": "..."} or {"type": "resize", '
                    f'"rows": n, "cols": n}}; got {describe(raw)}',
                }
            )


async def _write(master: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(master, view) :]
        except BlockingIOError:
            await anyio.wait_writable(master)
        except OSError:  # EIO: the shell is gone; its exit is reported by the output side
            return
