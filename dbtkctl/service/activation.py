"""Socket activation as ``dbtkctl status`` and ``stop`` see it, without connecting.

Connecting to a control socket that a systemd socket unit holds would start the daemon, so
these checks read files only: the profile's socket unit file, ``/proc/net/unix`` (is anything
listening on the control socket path?), the state file and the lock file (is a daemon running
or starting?). Kept to a few stdlib modules that ``dbtkctl`` loads anyway, because ``status``
and ``stop`` pay for this module on every run; the rest of ``dbtkctl.service`` is loaded only
by ``dbtkctl service``.
"""

from __future__ import annotations

import os
import stat
import sys

from dbtkd import state
from dbtkd.procstats import pid_alive

TYPE_CHECKING = False  # importing typing costs status and stop ~3 ms
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from dbtkd.paths import RuntimePaths

UNIT_BASENAME = "dbtkd"
ACCEPTCON = 0x10000  # /proc/net/unix "Flags" bit of a listening socket (__SO_ACCEPTCON)


def profile_id(home: str) -> str:
    """12 hex digits naming a profile, the same digest the Windows pipe name uses."""
    import hashlib  # only profiles pay for it

    real = os.path.normcase(os.path.realpath(home))
    return hashlib.sha256(real.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def profile_suffix(home: str | None) -> str:
    """``""`` for the default profile, ``"-<12 hex>"`` for a ``--home`` profile."""
    return "" if home is None else "-" + profile_id(home)


def unit_dir(env: Mapping[str, str], user_home: str) -> str:
    """Where systemd looks for the user's own units."""
    config = env.get("XDG_CONFIG_HOME")
    if not config or not os.path.isabs(config):
        config = os.path.join(user_home, ".config")
    return os.path.join(config, "systemd", "user")


def running_daemon(runtime: RuntimePaths) -> dict[str, Any] | None:
    """The state file of a live daemon of this profile, read without connecting to it."""
    document = state.read_json(runtime.state_file)
    if document is None or not isinstance(document.get("pid"), int):
        return None
    return document if pid_alive(document["pid"]) else None


def socket_unit(runtime: RuntimePaths, env: Mapping[str, str] | None = None) -> str | None:
    """The systemd socket unit installed for this profile and listening on its control socket.

    Linux only. The listener is found in ``/proc/net/unix`` (listening sockets, by path).
    """
    if not sys.platform.startswith("linux"):
        return None
    env = os.environ if env is None else env
    name = f"{UNIT_BASENAME}{profile_suffix(runtime.home)}.socket"
    if not os.path.exists(os.path.join(unit_dir(env, os.path.expanduser("~")), name)):
        return None
    return name if _is_listening(runtime.control_socket) else None


def waiting_socket_unit(runtime: RuntimePaths, env: Mapping[str, str] | None = None) -> str | None:
    """The socket unit, if it holds the control socket while no daemon runs (nor starts)."""
    unit = socket_unit(runtime, env)
    if unit is None or running_daemon(runtime) is not None or _lock_holder_alive(runtime):
        return None
    return unit


def _lock_holder_alive(runtime: RuntimePaths) -> bool:
    # A daemon writes its pid into the lock file as soon as it holds the lock, long before
    # the state file exists: this covers a daemon that systemd is starting right now.
    try:
        with open(runtime.lock_file, encoding="ascii", errors="replace") as file:
            pid = int(file.read().strip() or "0")
    except (OSError, ValueError):
        return False
    return pid > 0 and pid_alive(pid)


def _is_listening(path: str) -> bool:
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
        with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as file:
            lines = file.read().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split(None, 7)  # Num RefCount Protocol Flags Type St Inode Path
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & ACCEPTCON:
            return True
    return False
