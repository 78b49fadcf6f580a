"""Control transport over a Unix domain socket (0600, in a 0700 directory).

The peer's uid is read with ``SO_PEERCRED`` on Linux so the control server can refuse other
users even if file permissions were loosened. asyncio is imported only by ``start_server``;
the blocking client side stays cheap for ``dbtkctl``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys

TYPE_CHECKING = False  # typing costs dbtkctl ~2 ms at start-up; only annotations need it
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable
    from typing import Any, Protocol

    class Channel(Protocol):
        def sendall(self, data: bytes, /) -> None: ...
        def recv(self, size: int, /) -> bytes: ...
        def settimeout(self, value: float | None, /) -> None: ...
        def close(self) -> None: ...

    class ControlServer(Protocol):
        @property
        def sockets(self) -> tuple[socket.socket, ...]: ...
        def close(self) -> None: ...
        async def wait_closed(self) -> None: ...

    OnConnect = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int | None], Awaitable[None]]
else:
    Channel = ControlServer = socket.socket  # runtime placeholders; see the stubs above

# Enough for a burst of 50 racing ``dbtkctl port`` callers plus every window reconnecting.
LISTEN_BACKLOG = 512


def connect(address: str, timeout: float) -> socket.socket:
    """Connect to the control socket; raises OSError (ENOENT, ECONNREFUSED...) if none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def peer_uid(sock: socket.socket) -> int | None:
    """The connecting process's uid (Linux ``SO_PEERCRED``), or None where unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def remove_stale(address: str) -> None:
    """Unlink a socket file nobody listens on; leave a live one alone (raise FileExistsError)."""
    try:
        st = os.lstat(address)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{address} exists and is not a socket; remove it by hand")
    try:
        connect(address, 0.5).close()
    except OSError:
        os.unlink(address)
        return
    raise FileExistsError(f"a live daemon answers on {address}")


def current_user_sid() -> str:
    raise NotImplementedError("user SIDs exist only on Windows")


async def start_server(
    address: str, on_connect: OnConnect, sock: socket.socket | None = None
) -> ControlServer:
    """Listen on ``address`` (or adopt ``sock``); the caller closes the returned server."""
    import asyncio

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = writer.get_extra_info("socket")
        try:
            uid = peer_uid(raw) if raw is not None else None
        except OSError:
            uid = -1
        await on_connect(reader, writer, uid)

    # Python 3.13+ would unlink the socket file when the server closes; the supervisor
    # decides that itself (never for systemd's socket or one shared with a successor).
    options: dict[str, Any] = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
    if sock is not None:
        return await asyncio.start_unix_server(
            accepted, sock=sock, backlog=LISTEN_BACKLOG, **options
        )
    from dbtkd.paths import ensure_private_dir

    ensure_private_dir(os.path.dirname(address))
    return await asyncio.start_unix_server(
        accepted, sock=_listening_socket(address), backlog=LISTEN_BACKLOG, **options
    )


def _listening_socket(address: str) -> socket.socket:
    """A socket already listening, 0600, that appears at ``address`` in one rename.

    Bound straight to ``address``, the file would exist before ``listen()`` (and before the
    chmod): a client that sees the file in that window gets ECONNREFUSED and may take the
    daemon for dead. Binding a private name first and renaming it closes the window.
    """
    # Short on purpose: the socket path is kept under sun_path's 108 bytes (dbtkd.paths).
    temporary = os.path.join(os.path.dirname(address), f".{os.getpid()}.s")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        sock.listen(LISTEN_BACKLOG)
        os.replace(temporary, address)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return sock
