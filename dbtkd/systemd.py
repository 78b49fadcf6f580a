"""The two systemd protocols the supervisor speaks: ``sd_notify`` and socket activation.

Both are a few lines over a datagram socket and a pair of environment variables, so they are
written here rather than pulled in as a dependency. Neither does anything unless systemd set
the variables, and the supervisor strips them before spawning its worker. dbtkctl imports it
(the variables it must not hand to a daemon it spawns): stdlib only.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed descriptors start at 3
# What systemd hands the process it starts. They are the supervisor's alone: a worker or a
# daemon spawned on demand must not believe they are meant for it.
HANDOVER_ENV_PREFIXES = ("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")


def notify(message: str, env: Mapping[str, str]) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to ``$NOTIFY_SOCKET``; False if not under systemd."""
    address = env.get("NOTIFY_SOCKET")
    if not address or sys.platform == "win32":
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def listen_sockets(env: Mapping[str, str]) -> list[socket.socket]:
    """Sockets passed by socket activation (``LISTEN_PID``/``LISTEN_FDS``) meant for us."""
    try:
        if int(env.get("LISTEN_PID", "")) != os.getpid():
            return []
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)  # ours alone; the worker gets only what we pass
        sockets.append(socket.socket(fileno=fd))
    return sockets
