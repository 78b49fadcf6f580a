"""The supervisor: holds the lock, the port and the control socket; runs and watches the worker.

It imports little (no Starlette, no Hypercorn, no database driver) so it stays small. Start-up
order: instance lock → listening socket on 127.0.0.1 (last port, then the range) → control
socket → worker → worker answers ``GET /health`` → state files → ``BACKEND_PORT:<port>``.
The listening socket never closes while the daemon lives, so the port is stable and, while a
worker restarts, new connections wait in the kernel backlog instead of being refused.

Crash policy (DESIGN §2): a worker that had become ready is restarted at once; one that dies
before becoming ready is restarted with exponential backoff, and more than
``START_FAILURE_BUDGET`` such failures within ``START_FAILURE_WINDOW`` put the daemon in state
``failed``, where the supervisor itself answers every connection on the port with 503 until
``restart``. A watchdog pings the worker over its private pipe; no answer within the watchdog
timeout gets a stack dump request (SIGUSR1), then SIGKILL and a restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time
from typing import Any

from dbtkd import __version__, handoff, ipc, lock, procstats, protocol, sockshare, state, systemd
from dbtkd.control import ALREADY_REPLIED, ControlServer, Stream
from dbtkd.errors import ConfigError, DbtkError, PortRangeExhausted, StartFailed
from dbtkd.logfile import LogFile, tail
from dbtkd.protocol import Request, RequestError
from dbtkd.settings import Settings

SECONDS = 1.0
LOOPBACK = "127.0.0.1"
# Deep enough to hold every connection that arrives during a worker restart (~0.2 s).
LISTEN_BACKLOG = 1024
WORKER_STOP_TIMEOUT = 3 * SECONDS  # the worker's 2 s graceful drain plus its exit
WORKER_READY_TIMEOUT = 30 * SECONDS  # a cold start on a slow disk, with room to spare
READY_PROBE_INTERVAL = 0.01 * SECONDS
BACKOFF_FIRST = 0.1 * SECONDS
BACKOFF_MAX = 10 * SECONDS
BACKOFF_JITTER = 0.2  # ±20 %, so several daemons of one user do not retry in lockstep
START_FAILURE_BUDGET = 5
START_FAILURE_WINDOW = 60 * SECONDS
HEALTHY_AFTER = 10 * SECONDS  # a worker ready this long resets backoff and budget
STDERR_LINES_KEPT = 20  # the tail shown with a failure
DUMP_WAIT = 1 * SECONDS  # time for faulthandler to write a stack dump before the kill
KEEPALIVE_INTERVAL = 15 * SECONDS
# Pings double as the worker's activity report for idle exit, so they run at least once a
# second; the watchdog timeout decides when silence means hung.
PING_INTERVAL_MAX = 1 * SECONDS
IDLE_CHECK_INTERVAL_MAX = 1 * SECONDS
FRESH_PONG_TIMEOUT = (
    2 * SECONDS
)  # a live loop answers in microseconds; the watchdog covers a hung one
EXIT_CONFIG = 78  # the worker's "fatal configuration error" status (sysexits EX_CONFIG)
FAILED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
    b"Content-Type: application/json\r\nContent-Length: 18\r\nConnection: close\r\n\r\n"
    b'{"state":"failed"}'
)
PROBE_HEADER = "X-Dbtk-Probe"
STRIPPED_ENV_PREFIXES = ("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")

log = logging.getLogger("dbtkd.supervisor")


def bind_listener(port_range: tuple[int, int] | None, last_port: int | None) -> socket.socket:
    """Bind the daemon's one listening socket on loopback; the caller owns it."""
    if port_range is None:
        candidates = [0]
    else:
        first, last = port_range
        candidates = list(range(first, last + 1))
        if last_port is not None and first <= last_port <= last:
            candidates.remove(last_port)
            candidates.insert(0, last_port)
    for port in candidates:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sys.platform == "win32":
                sockshare.make_exclusive(sock)
            else:
                # Lets a restarted daemon reuse its port while old connections sit in
                # TIME_WAIT; Linux still refuses a second listener on the same address.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES) and port != 0:
                continue
            raise
        return sock
    assert port_range is not None
    raise PortRangeExhausted(*port_range)


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment for the worker: no systemd hand-over variables, nothing secret."""
    clean = {k: v for k, v in env.items() if not k.startswith(STRIPPED_ENV_PREFIXES)}
    clean["PYTHONUNBUFFERED"] = "1"
    return clean


def worker_argv(reply_fd: int) -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable, "_worker", "--reply-fd", str(reply_fd)]
    return [sys.executable, "-m", "dbtkd", "_worker", "--reply-fd", str(reply_fd)]


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Worker:
    """One worker process and its pipes; owned by the supervisor."""

    def __init__(self, proc: asyncio.subprocess.Process, replies: asyncio.StreamReader) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.replies = replies
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self.last_pong = time.monotonic()
        self.activity: dict[str, Any] = {}  # the last pong: idle_for, in_flight, jobs
        self.pong_received = asyncio.Event()  # set by each pong; cleared by whoever waits
        self.probe = secrets.token_hex(8)  # echoed only by this worker's readiness probe
        self.stop_requested = False
        self.killed_by_watchdog = False
        self.pumps: list[asyncio.Task[None]] = []

    def order(self, op: str, **fields: Any) -> None:
        if self.proc.stdin is None or self.proc.stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.proc.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")

    def kill(self) -> None:
        # The worker leads its own process group; killing the group also reaps any helper it
        # started (dump tools, shells) instead of orphaning them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()


class Supervisor:
    def __init__(self, settings: Settings, *, env: dict[str, str], echo: bool = False) -> None:
        self.settings = settings
        self.env = env
        self.echo = echo
        self.nonce = secrets.token_hex(16)
        self.token = secrets.token_urlsafe(32)
        self.started_at = time.time()
        self.state = "starting"
        self.state_changed = asyncio.Event()
        self.error: dict[str, Any] | None = None
        self.worker: Worker | None = None
        self.restarts: collections.Counter[str] = collections.Counter()
        self.start_failures: collections.deque[float] = collections.deque()
        self.leases: dict[int, dict[str, Any]] = {}
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.resume = asyncio.Event()  # set by ``restart`` to leave ``failed``
        self.restart_done: asyncio.Event | None = None
        self.port = 0
        self.listener: socket.socket | None = None
        self.failed_server: asyncio.Server | None = None
        self.control: ControlServer | None = None
        self.logfile: LogFile | None = None
        self.state_written = False
        self.announced = False
        self._lease_ids = 0
        self.socket_activated = False
        self.last_activity = time.monotonic()  # control requests, lease changes, start
        self.control_server: ipc.ControlServer | None = None
        self.control_listener: socket.socket | None = None  # handed over by a predecessor
        self.lock_fd = -1
        self.owns_files = False  # may we remove the socket, state and port files at exit?
        self.exit_code = 0
        self.stop_code = 1001  # WebSocket close code for our worker's clients at exit
        # Handoff, new side: the connection to the predecessor until our worker answers.
        self.handoff_connection: socket.socket | None = None
        self.handed_over_from: str | None = None
        self.carried_leases: list[dict[str, Any]] = []
        # Handoff, old side.
        self.handoff_pending = False
        self.last_handoff_error: str | None = None
        self.last_cause = "requested"

    # ----- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        settings = self.settings
        self.logfile = LogFile(
            settings.data.log_file,
            settings.log_level,
            settings.log_max_bytes,
            settings.log_backups,
            echo=self.echo,
        )
        try:
            lock_fd = self._take_over() if settings.takeover else self._acquire()
        except DbtkError as exc:
            log.error("%s", exc)
            self.logfile.close()
            raise
        self.logfile.secrets.append(self.token)
        try:
            log.info(
                "dbtkd %s %s: pid %d, port %d, home %s",
                __version__,
                "taking over" if settings.takeover else "starting",
                os.getpid(),
                self.port,
                settings.home or "(per-OS defaults)",
            )
            self.lock_fd = lock_fd
            self.control = ControlServer(self)
            if self.handoff_connection is None:
                await self._open_control()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop, signum)
            supervise = asyncio.create_task(self._supervise())
            keepalive = asyncio.create_task(self._keepalive())
            idle = asyncio.create_task(self._idle_exit())
            stopping = asyncio.create_task(self.stopping.wait())
            try:
                await asyncio.wait({supervise, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if supervise.done():
                    supervise.result()  # a supervisor bug: surface it, after cleanup
            finally:
                keepalive.cancel()
                idle.cancel()
                stopping.cancel()
                await self._stop_worker(code=self.stop_code)
                supervise.cancel()
                await asyncio.gather(supervise, keepalive, idle, return_exceptions=True)
        except DbtkError as exc:
            log.error("%s", exc)  # a detached daemon's stderr is /dev/null: the log is all
            raise
        finally:
            await self._cleanup()
            lock.release(lock_fd)
        log.info("dbtkd stopped")
        self.logfile.close()
        return self.exit_code

    def _acquire(self) -> int:
        """A fresh start: take the instance lock and bind the port; return the lock's fd."""
        settings = self.settings
        lock_fd = lock.acquire_instance_lock(settings.runtime.lock_file)
        try:
            last_port = state.read_port(settings.data.last_port_file)
            self.listener = bind_listener(settings.port_range, last_port)
        except BaseException:
            lock.release(lock_fd)
            raise
        self.port = self.listener.getsockname()[1]
        self.owns_files = True
        return lock_fd

    def _take_over(self) -> int:
        """``--takeover``: receive lock, port and control socket from the running daemon."""
        connection, carried, fds = handoff.request(
            self.settings.runtime.control_socket, __version__
        )
        self.handoff_connection = connection
        self.listener = socket.socket(fileno=fds["listener"])
        self.control_listener = socket.socket(fileno=fds["control"])
        self.port = self.listener.getsockname()[1]
        self.token = carried["token"]
        self.nonce = carried["nonce"]
        self.started_at = carried["started_at"]
        self.handed_over_from = carried.get("version")
        grace_until = time.monotonic() + handoff.LEASE_GRACE
        self.carried_leases = [lease | {"until": grace_until} for lease in carried["leases"]]
        return fds["lock"]

    async def _open_control(self) -> None:
        """Serve the control socket: systemd's, the predecessor's, or a fresh one of ours."""
        assert self.control is not None
        runtime = self.settings.runtime
        activated = [
            s
            for s in systemd.listen_sockets(self.env)
            if s.family == getattr(socket, "AF_UNIX", None)
        ]
        if activated:
            # Socket activation: systemd owns the socket file; never create or unlink it.
            passed = activated[0].getsockname()
            if passed != runtime.control_socket:
                # Serving another profile's socket would hide this one's daemon from clients.
                raise ConfigError(
                    f"systemd passed the control socket {passed!r}, but this profile's is "
                    f"{runtime.control_socket!r}; set DBTK_HOME (or --home) in the unit to "
                    "match its ListenStream="
                )
            self.socket_activated = True
            log.info("adopting the control socket passed by systemd")
            sock: socket.socket | None = activated[0]
        elif self.control_listener is not None:
            sock = self.control_listener  # handed over: already bound and listening
        else:
            ipc.remove_stale(runtime.control_socket)
            sock = None
        self.control_server = await ipc.start_server(
            runtime.control_socket, self.control.on_connect, sock=sock
        )

    def _set_state(self, new_state: str) -> None:
        self.state = new_state
        changed, self.state_changed = self.state_changed, asyncio.Event()
        changed.set()

    def request_stop(self, signum: int | None = None, reason: str = "stop command") -> None:
        if not self.stopping.is_set():
            reason = f"signal {signal.Signals(signum).name}" if signum else reason
            log.info("stopping on %s", reason)
            systemd.notify("STOPPING=1", self.env)
            self._set_state("stopping")
            self.stopping.set()

    async def _cleanup(self) -> None:
        if self.failed_server is not None:
            self.failed_server.close()
        runtime = self.settings.runtime
        if self.control_server is not None:
            self.control_server.close()
        if self.handoff_connection is not None:
            self.handoff_connection.close()
        # Files shared with a successor (or, after a failed takeover, with the daemon we
        # tried to replace) are not ours to remove.
        if self.owns_files:
            if self.control_server is not None and not self.socket_activated:
                with contextlib.suppress(OSError):
                    os.unlink(runtime.control_socket)
            state.remove_if(runtime.state_file, lambda text: self.nonce in text)
            state.remove_if(runtime.legacy_port_file, lambda text: text.strip() == str(self.port))
        if self.listener is not None:
            self.listener.close()

    # ----- the worker ----------------------------------------------------------------------

    async def _spawn(self) -> Worker:
        assert self.listener is not None
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *worker_argv(write_fd),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=child_environment(self.env),
                pass_fds=(write_fd, *sockshare.spawn_kwargs(self.listener).get("pass_fds", ())),
                process_group=0,
                cwd="/" if sys.platform != "win32" else None,
            )
        finally:
            os.close(write_fd)
        loop = asyncio.get_running_loop()
        replies = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(replies), os.fdopen(read_fd, "rb")
        )
        worker = Worker(proc, replies)
        settings = self.settings
        config = {
            "probe": worker.probe,
            "socket": sockshare.export_for_child(self.listener, proc.pid),
            "port": self.port,
            "allowed_origins": list(settings.allowed_origins),
            "version": __version__,
            "daemon_pid": os.getpid(),
            "daemon_started_at": self.started_at,
            "worker_restarts": sum(self.restarts.values()),
            "log_file": settings.data.log_file,
            "data_dir": settings.data.data_dir,
            "log_level": settings.log_level,
            "access_log": settings.log_level == "debug",
            "test_faults": self._test_faults(),
        }
        assert proc.stdin is not None
        proc.stdin.write(self.token.encode() + b"\n" + json.dumps(config).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        worker.pumps = [
            loop.create_task(self._pump_stderr(worker)),
            loop.create_task(self._pump_replies(worker)),
        ]
        log.info("worker %d started", worker.pid)
        return worker

    def _test_faults(self) -> list[str]:
        """Test-only switches for the worker: ``DBTK_TEST_FAULTS`` plus the lines of the file
        named by ``DBTK_TEST_FAULTS_FILE``, re-read at every spawn so a test can heal a fault."""
        faults = {f for f in self.env.get("DBTK_TEST_FAULTS", "").split(",") if f}
        path = self.env.get("DBTK_TEST_FAULTS_FILE")
        if path:
            with contextlib.suppress(OSError), open(path, encoding="utf-8") as file:
                faults.update(line.strip() for line in file if line.strip())
        return sorted(faults)

    async def _pump_stderr(self, worker: Worker) -> None:
        assert worker.proc.stdout is not None
        wlog = logging.getLogger(f"dbtkd.worker[{worker.pid}]")
        while True:
            try:
                raw = await worker.proc.stdout.readline()
            except ValueError:  # a line over the stream limit: log what we have
                raw = await worker.proc.stdout.read(64 * 1024)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            worker.stderr_tail.append(line)
            wlog.info("%s", line)

    async def _pump_replies(self, worker: Worker) -> None:
        while line := await worker.replies.readline():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("op") == "pong":
                    worker.last_pong = time.monotonic()
                    worker.activity = message
                    worker.pong_received.set()

    async def _probe_health(self, worker: Worker) -> bool:
        """True once ``worker`` itself answers ``GET /health`` on our port.

        The probe carries the worker's nonce and only that worker echoes it: during a handoff
        the predecessor's worker accepts on the same socket, and its answer proves nothing.
        """
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
        except OSError:
            return False
        try:
            writer.write(
                f"GET /health HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\n"
                f"{PROBE_HEADER}: {worker.probe}\r\nConnection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().split("\r\n")
            return lines[0].split(" ")[1:2] == ["200"] and (
                f"{PROBE_HEADER.lower()}: {worker.probe}" in lines
            )
        except (OSError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        finally:
            writer.close()

    async def _wait_ready(self, worker: Worker, ready_timeout: float) -> bool:
        deadline = time.monotonic() + ready_timeout
        exited = asyncio.ensure_future(worker.proc.wait())
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                probe = asyncio.ensure_future(self._probe_health(worker))
                done, _ = await asyncio.wait(
                    {probe, exited},
                    timeout=deadline - time.monotonic(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if exited in done:
                    probe.cancel()
                    return False
                if probe in done and probe.result():
                    return True
                if probe not in done:
                    probe.cancel()
                    break
                await asyncio.sleep(READY_PROBE_INTERVAL)
            return False
        finally:
            if not exited.done():
                exited.cancel()

    async def _supervise(self) -> None:
        backoff = BACKOFF_FIRST
        while not self.stopping.is_set():
            worker = self.worker = await self._spawn()
            taking_over = self.handoff_connection is not None
            timeout = handoff.READY_TIMEOUT if taking_over else WORKER_READY_TIMEOUT
            ready = await self._wait_ready(worker, timeout)
            if ready:
                worker.ready_at = time.monotonic()
                await self._on_ready(worker)
                watchdog = asyncio.ensure_future(self._watchdog(worker))
                await worker.proc.wait()
                watchdog.cancel()
            else:
                if worker.proc.returncode is None:  # never answered in time
                    worker.kill()
                    await worker.proc.wait()
            await asyncio.gather(*worker.pumps, return_exceptions=True)
            self.ready.clear()
            if self.stopping.is_set():
                return
            if taking_over and not ready:
                self._fail_takeover(worker, timeout)
                return
            cause = self._cause(worker, ready)
            if worker.ready_at is not None:
                if time.monotonic() - worker.ready_at >= HEALTHY_AFTER:
                    backoff = BACKOFF_FIRST
                    self.start_failures.clear()
                self.restarts[cause] += 1
                self.last_cause = cause
                log.warning("worker %d %s; restarting", worker.pid, cause)
                self._set_state("starting")
                continue
            if worker.proc.returncode == EXIT_CONFIG:
                # Retrying cannot fix a configuration error: report it once and wait.
                await self._enter_failed(worker, "hit a fatal configuration error", fatal=True)
                backoff = BACKOFF_FIRST
                continue
            now = time.monotonic()
            self.start_failures.append(now)
            while self.start_failures and now - self.start_failures[0] > START_FAILURE_WINDOW:
                self.start_failures.popleft()
            reason = describe_exit(worker.proc.returncode)
            if len(self.start_failures) > START_FAILURE_BUDGET:
                await self._enter_failed(worker, reason)
                backoff = BACKOFF_FIRST
                continue
            delay = backoff * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            log.warning(
                "worker %d %s before it was ready; retrying in %.2f s", worker.pid, reason, delay
            )
            backoff = min(backoff * 2, BACKOFF_MAX)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _cause(self, worker: Worker, ready: bool) -> str:
        if worker.stop_requested:
            return "requested"
        if worker.killed_by_watchdog:
            return "watchdog"
        code = worker.proc.returncode
        if code is not None and code < 0:
            return "signal"
        return "exit"

    def _fail_takeover(self, worker: Worker, timeout: float) -> None:
        """Our first worker did not answer: leave everything to the daemon we meant to replace."""
        if worker.proc.returncode is None or worker.proc.returncode == -signal.SIGKILL:
            reason = f"the new worker did not answer within {timeout:.0f} s"
        else:
            reason = f"the new worker {describe_exit(worker.proc.returncode)}"
        if worker.stderr_tail:
            reason += f" ({worker.stderr_tail[-1][:200]})"
        log.error("upgrade failed: %s; dbtkd %s keeps serving", reason, self.handed_over_from)
        assert self.handoff_connection is not None
        handoff.send_verdict(self.handoff_connection, ok=False, reason=reason)
        self.exit_code = 1
        self.request_stop(reason="upgrade failed")

    async def _complete_takeover(self) -> None:
        """Our worker answers: tell the predecessor to go, and serve the control socket."""
        assert self.handoff_connection is not None
        handoff.send_verdict(self.handoff_connection, ok=True)
        self.handoff_connection.close()
        self.handoff_connection = None
        self.owns_files = True
        await self._open_control()
        log.info("took over from dbtkd %s (port %d, token kept)", self.handed_over_from, self.port)

    async def _on_ready(self, worker: Worker) -> None:
        if self.handoff_connection is not None:
            await self._complete_takeover()
        self._set_state("running")
        self.error = None
        self.ready.set()
        log.info("worker %d ready on port %d", worker.pid, self.port)
        if not self.state_written:
            self._write_state_files()
        else:
            self._write_state_file()  # worker_pid changed
            for stream in self._attach_streams():
                stream.send("worker_restarted", worker_pid=worker.pid, cause=self.last_cause)
        if self.restart_done is not None:
            self.restart_done.set()
            self.restart_done = None
        systemd.notify(f"READY=1\nSTATUS=serving on {self.url} (worker {worker.pid})", self.env)
        if not self.announced:
            self.announced = True
            with contextlib.suppress(OSError, ValueError):
                print(f"BACKEND_PORT:{self.port}", flush=True)

    def _write_state_file(self) -> None:
        runtime = self.settings.runtime
        document = {
            "format": state.FORMAT,
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "worker_pid": self.worker.pid if self.worker else None,
            "port": self.port,
            "url": self.url,
            "control_socket": runtime.control_socket,
            "nonce": self.nonce,
            "started_at": self.started_at,
            "home": runtime.home,
        }
        state.write_atomic(runtime.state_file, json.dumps(document, indent=2) + "\n")

    def _write_state_files(self) -> None:
        self._write_state_file()
        state.write_atomic(self.settings.data.last_port_file, f"{self.port}\n")
        state.write_atomic(self.settings.runtime.legacy_port_file, f"{self.port}\n")
        self.state_written = True

    async def _watchdog(self, worker: Worker) -> None:
        timeout = self.settings.watchdog_timeout
        interval = min(timeout / 4, PING_INTERVAL_MAX)
        seq = 0
        worker.last_pong = time.monotonic()
        while worker.proc.returncode is None:
            seq += 1
            worker.order("ping", seq=seq, view=self._view_for_worker())
            await asyncio.sleep(interval)
            silent = time.monotonic() - worker.last_pong
            if silent < timeout or worker.proc.returncode is not None:
                continue
            log.error(
                "worker %d unresponsive for %.1f s; requesting a stack dump", worker.pid, silent
            )
            lines_before = len(worker.stderr_tail)
            last_before = worker.stderr_tail[-1] if worker.stderr_tail else None
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGUSR1)
            await asyncio.sleep(DUMP_WAIT)
            tail_after = worker.stderr_tail[-1] if worker.stderr_tail else None
            if len(worker.stderr_tail) == lines_before and tail_after == last_before:
                log.error(
                    "worker %d wrote no stack dump (stopped or blocked in the kernel); "
                    "no stack dump was possible",
                    worker.pid,
                )
            log.error("killing unresponsive worker %d", worker.pid)
            worker.killed_by_watchdog = True
            worker.kill()
            return

    def _view_for_worker(self) -> dict[str, Any]:
        """What the worker's ``/metrics`` needs from us."""
        return {
            "restarts": dict(self.restarts),
            "leases": len(self.leases),
            "supervisor": procstats.read(os.getpid()),
            "log_error": self.logfile.error if self.logfile else None,
        }

    # ----- idle exit -----------------------------------------------------------------------

    def touch(self) -> None:
        """Record activity that postpones idle exit (a control request, a lease change)."""
        self.last_activity = time.monotonic()

    def _idle_seconds(self) -> float:
        """Seconds nothing has happened: no lease, request, job or control call; else 0."""
        now = time.monotonic()
        self.carried_leases = [c for c in self.carried_leases if c["until"] > now]
        if self.leases or self.carried_leases:
            return 0.0
        last = self.last_activity
        worker = self.worker
        if worker is not None and worker.activity:
            if worker.activity.get("in_flight") or worker.activity.get("jobs"):
                return 0.0
            last = max(last, worker.last_pong - float(worker.activity.get("idle_for", 0.0)))
        return max(0.0, now - last)

    async def _idle_exit(self) -> None:
        idle_exit = self.settings.idle_exit
        if idle_exit is None:
            return
        # The timer starts when the worker first answers: the client that spawned us gets the
        # full period to ask for the port and attach.
        await self.ready.wait()
        self.touch()
        while True:
            await asyncio.sleep(min(idle_exit / 4, IDLE_CHECK_INTERVAL_MAX))
            if self._idle_seconds() < idle_exit:
                continue
            # The last pong may predate a request; ask the worker again before leaving.
            await self._fresh_activity()
            if self._idle_seconds() >= idle_exit:
                self.request_stop(
                    reason=f"idle exit: no clients, requests or jobs for {idle_exit:g} s"
                )
                return

    async def _fresh_activity(self) -> None:
        """Wait (briefly) for a pong sent after this call, so activity figures are current."""
        worker = self.worker
        if worker is None or worker.proc.returncode is not None:
            return
        worker.pong_received.clear()
        worker.order("ping", seq=0, view=self._view_for_worker())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.pong_received.wait(), FRESH_PONG_TIMEOUT)

    async def _stop_worker(self, code: int) -> None:
        worker = self.worker
        if worker is None or worker.proc.returncode is not None:
            return
        worker.stop_requested = True
        worker.order("stop", code=code)
        try:
            await asyncio.wait_for(worker.proc.wait(), WORKER_STOP_TIMEOUT)
        except TimeoutError:
            log.warning(
                "worker %d did not stop in %.0f s; killing it", worker.pid, WORKER_STOP_TIMEOUT
            )
            worker.kill()
            await worker.proc.wait()

    # ----- failed state --------------------------------------------------------------------

    async def _enter_failed(self, worker: Worker, reason: str, *, fatal: bool = False) -> None:
        self._set_state("failed")
        self.error = {
            "reason": f"worker {reason}"
            if fatal
            else f"worker {reason} before it was ready, "
            f"{len(self.start_failures)} times in {START_FAILURE_WINDOW:.0f} s",
            "exit": describe_exit(worker.proc.returncode),
            "stderr": list(worker.stderr_tail)[-5:],
        }
        log.error(
            "daemon failed: %s; last worker output: %s",
            self.error["reason"],
            " | ".join(self.error["stderr"]) or "(none)",
        )
        for stream in self._attach_streams():
            stream.send("state", state="failed", error=self.error)
        assert self.listener is not None
        self.failed_server = await asyncio.start_server(
            self._answer_failed, sock=self.listener.dup(), backlog=LISTEN_BACKLOG
        )
        self.resume.clear()
        stop = asyncio.ensure_future(self.stopping.wait())
        resume = asyncio.ensure_future(self.resume.wait())
        await asyncio.wait({stop, resume}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        resume.cancel()
        self.failed_server.close()
        self.failed_server = None
        self.start_failures.clear()
        if not self.stopping.is_set():
            self._set_state("starting")

    async def _answer_failed(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Answer after the request head so clients read a response rather than a reset.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2 * SECONDS)
        with contextlib.suppress(Exception):
            writer.write(FAILED_RESPONSE)
            await writer.drain()
        writer.close()

    # ----- control commands ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def daemon_info(self) -> dict[str, Any]:
        return {"version": __version__, "protocol": protocol.PROTOCOL_VERSION, "nonce": self.nonce}

    def _attach_streams(self) -> list[Stream]:
        return [lease["stream"] for lease in self.leases.values()]

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            for stream in self._attach_streams():
                stream.send("keepalive")

    async def cmd_hello(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "state": self.state,
        }

    async def cmd_status(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        settings = self.settings
        return {
            "state": self.state,
            "error": self.error,
            "pid": os.getpid(),
            "worker_pid": self.worker.pid if self.worker else None,
            "port": self.port,
            "url": self.url,
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "started_at": self.started_at,
            "uptime": round(time.time() - self.started_at, 3),
            "restarts": dict(self.restarts),
            "clients": [
                {k: v for k, v in lease.items() if k != "stream"} for lease in self.leases.values()
            ]
            + [
                {"name": c["name"], "pid": c["pid"], "since": c["since"], "carried": True}
                for c in self.carried_leases
            ],
            "handoff_error": self.last_handoff_error,
            "handed_over_from": self.handed_over_from,
            "control_socket": settings.runtime.control_socket,
            "home": settings.home,
            "log_file": settings.data.log_file,
            "data_dir": settings.data.data_dir,
            "config_file": settings.data.config_file,
            "idle_exit": settings.idle_exit,
            "processes": self._processes(),
            "log_error": self.logfile.error if self.logfile else None,
            "port_range": settings.port_range_text(),
            "watchdog_timeout": settings.watchdog_timeout,
        }

    async def _require_ready(self) -> None:
        if self.state == "failed":
            raise RequestError(
                protocol.NOT_READY,
                f"daemon failed: {self.error['reason']}" if self.error else "daemon failed",
            )
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while self.state not in ("running", "failed"):
            try:
                await asyncio.wait_for(self.state_changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                raise RequestError(protocol.NOT_READY, "the worker is not ready yet") from None
        if self.state == "failed":
            return await self._require_ready()

    async def cmd_port(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        await self._require_ready()
        return {
            "port": self.port,
            "url": self.url,
            "token": self.token,
            "pid": os.getpid(),
            "version": __version__,
        }

    async def cmd_stop(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        # Reply first; the run loop stops the worker and removes our files afterwards.
        asyncio.get_running_loop().call_soon(self.request_stop)
        return {"stopping": True, "pid": os.getpid()}

    async def cmd_restart(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        done = self.restart_done = asyncio.Event()
        if self.state == "failed":
            log.info("restart requested: leaving state failed")
            self.resume.set()
        else:
            log.info("restart requested")
            await self._stop_worker(code=1012)
        try:
            await asyncio.wait_for(done.wait(), WORKER_READY_TIMEOUT)
        except TimeoutError:
            raise RequestError(
                protocol.NOT_READY, "the new worker did not become ready; see dbtkctl status"
            ) from None
        assert self.worker is not None
        return {"worker_pid": self.worker.pid, "port": self.port}

    async def cmd_logs(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        lines = request.args.get("lines", 50)
        if lines < 0:
            raise RequestError(protocol.INVALID_PARAMS, "logs: 'lines' must be >= 0")
        backlog = tail(self.settings.data.log_file, min(lines, 10_000))
        if stream is not None:
            assert self.logfile is not None
            logfile = self.logfile

            def follower(line: str) -> None:
                stream.send("log", line=line)

            logfile.follow(follower)

            async def unfollow() -> None:
                await stream.closed.wait()
                logfile.unfollow(follower)

            asyncio.get_running_loop().create_task(unfollow())
        return {"lines": backlog, "log_file": self.settings.data.log_file}

    async def cmd_attach(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        assert stream is not None
        self._lease_ids += 1
        lease_id = self._lease_ids
        self.leases[lease_id] = {
            "id": lease_id,
            "name": request.args["name"],
            "pid": request.args["pid"],
            "since": time.time(),
            "stream": stream,
        }
        log.info("client attached: %s (pid %d)", request.args["name"], request.args["pid"])
        # A window re-attaching after a handoff replaces the lease carried over for it.
        self.carried_leases = [c for c in self.carried_leases if c["pid"] != request.args["pid"]]

        async def release() -> None:
            await stream.closed.wait()
            lease = self.leases.pop(lease_id, None)
            self.touch()
            if lease is not None:
                log.info("client detached: %s (pid %d)", lease["name"], lease["pid"])

        asyncio.get_running_loop().create_task(release())
        return {"lease": lease_id, "state": self.state, "port": self.port}

    def _processes(self) -> dict[str, procstats.ProcStats]:
        processes = {"supervisor": procstats.read(os.getpid())}
        if self.worker is not None and self.worker.proc.returncode is None:
            processes["worker"] = procstats.read(self.worker.pid)
        return processes

    async def cmd_metrics(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        activity = self.worker.activity if self.worker else {}
        return {
            "uptime": round(time.time() - self.started_at, 3),
            "state": self.state,
            "processes": self._processes(),
            "restarts": dict(self.restarts),
            "leases": len(self.leases),
            "worker": {k: v for k, v in activity.items() if k not in ("op", "seq")},
            "idle_seconds": round(self._idle_seconds(), 3),
            "log_error": self.logfile.error if self.logfile else None,
        }

    async def cmd_handoff(self, request: Request, stream: Stream | None) -> Any:
        """Hand port, control socket and lock to a newer daemon (see ``dbtkd.handoff``)."""
        assert stream is not None
        version = request.args["version"]
        if sys.platform == "win32" or self.socket_activated:
            raise RequestError(
                protocol.INVALID_PARAMS,
                "this daemon cannot hand over "
                "(Windows or socket-activated); stop it and start the new one",
            )
        if not handoff.is_newer(version, __version__):
            raise RequestError(
                protocol.INVALID_PARAMS,
                f"downgrade refused: dbtkd {__version__} is running and only a newer version "
                f"may take over, not {version}",
            )
        if self.state != "running" or self.handoff_pending or self.control_server is None:
            raise RequestError(protocol.NOT_READY, f"cannot hand over while {self.state}")
        assert self.listener is not None
        self.handoff_pending = True
        carried = {
            "token": self.token,
            "nonce": self.nonce,
            "port": self.port,
            "started_at": self.started_at,
            "version": __version__,
            "leases": [
                {"name": lease["name"], "pid": lease["pid"], "since": lease["since"]}
                for lease in self.leases.values()
            ],
        }
        fds = [self.listener.fileno(), self.control_server.sockets[0].fileno(), self.lock_fd]
        connection = stream.dup_socket()
        try:
            handoff.send_state(connection, request.id, fds, carried, self.daemon_info())
        finally:
            connection.close()
        log.info("handing over to dbtkd %s; serving until its worker answers", version)
        stream.lines = asyncio.Queue()
        asyncio.get_running_loop().create_task(self._await_verdict(stream, version))
        return ALREADY_REPLIED

    async def _await_verdict(self, stream: Stream, version: str) -> None:
        verdict: dict[str, Any] = {}
        assert stream.lines is not None
        get = asyncio.ensure_future(stream.lines.get())
        closed = asyncio.ensure_future(stream.closed.wait())
        done, _ = await asyncio.wait(
            {get, closed}, timeout=handoff.VERDICT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        get.cancel()
        closed.cancel()
        if get in done:
            with contextlib.suppress(ValueError):
                verdict = json.loads(get.result())
        if verdict.get("cmd") == "handoff_done":
            log.info("dbtkd %s took over; draining and exiting", version)
            self.owns_files = False  # the socket, state and port files are the successor's now
            self.stop_code = 1012  # "service restart": clients reconnect to the successor
            for lease_stream in self._attach_streams():
                lease_stream.send("handoff", version=version)
            self.request_stop(reason=f"handoff to dbtkd {version}")
            return
        reason = verdict.get("reason") or "the new daemon gave no answer"
        self.last_handoff_error = f"upgrade to {version} failed: {reason}"
        log.error("%s; still serving", self.last_handoff_error)
        self.handoff_pending = False


def main(argv: list[str] | None = None) -> int:
    """``dbtkd``: run the supervisor in the foreground."""
    import argparse

    from dbtkd import settings as settings_module

    parser = argparse.ArgumentParser(prog="dbtkd", description="DB Toolkit backend daemon")
    parser.add_argument("--home", help="profile directory (default: $DBTK_HOME or per-OS dirs)")
    parser.add_argument("--port-range", help="A-B (default 8000-8100) or 0 for any free port")
    parser.add_argument("--idle-exit", help="exit this many seconds after the last client")
    parser.add_argument("--watchdog-timeout", help="seconds before a silent worker is killed")
    parser.add_argument("--log-level", choices=settings_module.LOG_LEVELS)
    parser.add_argument(
        "--allow-origin",
        action="append",
        dest="allowed_origins",
        help="an allowed browser Origin (repeatable)",
    )
    parser.add_argument("--takeover", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"dbtkd {__version__}")
    args = parser.parse_args(argv)
    os.umask(0o077)
    env = dict(os.environ)
    try:
        settings = settings_module.load(
            {
                "port_range": args.port_range,
                "idle_exit": args.idle_exit,
                "watchdog_timeout": args.watchdog_timeout,
                "log_level": args.log_level,
                "allowed_origins": args.allowed_origins,
            },
            env,
            home=args.home,
            takeover=args.takeover,
        )
        supervisor = Supervisor(settings, env=env, echo=sys.stderr.isatty())
        return asyncio.run(supervisor.run())
    except DbtkError as exc:
        print(f"dbtkd: {exc}", file=sys.stderr)
        return 4 if isinstance(exc, StartFailed) else exc.exit_code
    except KeyboardInterrupt:
        return 130
