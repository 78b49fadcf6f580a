"""Where the daemon keeps its files, computed the same way by dbtkd, dbtkctl and Electron.

Stdlib only (``os.path``; no pathlib, no platformdirs) because ``dbtkctl`` imports it and must
start fast. Everything is a pure function of the environment, the platform and the user, with
the few filesystem checks behind small functions (``_is_private_dir``) that tests patch, so one
fixture (``tests/fixtures/paths.json``) pins the rules for Python and Node alike.

Runtime files (control socket, locks, state file) live in the runtime dir:
``$DBTK_HOME/run`` if ``DBTK_HOME`` is set; else ``$XDG_RUNTIME_DIR/db-toolkit`` when
``$XDG_RUNTIME_DIR`` is ours and 0700; else ``/run/user/<uid>/db-toolkit`` on the same terms;
else ``<temp>/dbtk-<uid>``. A control socket path longer than ``SOCKET_PATH_MAX`` bytes moves,
alone, to ``<temp>/dbtk-<uid>/<12 hex>.sock``. On Windows the control endpoint is a named pipe
whose name is derived from the user's SID and the home directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys

TYPE_CHECKING = False  # typing costs dbtkctl ~2 ms at start-up; annotations need it only here
if TYPE_CHECKING:
    from collections.abc import Mapping

APP_NAME = "db-toolkit"

# sun_path is 108 bytes on Linux and 104 on macOS; 100 leaves room for the NUL and for
# platforms that count differently, and is the figure the Electron side uses too.
SOCKET_PATH_MAX = 100

SOCKET_NAME = "dbtkd.sock"
LOCK_NAME = "dbtkd.lock"
SPAWN_LOCK_NAME = "spawn.lock"
STATE_NAME = "dbtkd.json"
LOG_NAME = "dbtkd.log"
CONFIG_NAME = "dbtkd.toml"
LAST_PORT_NAME = "last-port"
LEGACY_PORT_NAME = "backend.port"
# In the data dir: the lock that makes one daemon per data dir whatever its runtime dir, and
# the record of the control socket that daemon serves (clients with another runtime dir use it).
DATA_LOCK_NAME = "dbtkd.lock"
LIVE_NAME = "dbtkd.live.json"


class RuntimePaths:
    """The files a client needs to find, start and talk to the daemon."""

    __slots__ = (
        "control_socket",
        "home",
        "legacy_port_file",
        "lock_file",
        "run_dir",
        "spawn_lock",
        "state_file",
    )

    def __init__(
        self,
        *,
        home: str | None,
        run_dir: str,
        control_socket: str,  # a filesystem path on POSIX, a pipe name on Windows
        lock_file: str,
        spawn_lock: str,
        state_file: str,
        legacy_port_file: str,
    ) -> None:
        self.home = home
        self.run_dir = run_dir
        self.control_socket = control_socket
        self.lock_file = lock_file
        self.spawn_lock = spawn_lock
        self.state_file = state_file
        self.legacy_port_file = legacy_port_file

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"RuntimePaths({fields})"


class DataPaths:
    """The daemon's durable directories (logs, data, config, last port)."""

    __slots__ = ("config_dir", "data_dir", "log_dir", "state_dir")

    def __init__(self, *, log_dir: str, data_dir: str, config_dir: str, state_dir: str) -> None:
        self.log_dir = log_dir
        self.data_dir = data_dir
        self.config_dir = config_dir
        self.state_dir = state_dir

    @property
    def log_file(self) -> str:
        return os.path.join(self.log_dir, LOG_NAME)

    @property
    def config_file(self) -> str:
        return os.path.join(self.config_dir, CONFIG_NAME)

    @property
    def last_port_file(self) -> str:
        return os.path.join(self.state_dir, LAST_PORT_NAME)

    @property
    def data_lock(self) -> str:
        return os.path.join(self.data_dir, DATA_LOCK_NAME)

    @property
    def live_file(self) -> str:
        return os.path.join(self.data_dir, LIVE_NAME)


