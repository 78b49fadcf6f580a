"""The worker process: Hypercorn serving the Starlette app on the supervisor's listening socket.

The supervisor starts it with ``dbtkd _worker --reply-fd N``. Its stdin is a private pipe from
the supervisor: the first line is the token (so no secret is in argv or the environment), the
second a JSON object with everything else, then one JSON order per line (``ping``, ``stop``).
Replies (``pong``, and ``orphans`` when a program it started exits) go back on the reply
pipe. A reader thread owns stdin, because the Windows Proactor loop cannot read an anonymous
pipe; when stdin reaches EOF the supervisor is gone and the worker exits at once without
draining. SIGINT and SIGTERM are ignored: the worker runs in its own process group and takes
orders only from its pipe. Logs go to stderr, which the supervisor reads into its log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import faulthandler
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dbtkd import fdlimit
from dbtkd.app.loading import APP_MODULES
from dbtkd.listener import CappedListener, connection_cap
from dbtkd.port import LISTEN_BACKLOG
from dbtkd.units import SECONDS
from dbtkd.wire import (
    EXIT_CONFIG,
    OP_ORPHANS,
    OP_PING,
    OP_PONG,
    OP_STOP,
    PROBE_HEADER,
    Activity,
    Handshake,
    line,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

# DESIGN §2: a stop drains for at most 2 s; a window that reconnects loses nothing because
# every stream sends a snapshot on connect.
GRACEFUL_TIMEOUT = 2 * SECONDS
# DESIGN §5: WebSocket messages are capped at 1 MiB, like HTTP bodies.
WEBSOCKET_MAX_MESSAGE_BYTES = 1024 * 1024
# Pinned access-log format: Hypercorn's atoms can expand any request header or environment
# variable, and %(r)s/%(q)s would log query strings. Method, path (no query), status, size,
# time only.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(D)sus'
PR_SET_PDEATHSIG = 1
# The collector stays off this long after the app is built (dbtkd.__main__ turned it off for
# the imports): long enough for a cold start's first requests, short enough to be harmless.
SETTLE_COLLECTOR_AFTER = 1 * SECONDS
# RFC 6455 "going away": the close code of a stop (the supervisor may send another).
CLOSE_GOING_AWAY = 1001

log = logging.getLogger("dbtkd.worker")


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL us when our parent dies (the supervisor, or the zygote
    that forked us; the zygote's own parent is the supervisor), whatever we are doing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Orders:
    """Reads the supervisor's pipe in a thread and hands orders to the event loop.

    A ``ping`` carries the supervisor's view (restarts, leases) for ``/metrics``; its ``pong``
    carries the worker's activity (seconds idle, requests in flight, running jobs) for idle
    exit. Both are answered on the event loop, so a pong also proves the loop is alive.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reply_fd: int,
        activity: Callable[[], Activity],
        supervisor_view: dict[str, Any],
        sent: bytes = b"",
    ) -> None:
        self._loop = loop
        self._sent = sent  # read with the handshake, not yet handled
        self._reply_fd = reply_fd
        self._activity = activity
        self._supervisor_view = supervisor_view
        self.stop_code: asyncio.Future[int] = loop.create_future()
        self.jobs_reason = "interrupted by stop"
        self._thread = threading.Thread(target=self._read, name="orders", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        # Raw reads on fd 0: a daemon thread parked in a buffered read would make interpreter
        # shutdown abort ("could not acquire lock for <stdin>").
        pending = self._sent
        while True:
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                try:
                    order = json.loads(raw)
                except ValueError:
                    continue
                self._loop.call_soon_threadsafe(self._handle, order)
            chunk = os.read(0, 4096)
            if not chunk:
                break
            pending += chunk
        # EOF: the supervisor is gone (or closed our pipe). Leave now, without draining: no
        # one is left to restart us and the listening socket is the next daemon's business.
        os._exit(0)

    def _handle(self, order: dict[str, Any]) -> None:
        # Runs on the event loop, so a pong proves the loop is alive, not just this thread.
        op = order.get("op")
        if op == OP_PING:
            self._supervisor_view.update(order.get("view") or {})
            self.reply(line(OP_PONG, seq=order.get("seq"), **self._activity()))
        elif op == OP_STOP and not self.stop_code.done():
            self.jobs_reason = str(order.get("jobs_reason") or "interrupted by stop")
            self.stop_code.set_result(int(order.get("code", CLOSE_GOING_AWAY)))

    def reply(self, message: bytes) -> None:
        """Send one reply line (``wire.line``)."""
        # If the supervisor is gone the write fails; the stdin reader notices EOF and exits.
        with contextlib.suppress(OSError):
            os.write(self._reply_fd, message)


class ReadinessProbe:
    """Answers the supervisor's readiness probe, and only the one meant for this worker.

    ``GET /health`` with ``X-Dbtk-Probe: <this worker's probe nonce>`` gets 200 with the nonce
    echoed; anything else passes through untouched. The echo tells the supervisor that this
    worker, not a predecessor sharing the listening socket, is serving.
    """

    def __init__(self, app: Any, probe: str) -> None:
        self.app = app
        self.expected = probe.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/health"
            and (PROBE_HEADER.encode(), self.expected) in scope["headers"]
        ):
            headers = [(PROBE_HEADER.encode(), self.expected), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def settle_collector() -> None:
    """Collect what start-up left (~15 ms, a few hundred objects: ~0.3 MiB), then move what
    survives, which lives as long as the worker, out of every later collection's way."""
    gc.collect()
    gc.freeze()
    gc.enable()


def _hypercorn_config(settings: Handshake) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = []  # we pass the listening socket itself (``dbtkd.listener``)
    config.graceful_timeout = GRACEFUL_TIMEOUT
    # Hypercorn calls listen() again on the inherited socket with its own backlog (default
    # 100), which would shrink the supervisor's: keep it deep enough for a restart's queue.
    config.backlog = LISTEN_BACKLOG
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    config.access_log_format = ACCESS_LOG_FORMAT
    config.accesslog = logging.getLogger("hypercorn.access") if settings["access_log"] else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


# What ``serve`` imports and what the app's first requests need: the zygote imports them once
# and every worker it forks shares them (dbtkd.zygote). tests/daemon/test_zygote.py checks
# that ``serve`` imports nothing more. A spawned worker imports the app's part, APP_MODULES,
# while it already answers /health (dbtkd.app.loading).
PRELOAD = (
    "hypercorn.asyncio.run",
    "hypercorn.config",
    "hypercorn.utils",
    "dbtkd.sockshare",
    "dbtkd.app.loading",
    "dbtkd.app.meter",
    "dbtkd.app.programs",
    "dbtkd.app.routes",
    *APP_MODULES,
)


def preload() -> None:
    """Import ``PRELOAD`` (in the zygote, before it forks any worker)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


async def serve(token: str, settings: Handshake, reply_fd: int, orders_sent: bytes = b"") -> None:
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Sockets
    from hypercorn.utils import wrap_app

    from dbtkd import sockshare
    from dbtkd.app import programs
    from dbtkd.app.config import AppConfig
    from dbtkd.app.loading import LoadingApp
    from dbtkd.app.meter import Meter

    loop = asyncio.get_running_loop()
    sock, bind = sockshare.import_in_child(settings["socket"])
    app_config = AppConfig(
        token=token,
        port=settings["port"],
        allowed_origins=tuple(settings["allowed_origins"]),
        version=settings["version"],
        daemon_pid=settings["daemon_pid"],
        daemon_started_at=settings["daemon_started_at"],
        worker_started_at=time.time(),
        worker_restarts=settings["worker_restarts"],
        log_file=settings["log_file"],
        data_dir=settings["data_dir"],
        config_file=settings.get("config_file", ""),
        test_faults=frozenset(settings.get("test_faults", ())),
    )
    supervisor_view: dict[str, Any] = {}

    def build() -> Starlette:
        # Called on the event loop once LoadingApp's thread has imported APP_MODULES.
        from dbtkd.app.application import create_app

        app = create_app(app_config)
        app.state.meter = meter
        app.state.supervisor_view = supervisor_view
        app.state.loading = loading  # its ``loaded_in``, for /metrics
        return app

    loading = LoadingApp(app_config, build)
    meter = Meter(loading)

    # dbtkd.__main__ turned collections off for the imports; the one they put off runs once
    # the worker is serving, not on a cold start's way (``settle_collector``).
    loop.call_later(SETTLE_COLLECTOR_AFTER, settle_collector)

    def activity() -> Activity:
        app = loading.app
        jobs = getattr(app.state, "jobs", None) if app is not None else None
        running = jobs.running() if jobs is not None else []
        return {
            "idle_for": round(meter.idle_for(), 3),
            "in_flight": meter.in_flight,
            "jobs": len(running),
            "job_list": running,  # for ``dbtkctl stop``, which lists what it would cancel
            "requests_total": meter.requests_total,
        }

    orders = Orders(loop, reply_fd, activity, supervisor_view, orders_sent)
    orders.start()
    # What an exited program left behind was handed to the supervisor (dbtkd.subreaper),
    # silently: tell it to kill those now.
    programs.exit_listeners.add(lambda: orders.reply(line(OP_ORPHANS)))

    async def shutdown_trigger() -> None:
        code = await orders.stop_code
        log.info("stopping (websocket close code %d)", code)
        app = loading.app  # None while loading: no job or stream can exist yet
        if app is None:
            return
        jobs = getattr(app.state, "jobs", None)
        if jobs is not None and jobs.running():
            # DESIGN §2: jobs still running at a stop are cancelled, their children killed and
            # reaped, partial files removed, and each marked failed with the reason.
            await jobs.cancel_all(orders.jobs_reason)
        await app.state.streams.close_all(code)

    config = _hypercorn_config(settings)
    served = ReadinessProbe(meter, settings["probe"])
    # Our socket object, not a bind string, on every OS: its ``accept`` enforces the cap.
    listener = CappedListener.adopt(sock, connection_cap(fdlimit.soft_limit()))
    if bind.startswith("fd://"):
        os.close(int(bind[len("fd://") :]))  # the inherited original; ``sock`` was its duplicate
    await worker_serve(
        wrap_app(served, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=Sockets([], [listener], []),  # (secure, insecure, quic)
        shutdown_trigger=shutdown_trigger,
    )


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    # The supervisor raised it already; a worker started any other way must not stay at 1024.
    fdlimit.raise_to_hard()
    reply_fd = _reply_fd(argv)
    if reply_fd is None:
        print(
            "usage: dbtkd _worker --reply-fd N | --reply-handle H (started by the supervisor only)",
            file=sys.stderr,
        )
        return 2
    token, settings, orders_sent = _read_handshake()
    if sys.platform != "win32":
        # The watchdog asks for a stack dump before killing a hung worker; faulthandler
        # writes it from the signal handler, so it works even with the event loop blocked.
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    logging.basicConfig(
        stream=sys.stderr,
        level=settings["log_level"].upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if "crash_on_start" in settings.get("test_faults", ()):
        log.error("test fault crash_on_start: exiting with status 3")
        return 3
    problem = _unusable_data_dir(settings["data_dir"])
    if problem:
        # Retrying cannot fix this; the supervisor reports it once and waits for a restart.
        log.error("fatal configuration error: %s", problem)
        return EXIT_CONFIG
    asyncio.run(serve(token, settings, reply_fd, orders_sent))
    logging.shutdown()
    sys.stderr.flush()
    # Skip interpreter finalization: the orders thread is still parked in a read of the pipe,
    # and there is nothing left to clean up that the kernel does not clean up faster.
    os._exit(0)


def _reply_fd(argv: list[str]) -> int | None:
    """The reply pipe's descriptor: ``--reply-fd N`` (POSIX), ``--reply-handle H`` (Windows,
    an inherited handle: ``dbtkd.winproc``); None for anything else."""
    if len(argv) != 2 or argv[0] not in ("--reply-fd", "--reply-handle") or not argv[1].isdigit():
        return None
    if argv[0] == "--reply-handle":
        from dbtkd import winproc

        return winproc.reply_fd_from_handle(int(argv[1]))
    return int(argv[1])


def _unusable_data_dir(data_dir: str) -> str | None:
    """Why the data dir cannot hold the daemon's stores, or None if it can."""
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        probe = os.path.join(data_dir, f".probe-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as file:
            file.write("ok")
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            # Full or read-only: temporary. Serve (reads work; saves answer 507/503) rather
            # than fail for good; the daemon goes on by itself once the disk is back.
            log.warning("data directory %s cannot take writes: %s", data_dir, exc.strerror)
            return None
        return f"data directory {data_dir} is unusable: {exc.strerror or exc}"
    return None


def _read_handshake() -> tuple[str, Handshake, bytes]:
    """The token line, the settings line, and what followed them (orders already sent), which
    the orders thread reads first. Raw reads: the orders thread reads fd 0 raw as well."""
    received = b""
    while received.count(b"\n") < 2:
        chunk = os.read(0, 4096)
        if not chunk:
            raise SystemExit("dbtkd worker: the supervisor closed the pipe during the handshake")
        received += chunk
    token, line, rest = received.split(b"\n", 2)
    settings: Handshake = json.loads(line)
    return token.decode().rstrip("\r"), settings, rest
