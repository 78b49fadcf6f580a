"""Control transport over a Unix domain socket (0600, in a 0700 directory).

The peer's uid is read with ``SO_PEERCRED`` on Linux (``LOCAL_PEERCRED`` on macOS and the BSDs)
so the control server can refuse other users even if file permissions were loosened, and so
can every client: ``connect`` checks, before it sends a byte, that the socket's directory is a
real directory (not a symlink) of ours with mode 0700, that the socket file is ours, and that
the process listening is ours. Otherwise it raises ``UntrustedEndpoint``: in a shared temp dir
another local user could have created the path first and would otherwise receive the token and
the connection passwords. asyncio is imported only by ``start_server``; the blocking client
side stays cheap for ``dbtkctl``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys

if sys.platform == "win32":  # dbtkd.ipc picks _windows there; this is for the type checker
    raise ImportError("dbtkd.ipc._unix is the POSIX control transport")
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


class UntrustedEndpoint(PermissionError):
    """The control socket, its directory or the process behind it is not the user's own."""


def check_endpoint(address: str) -> None:
    """Raise ``UntrustedEndpoint`` unless ``address`` sits in a real 0700 directory of ours
    and, if it exists, is a socket of ours. A missing directory or socket is left to connect
    (ENOENT: no daemon)."""
    me = os.getuid()
    directory = os.path.dirname(address) or "."
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedEndpoint(
            f"refusing to use {address}: {directory} is not a real directory (a symlink?); "
            "another user may be impersonating dbtkd. Remove it, or set DBTK_HOME"
        )
    if st.st_uid != me or stat.S_IMODE(st.st_mode) & 0o077:
        raise UntrustedEndpoint(
            f"refusing to use {address}: {directory} belongs to uid {st.st_uid} with mode "
            f"{stat.S_IMODE(st.st_mode):o}, expected uid {me} and 700; another user may be "
            "impersonating dbtkd. Remove it, or set DBTK_HOME"
        )
    try:
        st = os.lstat(address)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != me:
        raise UntrustedEndpoint(
            f"refusing to use {address}: it is not a socket of uid {me} (uid {st.st_uid}); "
            "another user may be impersonating dbtkd. Remove it, or set DBTK_HOME"
        )


def connect(address: str, timeout: float) -> socket.socket:
    """Connect to the control socket; raises OSError (ENOENT, ECONNREFUSED...) if none, and
    ``UntrustedEndpoint`` — before sending anything — if it is not the user's own daemon."""
    check_endpoint(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        uid = peer_uid(sock)
        if uid is not None and uid != os.getuid():
            raise UntrustedEndpoint(
                f"refusing to use {address}: the process listening there runs as uid {uid}, "
                f"not as you (uid {os.getuid()}); another user may be impersonating dbtkd"
            )
    except BaseException:
        sock.close()
        raise
    return sock


def peer_uid(sock: socket.socket) -> int | None:
    """The peer process's uid: ``SO_PEERCRED`` on Linux, ``LOCAL_PEERCRED`` on macOS and the
    BSDs; None where neither exists (then the socket's owner and mode are all we check)."""
    import struct

    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        sol_local, local_peercred = 0, 0x001  # <sys/un.h>; Python names neither
        layout = "IIh16I"  # struct xucred: version, uid, ngroups, groups[16]
        raw = sock.getsockopt(sol_local, local_peercred, struct.calcsize(layout))
        return int(struct.unpack(layout, raw[: struct.calcsize(layout)])[1])
    return None


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