def _is_private_dir(path: str, uid: int) -> bool:
    """True if ``path`` is a real directory (not a symlink) owned by ``uid`` with mode 0700."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) & 0o077 == 0


def _temp_dir(env: Mapping[str, str], platform: str) -> str:
    # tempfile.gettempdir() would cost dbtkctl several imports; these are the variables it
    # consults first, and the fallbacks it ends with.
    for name in ("TMPDIR", "TEMP", "TMP"):
        value = env.get(name)
        if value:
            return value
    return "C:\\Windows\\Temp" if platform == "win32" else "/tmp"


def _current_uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def home_from(
    env: Mapping[str, str], home: str | None = None, platform: str = sys.platform
) -> str | None:
    """The profile home: ``--home`` wins over ``DBTK_HOME``; None means per-OS defaults."""
    value = home if home is not None else env.get("DBTK_HOME")
    if not value:
        return None
    if platform == "win32" and sys.platform != "win32":  # tests of the Windows rules
        import ntpath

        return ntpath.abspath(value)
    return os.path.abspath(os.path.expanduser(value))


def runtime_dir(
    env: Mapping[str, str],
    home: str | None,
    *,
    platform: str = sys.platform,
    uid: int | None = None,
) -> str:
    """The directory for the control socket, locks and state file (see module docstring)."""
    if home is not None:
        return os.path.join(home, "run")
    uid = _current_uid() if uid is None else uid
    if platform == "win32":
        base = env.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
        return os.path.join(base, APP_NAME, "run")
    if platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Caches", APP_NAME, "run")
    for candidate in (env.get("XDG_RUNTIME_DIR"), f"/run/user/{uid}"):
        if candidate and os.path.isabs(candidate) and _is_private_dir(candidate, uid):
            return os.path.join(candidate, APP_NAME)
    return os.path.join(_temp_dir(env, platform), f"dbtk-{uid}")


def _short_hash(text: str) -> str:
    import hashlib  # only for long paths and Windows; its OpenSSL load costs dbtkctl ~2 ms

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def windows_pipe_name(home_dir: str, sid: str) -> str:
    """``\\\\.\\pipe\\db-toolkit-<SID>-<12 hex>`` for the profile rooted at ``home_dir``."""
    import ntpath  # Windows rules on any host, so Linux tests compute the same name

    digest = _short_hash(ntpath.normcase(ntpath.realpath(home_dir)))
    return f"\\\\.\\pipe\\{APP_NAME}-{sid}-{digest}"


def control_socket_path(
    env: Mapping[str, str],
    run_dir: str,
    *,
    platform: str = sys.platform,
    uid: int | None = None,
) -> str:
    """``run_dir/dbtkd.sock``, or a short fallback in the temp dir when that is too long."""
    path = os.path.join(run_dir, SOCKET_NAME)
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        return path
    uid = _current_uid() if uid is None else uid
    return os.path.join(_temp_dir(env, platform), f"dbtk-{uid}", _short_hash(run_dir) + ".sock")


def runtime_paths(
    env: Mapping[str, str] | None = None,
    home: str | None = None,
    *,
    platform: str = sys.platform,
    uid: int | None = None,
    sid: str | None = None,
) -> RuntimePaths:
    """All runtime file locations for this user and profile."""
    env = os.environ if env is None else env
    home = home_from(env, home, platform)
    run = runtime_dir(env, home, platform=platform, uid=uid)
    if platform == "win32":
        if sid is None:
            from dbtkd.ipc import current_user_sid  # Windows only, ctypes

            sid = current_user_sid()
        control = windows_pipe_name(home or os.path.expanduser("~"), sid)
    else:
        control = control_socket_path(env, run, platform=platform, uid=uid)
    legacy_dir = home if home is not None else os.path.join(os.path.expanduser("~"), ".db-toolkit")
    return RuntimePaths(
        home=home,
        run_dir=run,
        control_socket=control,
        lock_file=os.path.join(run, LOCK_NAME),
        spawn_lock=os.path.join(run, SPAWN_LOCK_NAME),
        state_file=os.path.join(run, STATE_NAME),
        legacy_port_file=os.path.join(legacy_dir, LEGACY_PORT_NAME),
    )


def data_paths(env: Mapping[str, str] | None = None, home: str | None = None) -> DataPaths:
    """Log, data, config and state directories.

    With a home these are plain subdirectories. Without one they follow platformdirs, which is
    imported here, lazily, so that only the daemon (and ``dbtkctl logs`` of a daemon that never
    started) pays for it.
    """
    env = os.environ if env is None else env
    home = home_from(env, home)
    if home is not None:
        return DataPaths(
            log_dir=os.path.join(home, "logs"),
            data_dir=os.path.join(home, "data"),
            config_dir=os.path.join(home, "config"),
            state_dir=os.path.join(home, "state"),
        )
    import platformdirs

    dirs = platformdirs.PlatformDirs(APP_NAME, appauthor=False)
    return DataPaths(
        log_dir=dirs.user_log_dir,
        data_dir=dirs.user_data_dir,
        config_dir=dirs.user_config_dir,
        state_dir=dirs.user_state_dir,
    )


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (and parents) as 0700; refuse one that is a symlink or not ours.

    The runtime dir may live in a shared temp dir, where anyone could have planted a symlink
    or a directory of their own under the name we use: both are refused, never followed.
    """
    from dbtkd.errors import StartFailed, environment_problem

    try:
        with contextlib.suppress(FileExistsError):  # not a directory: named below
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise StartFailed(environment_problem(exc)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StartFailed(f"{path} is not a directory (a symlink?); remove it and retry")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise StartFailed(f"{path} belongs to uid {st.st_uid}, not to us; remove it and retry")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
