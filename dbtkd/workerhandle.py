"""The supervisor's handle of a worker process: pipes, readiness, watchdog, stop. (The worker
process itself is ``dbtkd.worker``; the programs its jobs run, ``dbtkd.app.programs``.)

``WorkerHandle.adopt`` takes a process ``dbtkd.spawn`` started (the first one before asyncio was
even imported) and starts two pumps: its output into the supervisor's log, and its reply pipe
into ``activity`` (pongs) and the supervisor's subreaper (``orphans`` notices). The
supervisor decides what to do when a worker is ready, silent or gone; this module only knows
how to find out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from dbtkd.spawn import Spawned
from dbtkd.throttle import SIMILAR_LINES_PER_WINDOW, LineThrottle
from dbtkd.units import SECONDS
from dbtkd.wire import OP_ORPHANS, OP_PING, OP_PONG, OP_STOP, PROBE_HEADER, SupervisorView, line
from dbtkd.zygote import Child

LOOPBACK = "127.0.0.1"
READY_PROBE_INTERVAL = 0.01 * SECONDS  # a worker starts in ~0.15 s; poll finely
STDERR_LINES_KEPT = 20  # the tail shown with a failure
DUMP_WAIT = 1 * SECONDS  # time for faulthandler to write a stack dump before the kill
# Pings double as the worker's activity report for idle exit, so they run at least once a
# second; the watchdog timeout decides when silence means hung.
PING_INTERVAL_MAX = 1 * SECONDS
# The worker's faulthandler writes a stack dump on it (POSIX only).
DUMP_SIGNAL: int | None = getattr(signal, "SIGUSR1", None)
PIPE_CHUNK = 64 * 1024  # Windows: what a pipe thread reads at a time

log = logging.getLogger("dbtkd.supervisor")
# Tests flip it to run the Windows branches on Linux. Windows: no pidfd, no process groups, no
# SIGUSR1 stack dump, and the Proactor loop cannot read an anonymous pipe (threads do).
_WINDOWS = sys.platform == "win32"


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Process:
    """A child started with ``subprocess`` (before asyncio existed), awaited with a pidfd.

    A pidfd becomes readable when the process exits, so waiting costs no thread and no
    polling; where there is none (not Linux), a thread waits instead.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watch()

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd: int = getattr(os, "pidfd_open")(self.pid)  # noqa: B009 - Linux only
        except (AttributeError, OSError):
            waiting = loop.run_in_executor(None, self.popen.wait)
            waiting.add_done_callback(lambda f: self._done(self.popen.returncode))
            return

        def readable() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._done(self.popen.wait())

        loop.add_reader(pidfd, readable)

    def _done(self, returncode: int) -> None:
        if not self._exited.done():
            self._exited.set_result(returncode)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()  # SIGKILL; TerminateProcess on Windows


