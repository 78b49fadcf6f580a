"""Version handoff: a newer daemon takes over the port, the control socket and the lock.

The new ``dbtkd --takeover`` connects to the running daemon's control socket and sends
``{"cmd": "handoff", "version": V}``. The old daemon refuses anything but a newer version
(PEP 440); otherwise it answers with one message carrying, over ``SCM_RIGHTS``, the listening
TCP socket, the control socket's listener and the instance lock's descriptor (an ``flock``
belongs to the open file, so it moves with the descriptor), plus ``{token, nonce, port,
started_at, leases}``. The old daemon keeps serving while the new worker starts; the new
daemon then reports ``handoff_done`` (or ``handoff_failed`` with a reason) on the same
connection. Only then does the old daemon stop accepting, drain and exit, leaving the files
it shares with its successor alone. The port, the token and every file path are unchanged.

POSIX only: Windows has no ``SCM_RIGHTS`` for these handles, so there an upgrade is a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from typing import Any

from dbtkd import ipc, protocol
from dbtkd.errors import DbtkError
from dbtkd.units import SECONDS

TYPE_CHECKING = False  # dbtkctl imports this module on an upgrade: no typing at run time
if TYPE_CHECKING:
    from dbtkd.wire import HandoffState

# The new worker must answer within this, else the old daemon keeps everything (DESIGN §2).
READY_TIMEOUT = 10 * SECONDS
# Waiting for the new daemon's verdict: its worker's ready timeout plus its own start-up.
VERDICT_TIMEOUT = READY_TIMEOUT + 5 * SECONDS
# After the handoff, clients re-attach to the new daemon; their old leases count this long.
LEASE_GRACE = 10 * SECONDS
FD_NAMES = ("listener", "control", "lock", "data_lock")
MAX_MESSAGE = 64 * 1024


class HandoffRefused(DbtkError):
    """The running daemon would not hand over (a downgrade, or the same version)."""


def is_newer(candidate: str, current: str) -> bool:
    """PEP 440: is ``candidate`` a strictly newer version than ``current``?"""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(candidate) > Version(current)
    except InvalidVersion:
        return False


def is_development(version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version).is_devrelease
    except InvalidVersion:
        return True  # unknown shapes are treated like development builds: never automatic


def send_state(
    connection: socket.socket,
    request_id: int | str | None,
    fds: list[int],
    state: HandoffState,
    daemon: dict[str, Any],
) -> None:
    """Old daemon: the ``handoff`` reply, with the descriptors attached to its bytes."""
    if sys.platform == "win32":  # refused before this point (commands.cmd_handoff)
        raise NotImplementedError("a handoff passes descriptors with SCM_RIGHTS (POSIX)")
    reply = protocol.encode_reply(request_id, state | {"fds": list(FD_NAMES)}, daemon)
    socket.send_fds(connection, [reply], fds)


def request(
    control_socket: str, version: str
) -> tuple[socket.socket, dict[str, Any], dict[str, int]]:
    """New daemon: ask for the handoff. Returns the connection (kept open for the verdict),
    the carried state and the received descriptors by name. The caller owns all of them."""
    if sys.platform == "win32":
        raise NotImplementedError("a handoff passes descriptors with SCM_RIGHTS (POSIX)")
    try:
        # ipc.connect checks the socket's directory, file and peer are ours before any byte.
        connection = ipc.connect(control_socket, VERDICT_TIMEOUT)
    except OSError as exc:
        raise DbtkError(
            f"handoff: cannot reach the running daemon at {control_socket}: {exc}"
        ) from exc
    try:
        connection.sendall(protocol.encode_request(1, "handoff", version=version))
        data, fds, _flags, _address = socket.recv_fds(connection, MAX_MESSAGE, len(FD_NAMES))
    except OSError as exc:
        connection.close()
        raise DbtkError(
            f"handoff: cannot reach the running daemon at {control_socket}: {exc}"
        ) from exc
    try:
        message = protocol.decode_message(data.partition(b"\n")[0])
    except ValueError:
        message = {}
    if not message.get("ok"):
        for fd in fds:
            os.close(fd)
        connection.close()
        error = message.get("error") or {}
        raise HandoffRefused(f"handoff refused: {error.get('message', 'no answer')}")
    if len(fds) != len(FD_NAMES):
        for fd in fds:
            os.close(fd)
        connection.close()
        raise DbtkError(f"handoff: expected {len(FD_NAMES)} descriptors, got {len(fds)}")
    return connection, message["result"], dict(zip(FD_NAMES, fds, strict=True))


def send_verdict(connection: socket.socket, ok: bool, reason: str = "") -> None:
    """New daemon: tell the old one whether the new worker answered."""
    cmd = "handoff_done" if ok else "handoff_failed"
    with contextlib.suppress(OSError):  # the old daemon is gone already: nothing to tell
        connection.sendall(json.dumps({"cmd": cmd, "reason": reason}).encode() + b"\n")
