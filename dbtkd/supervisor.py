"""The supervisor: holds the lock, the port and the control socket; runs and watches the worker.

It imports little (no Starlette, no Hypercorn, no database driver) so it stays small. Start-up
order: instance lock → listening socket on 127.0.0.1 (last port, then the range) → control
socket → worker → worker answers ``GET /health`` → state files → ``BACKEND_PORT:<port>``.
The listening socket never closes while the daemon lives, so the port is stable and, while a
worker restarts, new connections wait in the kernel backlog instead of being refused.

Crash policy (DESIGN §2, decided by ``policy.RestartPolicy``): a worker that had become ready
is restarted at once; one that dies before becoming ready is restarted with exponential
backoff, and too many such failures in a minute put the daemon in state ``failed``, where the
supervisor itself answers every connection on the port with 503 until ``restart``. A watchdog
pings the worker over its private pipe; no answer within the watchdog timeout gets a stack dump
request (SIGUSR1), then SIGKILL and a restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from dbtkd import (
    __version__,
    handoff,
    ipc,
    lock,
    port,
    procstats,
    protocol,
    spawn,
    state,
    systemd,
    zygote,
)
from dbtkd.commands import ControlCommands
from dbtkd.control import ControlServer, Stream
from dbtkd.errors import ConfigError, DbtkError
from dbtkd.leases import Leases
from dbtkd.policy import START_FAILURE_WINDOW, Fail, Restart, RestartPolicy, State
from dbtkd.subreaper import Subreaper
from dbtkd.wire import (
    EXIT_APP_LOAD,
    EXIT_CONFIG,
    WORKER_READY_TIMEOUT,
    HandoffState,
    SupervisorView,
    WorkerSettings,
)
from dbtkd.workerhandle import Process, WorkerHandle, describe_exit

if TYPE_CHECKING:  # launch imports this module to run it: no import the other way at run time
    from dbtkd.launch import Launch

from dbtkd.units import SECONDS

# The worker's job cancellation (<= 2 s, rare) and graceful drain (2 s), inside the 5 s a stop
# may take in all.
WORKER_STOP_TIMEOUT = 4.5 * SECONDS
KEEPALIVE_INTERVAL = 15 * SECONDS
# A state or port file a full or read-only disk refused is written again this often, so that
# clients reading it find the daemon soon after space returns; one failed attempt costs a few
# syscalls.
STATE_RETRY_INTERVAL = 2 * SECONDS
IDLE_CHECK_INTERVAL_MAX = 1 * SECONDS
# A live loop answers a ping in microseconds; a hung one is the watchdog's business.
FRESH_PONG_TIMEOUT = 2 * SECONDS
# Killing what the last worker's programs left takes milliseconds; the bound keeps a process
# stuck in the kernel (a dead NFS mount) from holding up the exit.
ORPHANS_DRAIN_TIMEOUT = 1 * SECONDS

log = logging.getLogger("dbtkd.supervisor")
# Stop on these: SIGTERM (systemd, launchd, kill), SIGINT (Ctrl-C) and, on Windows, SIGBREAK
# (Ctrl-Break, and the console window being closed).
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGBREAK")


def install_stop_signals(
    loop: asyncio.AbstractEventLoop,
    request_stop: Callable[[int], None],
    set_handler: Callable[[int, Any], object] = signal.signal,
) -> list[int]:
    """Call ``request_stop(signum)`` on the loop for each stop signal this OS has; returns them.

    The Unix loops take ``add_signal_handler``. The Windows Proactor loop raises
    ``NotImplementedError`` there, so, as Hypercorn's own runner does, a plain ``signal.signal``
    handler (``set_handler``) hands the signal to the loop, which the interpreter wakes for it.
    """
    installed = []
    for name in STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            loop.add_signal_handler(signum, request_stop, signum)
        except NotImplementedError:

            def handler(number: int, frame: object) -> None:
                loop.call_soon_threadsafe(request_stop, number)

            set_handler(signum, handler)
        installed.append(int(signum))
    return installed


class Supervisor:
    def __init__(self, launch: Launch) -> None:
        self.settings = launch.settings
        self.env = launch.env
        self.logfile = launch.logfile
        self.nonce = launch.nonce
        self.token = launch.token
        self.started_at = launch.started_at
        self.state = State.STARTING
        self.state_changed = asyncio.Event()
        self.error: dict[str, Any] | None = None
        self.worker: WorkerHandle | None = None
        self.restarts: collections.Counter[str] = collections.Counter()
        self.policy = RestartPolicy()
        self.leases = Leases()
        # Tasks the control commands start (a lease's release, a log follower, a stop after
        # jobs, a handoff verdict): owned here, cancelled and awaited when the daemon stops.
        self.background: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.resume = asyncio.Event()  # set by ``restart`` to leave ``failed``
        self.restart_done: asyncio.Event | None = None
        self.port = launch.port
        self.listener: socket.socket | None = launch.listener
        # A worker spawned and not yet adopted: the first one (spawned before asyncio), then
        # each replacement while ``WorkerHandle.adopt`` sets it up. Already ours to the subreaper.
        self.unadopted = launch.first_worker
        # Linux: the process that forks workers (dbtkd.zygote); None: workers are spawned.
        self.zygote = launch.zygote
        # Linux: what the worker's programs leave behind comes to us, to be killed and reaped.
        self.subreaper = Subreaper(self._worker_pids) if launch.subreaper else None
        self.failed_server: asyncio.Server | None = None
        self.control: ControlServer | None = None
        self.state_written = False
        self.state_unwritten: set[str] = set()  # files a full or read-only disk refused
        self.announced = False
        self._lease_ids = 0
        self.socket_activated = False
        self.last_activity = time.monotonic()  # control requests, lease changes, start
        self.control_server: ipc.ControlServer | None = None
        self.control_listener = launch.control_listener  # handed over by a predecessor
        self.lock_fd = launch.lock_fd
        self.data_lock_fd = launch.data_lock_fd
        self.owns_files = launch.owns_files  # may we remove the socket, state, port files?
        self.exit_code = 0
        self.stop_code = 1001  # WebSocket close code for our worker's clients at exit
        self.jobs_reason = "interrupted by stop"  # recorded on jobs cancelled at exit
        # Handoff, new side: the connection to the predecessor until our worker answers.
        self.handoff_connection = launch.handoff_connection
        self.handed_over_from = launch.handed_over_from
        self.leases.carry_over(launch.carried_leases, handoff.LEASE_GRACE)
        # Handoff, old side.
        self.handoff_pending = False
        self.handed_off = False  # the successor serves; we only drain
        self.last_handoff_error: str | None = None
        self.last_cause = "requested"

    # ----- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        try:
            self.control = ControlServer(ControlCommands(self))
            if self.handoff_connection is None:
                await self._open_control()
            loop = asyncio.get_running_loop()
            if self.zygote is not None:
                self.zygote.attach(loop)
            install_stop_signals(loop, self.request_stop)
            if self.subreaper is not None and sys.platform != "win32":
                loop.add_signal_handler(signal.SIGCHLD, self.subreaper.schedule)
            supervise = asyncio.create_task(self._supervise())
            keepalive = asyncio.create_task(self._keepalive())
            idle = asyncio.create_task(self._idle_exit())
            retry = asyncio.create_task(self._retry_state_files())
            stopping = asyncio.create_task(self.stopping.wait())
            try:
                await asyncio.wait({supervise, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if supervise.done():
                    supervise.result()  # a supervisor bug: surface it, after cleanup
            finally:
                keepalive.cancel()
                idle.cancel()
                retry.cancel()
                stopping.cancel()
                await self.stop_worker(code=self.stop_code)
                await self._cancel_background()
                supervise.cancel()
                await asyncio.gather(supervise, keepalive, idle, retry, return_exceptions=True)
                if self.subreaper is not None:
                    await self.subreaper.drain(ORPHANS_DRAIN_TIMEOUT)
        except DbtkError as exc:
            log.error("%s", exc)  # a detached daemon's stderr is /dev/null: the log is all
            raise
        finally:
            if self.unadopted is not None:  # never adopted: we failed before supervising
                self.unadopted.process.kill()
                if isinstance(self.unadopted.process, subprocess.Popen):
                    self.unadopted.process.wait()
            if self.zygote is not None:
                self.zygote.close()
            await self._cleanup()
            lock.release(self.lock_fd)
            lock.release(self.data_lock_fd)
        log.info("dbtkd stopped")
        self.logfile.close()
        return self.exit_code

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

    def run_in_background(self, coroutine: Coroutine[Any, Any, Any], what: str) -> None:
        """Run ``coroutine`` as a task this supervisor owns: kept until it ends, its failure
        logged, cancelled when the daemon stops. Nothing runs fire-and-forget."""
        task = asyncio.get_running_loop().create_task(coroutine, name=what)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed: %r", task.get_name(), task.exception())

    async def _cancel_background(self) -> None:
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _set_state(self, new_state: State) -> None:
        self.state = new_state
        changed, self.state_changed = self.state_changed, asyncio.Event()
        changed.set()

    def request_stop(self, signum: int | None = None, reason: str = "stop command") -> None:
        if not self.stopping.is_set():
            reason = f"signal {signal.Signals(signum).name}" if signum else reason
            log.info("stopping on %s", reason)
            systemd.notify("STOPPING=1", self.env)
            self._set_state(State.STOPPING)
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
            state.remove_if(self.settings.data.live_file, lambda text: self.nonce in text)
            state.remove_if(runtime.legacy_port_file, lambda text: text.strip() == str(self.port))
        if self.listener is not None:
            self.listener.close()

    # ----- the worker ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self.stopping.is_set():
            if self.unadopted is None:
                self.unadopted = self._start_worker()
            try:
                worker = self.worker = await WorkerHandle.adopt(self.unadopted, self._sweep_soon)
            except zygote.ZygoteGone:
                self.unadopted.close()
                self.unadopted = None
                continue  # _start_worker starts a new zygote, or spawns
            self.unadopted = None
            taking_over = self.handoff_connection is not None
            timeout = handoff.READY_TIMEOUT if taking_over else WORKER_READY_TIMEOUT
            ready = await worker.wait_ready(self.port, timeout, self.stopping)
            timed_out = not ready and worker.proc.returncode is None
            if ready:
                worker.ready_at = time.monotonic()
                await self._on_ready(worker)
                watchdog = asyncio.ensure_future(
                    worker.watchdog(self.settings.watchdog_timeout, self._view_for_worker)
                )
                await worker.proc.wait()
                watchdog.cancel()
            elif timed_out:  # never answered in time
                worker.kill()
                await worker.proc.wait()
            await asyncio.gather(*worker.pumps, return_exceptions=True)
            worker.release()
            # Its programs died with it; what they started is ours. Scheduled, not run here:
            # the next worker's spawn comes first, and its start-up overlaps the sweep.
            self._sweep_soon()
            self.ready.clear()
            if self.stopping.is_set():
                return
            if taking_over and not ready:
                self._fail_takeover(worker, timeout, timed_out)
                return
            # A worker whose app did not load never served it: a failed start, not a crash.
            loaded = worker.proc.returncode != EXIT_APP_LOAD
            decision = self.policy.on_exit(
                ready_since=worker.ready_at if loaded else None,
                fatal=worker.proc.returncode == EXIT_CONFIG,
            )
            if isinstance(decision, Restart):
                cause = worker.cause()
                self.restarts[cause] += 1
                self.last_cause = cause
                log.warning("worker %d %s; restarting", worker.pid, cause)
                self._set_state(State.STARTING)
            elif isinstance(decision, Fail) and decision.fatal:
                # Retrying cannot fix a configuration error: report it once and wait.
                await self._enter_failed(worker, "hit a fatal configuration error", fatal=True)
            elif isinstance(decision, Fail):
                await self._enter_failed(worker, describe_exit(worker.proc.returncode))
            else:
                log.warning(
                    "worker %d %s before it was ready; retrying in %.2f s",
                    worker.pid,
                    describe_exit(worker.proc.returncode),
                    decision.delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), decision.delay)

    def _fail_takeover(self, worker: WorkerHandle, timeout: float, timed_out: bool) -> None:
        """Our first worker did not answer: leave everything to the daemon we meant to replace."""
        if timed_out:
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

    async def _on_ready(self, worker: WorkerHandle) -> None:
        if self.handoff_connection is not None:
            await self._complete_takeover()
        self._set_state(State.RUNNING)
        self.error = None
        self.ready.set()
        log.info("worker %d ready on port %d", worker.pid, self.port)
        if not self.state_written:
            self._write_state_files()
        else:
            self._write_state_file()  # worker_pid changed
            for stream in self.attach_streams():
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
        self._write_or_retry(runtime.state_file, json.dumps(document, indent=2) + "\n")
        # Next to the data: how a client with another runtime dir finds this daemon. Written
        # once the control socket listens, like the state file.
        live = {key: document[key] for key in ("format", "pid", "control_socket", "nonce", "home")}
        self._write_or_retry(self.settings.data.live_file, json.dumps(live, indent=2) + "\n")

    def _write_state_files(self) -> None:
        self._write_state_file()
        for path in (self.settings.data.last_port_file, self.settings.runtime.legacy_port_file):
            self._write_or_retry(path, f"{self.port}\n")
        self.state_written = True

    def _write_or_retry(self, path: str, text: str) -> None:
        """Write a state or port file; a disk that refuses it (full, read-only) must not stop
        the daemon: these files help clients find it, and the control socket needs none of
        them. A refused file is written again every ``STATE_RETRY_INTERVAL``."""
        try:
            state.write_atomic(path, text)
        except OSError as exc:
            if path not in self.state_unwritten:  # once per outage, not every retry
                log.warning(
                    "cannot write %s: %s; retrying every %g s",
                    path,
                    exc.strerror or exc,
                    STATE_RETRY_INTERVAL,
                )
            self.state_unwritten.add(path)
            return
        if path in self.state_unwritten:
            self.state_unwritten.discard(path)
            log.info("wrote %s again", path)

    async def _retry_state_files(self) -> None:
        while True:
            await asyncio.sleep(STATE_RETRY_INTERVAL)
            # Only while we serve and the files are ours: after a handoff they are the
            # successor's, and when stopping they are about to be removed.
            if self.state_unwritten and self.state == State.RUNNING and self.owns_files:
                self._write_state_files()

    def _start_worker(self) -> spawn.Spawned:
        """Fork the next worker from the zygote; if the zygote died, start a new one, unless
        it died without forking a single worker (then it would only die again): spawn."""
        assert self.listener is not None
        settings = self._worker_settings()
        if self.zygote is not None and self.zygote.gone:
            dead, self.zygote = self.zygote, None
            dead.close()
            self._sweep_soon()  # reap it
            if dead.forked:
                log.warning("the worker fork server %d exited; starting a new one", dead.pid)
                self.zygote = zygote.start_or_none(self.env)
                if self.zygote is not None:
                    self.zygote.attach(asyncio.get_running_loop())
            else:
                log.error("the worker fork server %d failed; spawning workers instead", dead.pid)
        if self.zygote is not None:
            with contextlib.suppress(zygote.ZygoteGone):
                return self.zygote.fork(self.listener, self.token, settings)
        return spawn.spawn(self.listener, self.env, self.token, settings)

    def _worker_pids(self) -> list[int]:
        """Our children that are workers or the zygote (not yet reaped): never the subreaper's
        to touch. (A forked worker is the zygote's child, not ours.)"""
        popens = []
        if self.worker is not None and isinstance(self.worker.proc, Process):
            popens.append(self.worker.proc.popen)
        if self.unadopted is not None and isinstance(self.unadopted.process, subprocess.Popen):
            popens.append(self.unadopted.process)
        pids = [popen.pid for popen in popens if popen.returncode is None]
        if self.zygote is not None and not self.zygote.gone:
            pids.append(self.zygote.pid)
        return pids

    def _sweep_soon(self) -> None:
        if self.subreaper is not None:
            self.subreaper.schedule()

    def _worker_settings(self) -> WorkerSettings:
        """The worker's settings line (``spawn`` adds its probe nonce and socket)."""
        return spawn.worker_settings(
            self.settings,
            self.env,
            port=self.port,
            started_at=self.started_at,
            restarts=sum(self.restarts.values()),
        )

    def _view_for_worker(self) -> SupervisorView:
        """What the worker's ``/metrics`` needs from us."""
        return {
            "restarts": dict(self.restarts),
            "leases": len(self.leases),
            "supervisor": procstats.read(os.getpid()),
            "log_error": self.logfile.error,
        }

    # ----- idle exit -----------------------------------------------------------------------

    def touch(self) -> None:
        """Record activity that postpones idle exit (a control request, a lease change)."""
        self.last_activity = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds nothing has happened: no lease, request, job or control call; else 0."""
        if self.leases.held():
            return 0.0
        now = time.monotonic()
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
            if self.idle_seconds() < idle_exit:
                continue
            # The last pong may predate a request; ask the worker again before leaving.
            if self.worker is not None:
                await self.worker.fresh_activity(self._view_for_worker(), FRESH_PONG_TIMEOUT)
            if self.idle_seconds() >= idle_exit:
                self.request_stop(
                    reason=f"idle exit: no clients, requests or jobs for {idle_exit:g} s"
                )
                return

    async def stop_worker(self, code: int) -> None:
        """Stop the current worker (its WebSockets close with ``code``), if it runs."""
        if self.worker is not None:
            await self.worker.stop(code, WORKER_STOP_TIMEOUT, self.jobs_reason)

    async def running_jobs(self) -> list[dict[str, Any]]:
        """The worker's running jobs, from a fresh pong."""
        if self.worker is None or self.state != State.RUNNING:
            return []
        await self.worker.fresh_activity(self._view_for_worker(), FRESH_PONG_TIMEOUT)
        return list(self.worker.activity.get("job_list") or [])

    # ----- handoff, the old side (the new side is ``launch.take_over`` and ``_supervise``) -----

    def begin_handoff(self) -> tuple[list[int], HandoffState]:
        """What goes to a successor: the listening socket, the control listener and both
        locks (descriptors), and the token, nonce, port, start time and leases."""
        assert self.listener is not None
        assert self.control_server is not None
        if sys.platform == "win32":  # refused before this point (commands.cmd_handoff)
            raise NotImplementedError("a handoff passes descriptors with SCM_RIGHTS (POSIX)")
        self.handoff_pending = True
        carried: HandoffState = {
            "token": self.token,
            "nonce": self.nonce,
            "port": self.port,
            "started_at": self.started_at,
            "version": __version__,
            "leases": self.leases.snapshot(),
        }
        fds = [
            self.listener.fileno(),
            self.control_server.sockets[0].fileno(),
            self.lock_fd,
            self.data_lock_fd,
        ]
        return fds, carried

    def handoff_done(self, version: str) -> None:
        """The successor serves: stop accepting, leave the shared files, tell the windows."""
        log.info("dbtkd %s took over; draining and exiting", version)
        # The control listener is shared with the successor: accept nothing more on it, or
        # new clients would meet a daemon on its way out. Open connections (leases) stay, to
        # hear the event below.
        if self.control_server is not None:
            self.control_server.close()
        self.handed_off = True
        self.owns_files = False  # the socket, state and port files are the successor's
        self.stop_code = 1012  # "service restart": clients reconnect to the successor
        self.jobs_reason = f"interrupted by the upgrade to {version}"
        for stream in self.attach_streams():
            stream.send("handoff", version=version)
        self.request_stop(reason=f"handoff to dbtkd {version}")

    def handoff_failed(self, version: str, reason: str | None) -> None:
        self.last_handoff_error = (
            f"upgrade to {version} failed: {reason or 'the new daemon gave no answer'}"
        )
        log.error("%s; still serving", self.last_handoff_error)
        self.handoff_pending = False

    # ----- failed state --------------------------------------------------------------------

    async def _enter_failed(
        self, worker: WorkerHandle, reason: str, *, fatal: bool = False
    ) -> None:
        self._set_state(State.FAILED)
        self.error = {
            "reason": f"worker {reason}"
            if fatal
            else f"worker {reason} before it was ready, "
            f"{self.policy.failures} times in {START_FAILURE_WINDOW:.0f} s",
            "exit": describe_exit(worker.proc.returncode),
            "stderr": list(worker.stderr_tail)[-5:],
        }
        log.error(
            "daemon failed: %s; last worker output: %s",
            self.error["reason"],
            " | ".join(self.error["stderr"]) or "(none)",
        )
        for stream in self.attach_streams():
            stream.send("state", state=State.FAILED, error=self.error)
        assert self.listener is not None
        self.failed_server = await port.serve_failed(self.listener, self.error["reason"])
        self.resume.clear()
        stop = asyncio.ensure_future(self.stopping.wait())
        resume = asyncio.ensure_future(self.resume.wait())
        await asyncio.wait({stop, resume}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        resume.cancel()
        self.failed_server.close()
        self.failed_server = None
        self.policy.clear()
        if not self.stopping.is_set():
            self._set_state(State.STARTING)

    # ----- control commands ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{port.LOOPBACK}:{self.port}"

    def daemon_info(self) -> dict[str, Any]:
        return {"version": __version__, "protocol": protocol.PROTOCOL_VERSION, "nonce": self.nonce}

    def attach_streams(self) -> list[Stream]:
        return self.leases.streams()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            for stream in self.attach_streams():
                stream.send("keepalive")

    def processes(self) -> dict[str, procstats.ProcStats]:
        processes = {"supervisor": procstats.read(os.getpid())}
        if self.worker is not None and self.worker.proc.returncode is None:
            processes["worker"] = procstats.read(self.worker.pid)
        if self.zygote is not None and not self.zygote.gone:
            processes["zygote"] = procstats.read(self.zygote.pid)
        return processes