class WorkerHandle:
    """One worker process and its pipes; owned by the supervisor, which must ``stop`` or
    ``kill`` it and then await ``proc.wait()`` and the ``pumps``."""

    def __init__(self, spawned: Spawned, on_orphans: Callable[[], None]) -> None:
        process = spawned.process
        # A spawned worker is our child, watched through a pidfd; a forked one is the
        # zygote's, which reports its exit (``dbtkd.zygote``).
        self.proc: Process | Child = (
            Process(process) if isinstance(process, subprocess.Popen) else process
        )
        self.pid = self.proc.pid
        self._stdin = spawned.stdin
        self._stdout = spawned.stdout
        self._reply_fd = spawned.reply_fd
        self.output = asyncio.StreamReader()
        self.replies = asyncio.StreamReader()
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES_KEPT)
        self.last_pong = time.monotonic()
        self.activity: dict[str, Any] = {}  # the last pong (wire.Activity), {} before one
        self.pong_received = asyncio.Event()  # set by each pong; cleared by whoever waits
        self.probe_nonce = spawned.probe_nonce
        self.stop_requested = False
        self.killed_by_watchdog = False
        self.pumps: list[asyncio.Task[None]] = []
        self._on_orphans = on_orphans  # one of its programs exited: sweep what it left
        self.job = spawned.job  # Windows: the job object holding its process tree

    @classmethod
    async def adopt(cls, spawned: Spawned, on_orphans: Callable[[], None]) -> WorkerHandle:
        """Take charge of a worker ``dbtkd.spawn`` started (maybe before asyncio ran).

        ``on_orphans`` is called when the worker reports that a program it started exited.
        Raises ``zygote.ZygoteGone`` if the fork server died before forking it.
        """
        if isinstance(spawned.process, Child):
            await spawned.process.started()
        worker = cls(spawned, on_orphans)
        await _connect_reader(worker.output, worker._stdout)
        await _connect_reader(worker.replies, os.fdopen(worker._reply_fd, "rb"))
        worker.pumps = [
            asyncio.create_task(worker._pump_output()),
            asyncio.create_task(worker._pump_replies()),
        ]
        log.info("worker %d started", worker.pid)
        return worker

    async def _pump_output(self) -> None:
        wlog = logging.getLogger(f"dbtkd.worker[{self.pid}]")
        # A flood (a traceback per connection) is counted, not written: it would rotate the
        # log's whole history away (dbtkd.throttle).
        debug = wlog.isEnabledFor(logging.DEBUG)  # every line wanted: only the byte budget
        throttle = LineThrottle(time.monotonic(), None if debug else SIMILAR_LINES_PER_WINDOW)
        while True:
            try:
                raw = await asyncio.wait_for(
                    self.output.readline(), throttle.seconds_to_flush(time.monotonic())
                )
            except TimeoutError:  # quiet again: say what was held back
                for summary in throttle.flush(time.monotonic()):
                    wlog.warning("%s", summary)
                continue
            except ValueError:  # a line over the stream limit: log what we have
                raw = await self.output.read(64 * 1024)
            if not raw:
                for summary in throttle.flush(time.monotonic(), force=True):
                    wlog.warning("%s", summary)
                # Its output ended: it exited (or is about to). Our end of its stdin is ours
                # to close, or every restart would leak a descriptor.
                self._stdin.close()
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(line)
            summaries, written = throttle.feed(line, time.monotonic())
            for summary in summaries:
                wlog.warning("%s", summary)
            if written is not None:
                wlog.info("%s", written)

    async def _pump_replies(self) -> None:
        while line := await self.replies.readline():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("op") == OP_PONG:
                    self.last_pong = time.monotonic()
                    self.activity = message
                    self.pong_received.set()
                elif message.get("op") == OP_ORPHANS:
                    self._on_orphans()

    def order(self, op: str, **fields: Any) -> None:
        """Send one order line. The pipe is non-blocking: if a hung worker let it fill up,
        the order is dropped (the watchdog deals with hung workers), never the supervisor."""
        if self._stdin.closed:
            return
        with contextlib.suppress(OSError):
            os.write(self._stdin.fileno(), line(op, **fields))

    def kill(self) -> None:
        # The worker leads its own process group (Windows: its own job object); killing the
        # group also kills any helper it started (dump tools, shells) instead of orphaning them.
        if self.job is not None:
            self.job.terminate()
        elif sys.platform != "win32":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def release(self) -> None:
        """After the worker exited: close its job object (which kills what is left in it)."""
        if self.job is not None:
            self.job.close()

    async def stop(self, code: int, grace: float, jobs_reason: str = "interrupted by stop") -> None:
        """Order a stop: running jobs are cancelled with ``jobs_reason``, WebSockets close with
        ``code``; kill after ``grace`` seconds."""
        if self.proc.returncode is not None:
            return
        self.stop_requested = True
        self.order(OP_STOP, code=code, jobs_reason=jobs_reason)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            log.warning("worker %d did not stop in %.0f s; killing it", self.pid, grace)
            self.kill()
            await self.proc.wait()

    def cause(self) -> str:
        """Why the worker ended, as counted in ``restarts``."""
        if self.stop_requested:
            return "requested"
        if self.killed_by_watchdog:
            return "watchdog"
        code = self.proc.returncode
        if code is not None and code < 0:
            return "signal"
        return "exit"

    async def probe(self, port: int) -> bool:
        """True once this worker itself answers ``GET /health`` on ``port``.

        The probe carries this worker's nonce and only this worker echoes it: during a
        handoff the predecessor's worker accepts on the same socket, and its answer proves
        nothing.
        """
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            return False
        try:
            writer.write(
                f"GET /health HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
                f"{PROBE_HEADER}: {self.probe_nonce}\r\nConnection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().split("\r\n")
            return lines[0].split(" ")[1:2] == ["200"] and (
                f"{PROBE_HEADER.lower()}: {self.probe_nonce}" in lines
            )
        except (OSError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        finally:
            writer.close()

    async def wait_ready(self, port: int, within: float, stopping: asyncio.Event) -> bool:
        """Probe until the worker answers (True), exits, times out or we stop (False)."""
        deadline = time.monotonic() + within
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            while time.monotonic() < deadline and not stopping.is_set():
                probe = asyncio.ensure_future(self.probe(port))
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

    async def watchdog(self, silence_limit: float, view: Callable[[], SupervisorView]) -> None:
        """Ping until the worker exits; silence for ``silence_limit`` s: a dump, then a kill.

        Each ping carries ``view()`` (what the worker's ``/metrics`` needs from us).
        """
        interval = min(silence_limit / 4, PING_INTERVAL_MAX)
        seq = 0
        self.last_pong = time.monotonic()
        while self.proc.returncode is None:
            seq += 1
            self.order(OP_PING, seq=seq, view=view())
            await asyncio.sleep(interval)
            silent = time.monotonic() - self.last_pong
            if silent < silence_limit or self.proc.returncode is not None:
                continue
            log.error(
                "worker %d unresponsive for %.1f s; requesting a stack dump", self.pid, silent
            )
            lines_before = len(self.stderr_tail)
            last_before = self.stderr_tail[-1] if self.stderr_tail else None
            if DUMP_SIGNAL is not None and not _WINDOWS:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, DUMP_SIGNAL)
                await asyncio.sleep(DUMP_WAIT)
            last_after = self.stderr_tail[-1] if self.stderr_tail else None
            if len(self.stderr_tail) == lines_before and last_after == last_before:
                log.error(
                    "worker %d wrote no stack dump (stopped or blocked in the kernel); "
                    "no stack dump was possible",
                    self.pid,
                )
            log.error("killing unresponsive worker %d", self.pid)
            self.killed_by_watchdog = True
            self.kill()
            return

    async def fresh_activity(self, view: SupervisorView, wait_at_most: float) -> None:
        """Ping now and wait (``wait_at_most`` s) for the pong, so ``activity`` is current."""
        if self.proc.returncode is not None:
            return
        self.pong_received.clear()
        self.order(OP_PING, seq=0, view=view)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pong_received.wait(), wait_at_most)


async def _connect_reader(reader: asyncio.StreamReader, pipe: Any) -> None:
    """Feed ``reader`` from ``pipe`` (a file object the worker writes into) until its EOF.

    POSIX: the event loop watches the pipe. Windows: the Proactor loop reads only overlapped
    handles, and the worker's pipes are plain anonymous ones, so a thread reads and hands each
    chunk to the loop.
    """
    loop = asyncio.get_running_loop()
    if not _WINDOWS:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return

    def pump() -> None:
        try:
            while chunk := os.read(pipe.fileno(), PIPE_CHUNK):
                loop.call_soon_threadsafe(reader.feed_data, chunk)
        except OSError:
            pass  # the worker's end is gone: end of stream
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed first: nobody reads
                loop.call_soon_threadsafe(reader.feed_eof)
            pipe.close()

    threading.Thread(target=pump, name="worker-pipe", daemon=True).start()
