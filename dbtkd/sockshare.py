"""How the listening TCP socket travels from the supervisor to its worker.

The supervisor binds the port once and keeps it for the daemon's life; each worker serves on a
copy. POSIX: the supervisor spawns the worker with ``pass_fds`` and tells it the descriptor
number, and the worker hands Hypercorn ``bind = ["fd://N"]``. Windows: descriptors are not
inherited that way, so after the spawn the supervisor calls ``sock.share(worker_pid)`` and
sends the bytes (base64, in a JSON-ready dict) over the worker's stdin pipe; the worker calls
``socket.fromshare``. Hypercorn cannot take such a socket by bind string, so there the worker
passes it through ``hypercorn.asyncio.run.worker_serve(..., sockets=Sockets([], [sock], []))``.

The supervisor side, in order::

    make_exclusive(sock); sock.bind(...); sock.listen(...)
    proc = subprocess.Popen(argv, stdin=PIPE, ..., **spawn_kwargs(sock))
    info = export_for_child(sock, proc.pid)      # send to the worker with its first stdin line

and the worker side: ``sock, bind = import_in_child(info)``.

The OS is chosen once, in ``_WINDOWS``; tests flip it to run the other branch. ``socket.share``
and ``socket.fromshare`` sit behind ``_share`` / ``_fromshare`` so Linux can exercise the
Windows branch. A POSIX worker started before the socket exists (the first one, at the
supervisor's first line: ``dbtkd.spawn.start_early``) gets it later over a socket pair
(``SCM_RIGHTS``): ``{"recv": N}``. dbtkctl imports it (through ``dbtkd.port``): stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any, TypeGuard

_WINDOWS = sys.platform == "win32"

# ws2def.h: SO_EXCLUSIVEADDRUSE is ((int)(~SO_REUSEADDR)) with SO_REUSEADDR = 4. The socket
# module exports it only on Windows; the literal lets Linux tests name the same option.
SO_EXCLUSIVEADDRUSE: int = getattr(socket, "SO_EXCLUSIVEADDRUSE", ~4)


def _share(sock: socket.socket, pid: int) -> bytes:
    """``socket.share`` (Windows only): bytes from which process ``pid`` can rebuild ``sock``."""
    data: bytes = getattr(sock, "share")(pid)  # noqa: B009 - absent from POSIX stubs
    return data


def _fromshare(data: bytes) -> socket.socket:
    """``socket.fromshare`` (Windows only)."""
    sock: socket.socket = getattr(socket, "fromshare")(data)  # noqa: B009 - as above
    return sock


def make_exclusive(sock: socket.socket) -> None:
    """Make ``sock`` the only socket that can bind its port. Call it before ``bind``.

    Windows: without ``SO_EXCLUSIVEADDRUSE`` another process that sets ``SO_REUSEADDR`` can bind
    the same port and steal our connections; Hypercorn sets ``SO_REUSEADDR`` on sockets it
    opens itself (``fd://`` binds), which is one more reason the Windows worker takes the
    socket through ``sockets=`` instead. The two options exclude each other, so setting ours
    fails loudly if ``SO_REUSEADDR`` is already on. POSIX: nothing to do; ``SO_REUSEADDR``
    there only reuses ports in TIME_WAIT, never one with a live listener.
    """
    if not _WINDOWS:
        return
    sock.setsockopt(socket.SOL_SOCKET, SO_EXCLUSIVEADDRUSE, 1)
    if not sock.getsockopt(socket.SOL_SOCKET, SO_EXCLUSIVEADDRUSE):
        raise OSError("SO_EXCLUSIVEADDRUSE did not stick on the listening socket")


def spawn_kwargs(sock: socket.socket) -> dict[str, Any]:
    """Extra ``subprocess.Popen`` arguments that let the worker inherit ``sock``.

    POSIX: ``pass_fds`` keeps the descriptor number in the child (and makes it inheritable
    there only). Windows: nothing; the socket is shared after the spawn.
    """
    if _WINDOWS:
        return {}
    return {"pass_fds": (sock.fileno(),)}


def export_for_child(sock: socket.socket, child_pid: int) -> dict[str, Any]:
    """A JSON-ready description of ``sock`` for the worker ``child_pid`` (already spawned).

    POSIX ``{"fd": N}`` (the child was spawned with ``spawn_kwargs``); Windows
    ``{"share": "<base64>"}``, valid for that process only. The supervisor keeps ``sock``.
    """
    if _WINDOWS:
        return {"share": base64.b64encode(_share(sock, child_pid)).decode("ascii")}
    return {"fd": sock.fileno()}


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """POSIX: ``(ours, the child's)``, a socket pair for a worker started before the listening
    socket exists (``dbtkd.spawn.start_early``); pass the child's end with ``pass_fds``."""
    if sys.platform == "win32":
        raise OSError("sockets travel by socket.share on Windows, not over a socket pair")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours, theirs


def export_through(channel: socket.socket, child_fd: int, sock: socket.socket) -> dict[str, Any]:
    """POSIX: send ``sock`` over ``channel`` (``SCM_RIGHTS``) to a worker holding the other end
    as descriptor ``child_fd``; the JSON-ready description is ``{"recv": child_fd}``."""
    if sys.platform == "win32":
        raise OSError("sockets travel by socket.share on Windows, not over a socket pair")
    socket.send_fds(channel, [b"L"], [sock.fileno()])
    return {"recv": child_fd}


def import_in_child(info: Mapping[str, Any]) -> tuple[socket.socket, str]:
    """Rebuild the listening socket in the worker: ``(sock, hypercorn_bind)``.

    The caller owns ``sock`` and closes it. POSIX: ``sock`` is a duplicate of descriptor N and
    the bind string is ``"fd://N"``; Hypercorn opens N itself from that string, so closing
    ``sock`` never pulls the port from under it. Windows: the bind string is ``""`` and the
    worker must serve ``sock`` itself through ``worker_serve(..., sockets=...)``.
    """
    if _WINDOWS:
        share = info.get("share")
        if set(info) != {"share"} or not isinstance(share, str):
            raise ValueError(f'expected {{"share": "<base64>"}} from the supervisor, got {info!r}')
        try:
            data = base64.b64decode(share, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"the shared socket from the supervisor is not base64: {exc}") from exc
        return _checked(_fromshare(data), "the shared socket"), ""
    if set(info) == {"recv"} and _descriptor(info["recv"]):
        return _received(info["recv"])
    fd = info.get("fd")
    if set(info) != {"fd"} or not _descriptor(fd):
        raise ValueError(
            f'expected {{"fd": N}} or {{"recv": N}} with N >= 0 from the supervisor, got {info!r}'
        )
    try:
        # A duplicate, not socket(fileno=fd): two socket objects owning one descriptor would
        # close it twice, the second time perhaps closing an unrelated, reused descriptor.
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"descriptor {fd} from the supervisor is unusable ({exc.strerror}); was the worker "
            "spawned with spawn_kwargs(sock)?",
        ) from exc
    return _checked(sock, f"descriptor {fd}"), f"fd://{fd}"


def _descriptor(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _received(channel_fd: int) -> tuple[socket.socket, str]:
    """The listening socket sent over the socket pair ``channel_fd`` (``export_through``)."""
    if sys.platform == "win32":
        raise ValueError('{"recv": N} is for POSIX workers; on Windows expected {"share": ...}')
    try:
        with socket.socket(fileno=channel_fd) as channel:
            _, fds, _, _ = socket.recv_fds(channel, 1, 1, getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    except OSError as exc:
        raise OSError(
            exc.errno, f"the socket pair {channel_fd} from the supervisor is unusable: {exc}"
        ) from exc
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected one descriptor on socket pair {channel_fd}; got {len(fds)}")
    try:
        sock = _checked(socket.socket(fileno=os.dup(fds[0])), "the socket sent by the supervisor")
    except BaseException:
        os.close(fds[0])
        raise
    return sock, f"fd://{fds[0]}"


def _checked(sock: socket.socket, what: str) -> socket.socket:
    """``sock`` if it is a listening TCP socket; else close it and raise ValueError."""
    problem = None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        problem = f"a {_name(sock.family)}/{_name(sock.type)} socket"
    else:
        accept_conn = getattr(socket, "SO_ACCEPTCONN", None)
        if accept_conn is not None and not sock.getsockopt(socket.SOL_SOCKET, accept_conn):
            problem = "not listening"
    if problem is not None:
        sock.close()
        raise ValueError(f"{what} from the supervisor should be a listening TCP socket: {problem}")
    return sock


def _name(value: int) -> str:
    # family and type are enums, except for values the socket module has no name for.
    return str(getattr(value, "name", value))
