"""The control transport, chosen once at import: a Unix socket on POSIX, a named pipe on Windows.

Both modules offer the same four names:

- ``connect(address, timeout) -> Channel``: a blocking client connection (stdlib only, since
  ``dbtkctl`` uses it); the caller owns and closes it. It raises ``UntrustedEndpoint`` before
  sending anything when the endpoint is not the user's own (POSIX: directory, socket and peer
  checks; Windows: the pipe's DACL already admits only the user).
- ``start_server(address, on_connect, sock=None) -> ControlServer``: an asyncio server; each
  accepted connection is handed to ``on_connect(reader, writer, peer_uid)`` which owns it.
  ``sock`` adopts an already-listening socket (systemd socket activation, handoff).
- ``current_user_sid()``: the Windows SID used in the pipe name (POSIX: not used).
- ``remove_stale(address)``: remove a control endpoint left by a dead daemon, never a live one.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - exercised through its seams on Linux
    from dbtkd.ipc._windows import (
        Channel,
        ControlServer,
        UntrustedEndpoint,
        connect,
        current_user_sid,
        remove_stale,
        start_server,
    )
else:
    from dbtkd.ipc._unix import (
        Channel,
        ControlServer,
        UntrustedEndpoint,
        connect,
        current_user_sid,
        remove_stale,
        start_server,
    )

__all__ = [
    "Channel",
    "ControlServer",
    "UntrustedEndpoint",
    "connect",
    "current_user_sid",
    "remove_stale",
    "start_server",
]
