"""``dbtkd``: flags, settings, lock, port and the first worker, all before asyncio.

A cold start is three Python processes in a row: ``dbtkctl``, the supervisor, the worker. The
worker's start-up (~140 ms of imports) is the longest step, and asyncio alone costs the
supervisor ~40 ms. So ``dbtkd.__main__`` starts the first worker at its first line
(``spawn.start_early``), and this module does everything that worker needs — settings, log
file, instance lock (or a handoff from an older daemon), the listening socket, the token —
with the stdlib only, hands them over (``spawn.handshake``; or spawns the worker now where it
could not start early), and only then imports asyncio and the supervisor: on two cores the
start-ups overlap. ``main`` is the entry point; exceptions become exit codes here and nowhere
else, and an early worker this daemon does not keep is ended on the way out.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from typing import Any

from dbtkd import __version__, fdlimit, handoff, lock, port, spawn, state, zygote
from dbtkd.errors import DbtkError, StartFailed, environment_problem
from dbtkd.logfile import LogFile
from dbtkd.settings import LOG_LEVELS, Settings, load

log = logging.getLogger("dbtkd.supervisor")


class Launch:
    """What the supervisor starts with; it owns every descriptor and process in here."""

    def __init__(self, settings: Settings, env: dict[str, str], logfile: LogFile) -> None:
        self.settings = settings
        self.env = env
        self.logfile = logfile
        self.lock_fd = -1
        self.data_lock_fd = -1
        self.listener: socket.socket | None = None
        self.port = 0
        self.token = secrets.token_urlsafe(32)
        self.nonce = secrets.token_hex(16)
        self.started_at = time.time()
        self.owns_files = False  # may we remove the socket, state and port files at exit?
        # Handoff, new side: the connection to the predecessor until our worker answers.
        self.handoff_connection: socket.socket | None = None
        self.control_listener: socket.socket | None = None
        self.handed_over_from: str | None = None
        self.carried_leases: list[dict[str, Any]] = []
        self.first_worker: spawn.Spawned | None = None
        self.zygote: zygote.Zygote | None = None  # the worker fork server (Linux)
        self.subreaper = False  # do orphans of the worker's programs come to us (Linux)?

    def acquire(self) -> None:
        """A fresh start: take the instance lock and bind the port."""
        settings = self.settings
        self.lock_fd = lock.acquire_instance_lock(settings.runtime.lock_file)
        try:
            self.data_lock_fd = lock.acquire_data_lock(
                settings.data.data_lock, settings.data.live_file
            )
        except BaseException:
            lock.release(self.lock_fd)
            raise
        try:
            last_port = state.read_port(settings.data.last_port_file)
            self.listener = port.bind_listener(settings.port_range, last_port)
        except BaseException:
            lock.release(self.lock_fd)
            lock.release(self.data_lock_fd)
            raise
        self.port = self.listener.getsockname()[1]
        self.owns_files = True

    def take_over(self) -> None:
        """``--takeover``: receive lock, port, control socket and token from the running daemon."""
        connection, carried, fds = handoff.request(
            self.settings.runtime.control_socket, __version__
        )
        self.handoff_connection = connection
        self.lock_fd = fds["lock"]
        self.data_lock_fd = fds["data_lock"]
        self.listener = socket.socket(fileno=fds["listener"])
        self.control_listener = socket.socket(fileno=fds["control"])
        self.port = self.listener.getsockname()[1]
        self.token = carried["token"]
        self.nonce = carried["nonce"]
        self.started_at = carried["started_at"]
        self.handed_over_from = carried.get("version")
        self.carried_leases = list(carried["leases"])  # held by the supervisor for a grace


def prepare(
    settings: Settings, env: dict[str, str], *, echo: bool, early: spawn.Started | None = None
) -> Launch:
    """Everything up to a running first worker; logs (and raises) what stops it. ``early`` is
    a worker started at dbtkd's first line (``spawn.start_early``): it becomes the first worker
    unless the settings ask for the fork server; the caller discards it if this raises."""
    # First: the worker inherits it, and the control socket's connections count against it.
    open_files = fdlimit.raise_to_hard()
    logfile = LogFile(
        settings.data.log_file,
        settings.log_level,
        settings.log_max_bytes,
        settings.log_backups,
        echo=echo,
    )
    if open_files[1] != open_files[0]:
        log.info("open files limit raised from %d to %d", *open_files)
    launch = Launch(settings, env, logfile)
    try:
        if settings.takeover:
            launch.take_over()
        else:
            launch.acquire()
    except DbtkError as exc:
        log.error("%s", exc)  # a detached daemon's stderr is /dev/null: the log is all
        logfile.close()
        raise
    logfile.secrets.append(launch.token)
    log.info(
        "dbtkd %s %s: pid %d, port %d, home %s",
        __version__,
        "taking over" if settings.takeover else "starting",
        os.getpid(),
        launch.port,
        settings.home or "(per-OS defaults)",
    )
    assert launch.listener is not None
    first = spawn.worker_settings(
        settings, env, port=launch.port, started_at=launch.started_at, restarts=0
    )
    if settings.worker_start == "fork":
        # Forked from here (no thread, no event loop yet): the zygote and its workers share
        # this interpreter's pages with us.
        launch.zygote = zygote.start_or_none(env, fork=True)
    if early is not None:
        if launch.zygote is None:
            launch.first_worker = spawn.handshake(early, launch.listener, launch.token, first)
        else:
            early.discard()  # dbtkd.toml asked for the fork server; its worker comes from there
    if launch.zygote is not None:
        try:
            # Forked once the zygote has imported the worker; the order waits in its socket.
            launch.first_worker = launch.zygote.fork(launch.listener, launch.token, first)
        except zygote.ZygoteGone as exc:
            log.warning("the worker fork server failed at once (%s): spawning", exc)
            launch.zygote.close()
            launch.zygote = None
    if launch.first_worker is None:
        launch.first_worker = spawn.spawn(launch.listener, env, launch.token, first)
    # After the spawn, so loading ctypes overlaps the worker's start-up. Early enough: a
    # program can only be started by a request, and the worker serves none for ~100 ms.
    from dbtkd import subreaper  # imports asyncio: only once the worker is on its way

    launch.subreaper = subreaper.become_subreaper()
    return launch


def _parse(argv: list[str] | None) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="dbtkd", description="DB Toolkit backend daemon")
    parser.add_argument("--home", help="profile directory (default: $DBTK_HOME or per-OS dirs)")
    parser.add_argument("--port-range", help="A-B (default 8000-8100) or 0 for any free port")
    parser.add_argument("--idle-exit", help="exit this many seconds after the last client")
    parser.add_argument("--watchdog-timeout", help="seconds before a silent worker is killed")
    parser.add_argument("--log-level", choices=LOG_LEVELS)
    parser.add_argument(
        "--worker-start", help="spawn (default) or fork: workers forked from a warm process (Linux)"
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        dest="allowed_origins",
        help="an allowed browser Origin (repeatable)",
    )
    parser.add_argument(
        "--on-demand",
        action="store_true",
        help="started by a client (dbtkctl, the app): idle exit defaults to 600 s unless set",
    )
    parser.add_argument("--takeover", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"dbtkd {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, early: spawn.Started | None = None) -> int:
    """``dbtkd``: run the supervisor in the foreground. ``early``: see ``prepare``. The caller,
    ``dbtkd.__main__``, has set the umask (0077) already: before the early worker started."""
    try:
        return _main(argv, early)
    finally:
        if early is not None:
            early.discard()  # unless it became the first worker


def _main(argv: list[str] | None, early: spawn.Started | None) -> int:
    args = _parse(argv)
    env = dict(os.environ)
    try:
        settings = load(
            {
                "port_range": args.port_range,
                "idle_exit": args.idle_exit,
                "watchdog_timeout": args.watchdog_timeout,
                "log_level": args.log_level,
                "allowed_origins": args.allowed_origins,
                "worker_start": args.worker_start,
            },
            env,
            home=args.home,
            takeover=args.takeover,
            on_demand=args.on_demand,
        )
        launch = prepare(settings, env, echo=sys.stderr.isatty(), early=early)
        # Only now, with the first worker already starting on the other core.
        import asyncio

        from dbtkd.supervisor import Supervisor

        return asyncio.run(Supervisor(launch).run())
    except DbtkError as exc:
        print(f"dbtkd: {exc}", file=sys.stderr)
        return 4 if isinstance(exc, StartFailed) else exc.exit_code
    except OSError as exc:  # the environment (a read-only or full home, a missing directory)
        print(f"dbtkd: {environment_problem(exc)}", file=sys.stderr)
        return StartFailed.exit_code
    except KeyboardInterrupt:
        return 130
