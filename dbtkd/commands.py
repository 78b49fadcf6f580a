"""The control commands: one ``cmd_<name>`` method per protocol v1 command.

``ControlServer`` dispatches each decoded request here, so an unknown command is a reply, not
a crash. The commands read the supervisor they are given (``daemon``) and ask it to act; the
state they touch (leases, restarts, the worker) stays the supervisor's. The old side of a
version handoff is a conversation on one control connection: the command carries it, the
supervisor's ``begin_handoff``, ``handoff_done`` and ``handoff_failed`` do what it decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from dbtkd import __version__, handoff, protocol, services
from dbtkd.control import ALREADY_REPLIED, Stream
from dbtkd.logfile import tail
from dbtkd.policy import State
from dbtkd.protocol import Request, RequestError
from dbtkd.wire import WORKER_READY_TIMEOUT

if TYPE_CHECKING:
    from dbtkd.supervisor import Supervisor

from dbtkd.units import SECONDS

MAX_LOG_LINES = 10_000
DEFAULT_JOB_GRACE = 5 * SECONDS  # DESIGN §2: how long ``stop`` lets running jobs finish
JOB_POLL_INTERVAL = 0.25 * SECONDS

log = logging.getLogger("dbtkd.supervisor")


class ControlCommands:
    """The handler ``ControlServer`` dispatches to, on behalf of one supervisor."""

    def __init__(self, daemon: Supervisor) -> None:
        self.daemon = daemon

    def daemon_info(self) -> dict[str, Any]:
        return self.daemon.daemon_info()

    def touch(self) -> None:
        self.daemon.touch()

    async def cmd_hello(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "state": self.daemon.state,
        }

    async def cmd_status(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        settings = self.daemon.settings
        return {
            "state": self.daemon.state,
            "error": self.daemon.error,
            "pid": os.getpid(),
            "worker_pid": self.daemon.worker.pid if self.daemon.worker else None,
            "port": self.daemon.port,
            "url": self.daemon.url,
            "version": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "started_at": self.daemon.started_at,
            "uptime": round(time.time() - self.daemon.started_at, 3),
            "restarts": dict(self.daemon.restarts),
            "clients": self.daemon.leases.clients(),
            "handoff_error": self.daemon.last_handoff_error,
            "handed_over_from": self.daemon.handed_over_from,
            "control_socket": settings.runtime.control_socket,
            "home": settings.home,
            "log_file": settings.data.log_file,
            "data_dir": settings.data.data_dir,
            "config_file": settings.data.config_file,
            "idle_exit": settings.idle_exit,
            # Whether AI and issue reporting are set up (and how), never a key.
            **services.describe(settings.data.config_file, self.daemon.env),
            "processes": self.daemon.processes(),
            "log_error": self.daemon.logfile.error,
            "port_range": settings.port_range_text(),
            "watchdog_timeout": settings.watchdog_timeout,
            "worker_start": "fork" if self.daemon.zygote is not None else "spawn",
            "passwords": await asyncio.to_thread(_password_report, settings.data.data_dir),
        }

    async def _require_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while True:
            state: State = self.daemon.state
            if state == State.FAILED:
                raise RequestError(
                    protocol.NOT_READY,
                    f"daemon failed: {self.daemon.error['reason']}"
                    if self.daemon.error
                    else "daemon failed",
                )
            if state == State.RUNNING:
                return
            try:
                await asyncio.wait_for(
                    self.daemon.state_changed.wait(), deadline - time.monotonic()
                )
            except TimeoutError:
                raise RequestError(protocol.NOT_READY, "the worker is not ready yet") from None

    async def cmd_port(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        if not self.daemon.handed_off:  # after a handoff: same port and token, answer at once
            await self._require_ready()
        return {
            "port": self.daemon.port,
            "url": self.daemon.url,
            "token": self.daemon.token,
            "pid": os.getpid(),
            "version": __version__,
        }

    async def cmd_stop(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        """Stop the daemon; running jobs get ``timeout`` seconds (or, with ``wait``, all the
        time they need), then are cancelled. Replies at once, listing those jobs."""
        timeout = float(request.args.get("timeout", DEFAULT_JOB_GRACE))
        wait = bool(request.args.get("wait", False))
        if timeout < 0:
            raise RequestError(protocol.INVALID_PARAMS, "stop: 'timeout' must be >= 0")
        jobs = await self.daemon.running_jobs()
        if jobs:
            log.info(
                "stop requested with %d running job(s); %s",
                len(jobs),
                "waiting for them" if wait else f"waiting up to {timeout:g} s",
            )
            self.daemon.run_in_background(self._stop_after_jobs(timeout, wait), "stop after jobs")
        else:
            # Reply first; the run loop stops the worker and removes our files afterwards.
            asyncio.get_running_loop().call_soon(self.daemon.request_stop)
        return {"stopping": True, "pid": os.getpid(), "jobs": jobs}

    async def _stop_after_jobs(self, grace: float, wait: bool) -> None:
        deadline = None if wait else time.monotonic() + grace
        while await self.daemon.running_jobs():
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(JOB_POLL_INTERVAL)
        self.daemon.request_stop(reason="stop command")

    async def cmd_restart(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        done = self.daemon.restart_done = asyncio.Event()
        if self.daemon.state == State.FAILED:
            log.info("restart requested: leaving state failed")
            self.daemon.resume.set()
        else:
            log.info("restart requested")
            await self.daemon.stop_worker(code=1012)
        try:
            await asyncio.wait_for(done.wait(), WORKER_READY_TIMEOUT)
        except TimeoutError:
            raise RequestError(
                protocol.NOT_READY, "the new worker did not become ready; see dbtkctl status"
            ) from None
        assert self.daemon.worker is not None
        return {"worker_pid": self.daemon.worker.pid, "port": self.daemon.port}

    async def cmd_logs(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        lines = request.args.get("lines", 50)
        if lines < 0:
            raise RequestError(protocol.INVALID_PARAMS, "logs: 'lines' must be >= 0")
        backlog = tail(self.daemon.settings.data.log_file, min(lines, MAX_LOG_LINES))
        if stream is not None:
            logfile = self.daemon.logfile

            def follower(line: str) -> None:
                stream.send("log", line=line)

            logfile.follow(follower)

            async def unfollow() -> None:
                await stream.closed.wait()
                logfile.unfollow(follower)

            self.daemon.run_in_background(unfollow(), "log follower")
        return {"lines": backlog, "log_file": self.daemon.settings.data.log_file}

    async def cmd_attach(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        assert stream is not None
        lease = self.daemon.leases.attach(request.args["name"], request.args["pid"], stream)
        log.info("client attached: %s (pid %d)", lease.name, lease.pid)

        async def release() -> None:
            await stream.closed.wait()
            self.touch()
            if self.daemon.leases.release(lease.id) is not None:
                log.info("client detached: %s (pid %d)", lease.name, lease.pid)

        self.daemon.run_in_background(release(), f"lease {lease.id}")
        return {
            "lease": lease.id,
            "state": self.daemon.state,
            "port": self.daemon.port,
            "pid": os.getpid(),
            "version": __version__,
        }

    async def cmd_metrics(self, request: Request, stream: Stream | None) -> dict[str, Any]:
        activity = self.daemon.worker.activity if self.daemon.worker else {}
        return {
            "uptime": round(time.time() - self.daemon.started_at, 3),
            "state": self.daemon.state,
            "processes": self.daemon.processes(),
            "restarts": dict(self.daemon.restarts),
            "leases": len(self.daemon.leases),
            "worker": {k: v for k, v in activity.items() if k not in ("op", "seq")},
            "idle_seconds": round(self.daemon.idle_seconds(), 3),
            "log_error": self.daemon.logfile.error,
        }

    async def cmd_handoff(self, request: Request, stream: Stream | None) -> Any:
        """Hand port, control socket and lock to a newer daemon (see ``dbtkd.handoff``)."""
        assert stream is not None
        version = request.args["version"]
        if sys.platform == "win32" or self.daemon.socket_activated:
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
        if (
            self.daemon.state != State.RUNNING
            or self.daemon.handoff_pending
            or self.daemon.control_server is None
        ):
            raise RequestError(protocol.NOT_READY, f"cannot hand over while {self.daemon.state}")
        fds, carried = self.daemon.begin_handoff()
        connection = stream.dup_socket()
        try:
            handoff.send_state(connection, request.id, fds, carried, self.daemon_info())
        finally:
            connection.close()
        log.info("handing over to dbtkd %s; serving until its worker answers", version)
        stream.lines = asyncio.Queue()
        self.daemon.run_in_background(self._await_verdict(stream, version), "handoff verdict")
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
            self.daemon.handoff_done(version)
        else:
            self.daemon.handoff_failed(version, verdict.get("reason"))


def _password_report(data_dir: str) -> dict[str, Any]:
    """Where saved connection passwords are kept (the OS keyring or connections.json)."""
    from dbtkd import passwords  # stdlib and jeepney only: the supervisor loads no app code

    return passwords.report(os.path.join(data_dir, passwords.CONNECTIONS_FILE))
