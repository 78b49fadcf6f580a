"""The worker fork server (Linux): a process that has imported the worker, forking each one.

A worker spawned from scratch spends ~150 ms importing asyncio, Hypercorn, Starlette and the
app before it can serve; after a crash that is the outage. So the supervisor forks one zygote
(``Zygote.fork_here``, from ``dbtkd.launch``: before asyncio, while it runs no thread and no
event loop), which imports all of that once, runs a collection, freezes what survives
(``gc.freeze()``: later collections in a worker never write to those pages, so they stay
shared), and then waits. Each worker is a ``fork()`` of it: serving ~30 ms after a crash, and
the pages of the interpreter and of the imported modules are shared by the supervisor, the
zygote and the worker instead of being paid for in each. The supervisor collects and freezes
its own objects just before that fork, for the same reason. A zygote started later (the first
one died) is spawned as ``dbtkd _zygote`` (``Zygote.start``): by then the supervisor runs its
event loop, and a fork could copy a lock that another thread holds.

The conversation is a ``SOCK_SEQPACKET`` socket pair (one message per datagram):

- supervisor → zygote: ``fork`` with four descriptors attached (``SCM_RIGHTS``): the worker's
  stdin (read end), its output (write end), the listening socket, its reply pipe (write end).
- zygote → supervisor: ``{"pid": N}`` per ``fork``, in order (or ``{"error": "..."}``), and
  ``{"exit": N, "code": C}`` when worker N exited (C as ``Popen.returncode``: negative for a
  signal). A worker is the zygote's child, so the zygote reaps it (through a pidfd) and says
  how it ended.

A forked zygote keeps only its socket (as descriptor 3) and 0-2 (0 reading /dev/null), sets
aside the supervisor's log handlers and takes the environment a spawned one would get
(``_leave_the_supervisor``). In the worker it forks, the four descriptors become 0 (stdin),
1 and 2 (output), 3 (listening socket) and 4 (reply pipe), nothing else stays open, the child
leads a new process group, and ``dbtkd.worker.main`` runs exactly as in a spawned worker: the
token and settings arrive on stdin, ``PR_SET_PDEATHSIG`` ties it to the zygote, which is tied
to the supervisor the same way. ``ps`` names them ``dbtkd-zygote`` and ``dbtkd-worker``.

The zygote takes orders only from its socket and holds no threads, no event loop and no
open files besides it, so a fork copies nothing that could be half-held. When the socket
reaches end of file the supervisor is gone and the zygote exits. If the zygote dies, its
workers die with it; the supervisor then starts a new one (``dbtkd.supervisor``) and, should
that fail too, spawns workers the slow way (``dbtkd.spawn``). Linux only (pidfds); elsewhere
workers are spawned.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import io
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from dbtkd import logfile, spawn
from dbtkd.wire import WorkerSettings

SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
FORK = b"fork"
FORK_FDS = 4  # stdin, output, listening socket, reply pipe
CHILD_LISTENER_FD = 3
CHILD_REPLY_FD = 4
MAX_MESSAGE = 4096
ZYGOTE_SOCKET_FD = 3  # in a forked zygote
# sysexits.h EX_SOFTWARE: the forked child could not even start the worker.
EXIT_CHILD_SETUP = 70
SIGKILL: int = getattr(signal, "SIGKILL", 9)

log = logging.getLogger("dbtkd.supervisor")


class ZygoteGone(OSError):
    """The zygote is not there to fork (it exited, or never finished starting)."""


# ---------------------------------------------------------------------------------------------
# The supervisor's side.


class Child:
    """A worker the zygote forked, as the supervisor sees it (the ``Process`` interface of
    ``dbtkd.workerhandle``): the pid arrives in the zygote's answer, the exit in its report."""

    def __init__(self) -> None:
        self.pid = 0
        self._pid_known: Any = None  # asyncio futures, made on the loop (attach)
        self._exited: Any = None
        self._kill_when_known = False
        self.returncode: int | None = None

    def _bind(self, loop: Any) -> None:
        if self._pid_known is None:
            self._pid_known = loop.create_future()
            self._exited = loop.create_future()

    def _set_pid(self, pid: int) -> None:
        self.pid = pid
        if not self._pid_known.done():
            self._pid_known.set_result(pid)
        if self._kill_when_known:
            self.kill()

    def _set_exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
        if not self._pid_known.done():
            self._pid_known.set_exception(ZygoteGone("the zygote exited before forking"))
        if not self._exited.done():
            self._exited.set_result(code)

    async def started(self) -> int:
        """The worker's pid, once the zygote forked it (raises ``ZygoteGone``)."""
        import asyncio

        pid: int = await asyncio.shield(self._pid_known)
        return pid

    async def wait(self) -> int:
        import asyncio

        code: int = await asyncio.shield(self._exited)
        return code

    def kill(self) -> None:
        if self.returncode is not None:
            return
        if not self.pid:
            self._kill_when_known = True
            return
        # Not yet reported as exited, so not yet reaped: the pid is still this worker's.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, SIGKILL)


class Zygote:
    """The supervisor's end: start the zygote, ask it for workers, hear how they end."""

    def __init__(
        self, pid: int, sock: socket.socket, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.pid = pid  # our child: the subreaper reaps it once it is gone
        self.popen = popen  # kept when spawned: a Popen let go while running would warn
        self.sock = sock
        self.pending: collections.deque[Child] = collections.deque()  # forks not yet answered
        self.children: dict[int, Child] = {}
        self.forked = 0  # workers it forked: one that died having forked none is not retried
        self.gone = False
        self._loop: Any = None

    @classmethod
    def fork_here(cls, env: Mapping[str, str]) -> Zygote:
        """Fork the zygote from this process, which must hold no threads and no event loop
        (``dbtkd.launch``, before asyncio): it shares this interpreter's pages with us."""
        if sys.platform == "win32":  # SUPPORTED is False there: never called
            raise NotImplementedError("the worker fork server is Linux's")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):  # nothing of ours written twice
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        # Collected once here, then frozen: neither our collections nor the zygote's ever
        # traverse (and so write to) the objects both of us, and every worker, share.
        gc.collect()
        gc.freeze()
        try:
            pid = os.fork()
        except BaseException:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            code = EXIT_CHILD_SETUP
            try:
                _leave_the_supervisor(theirs.fileno(), env)
                code = _run(socket.socket(fileno=ZYGOTE_SOCKET_FD))
            except BaseException:
                _report_crash()
            os._exit(code)
        theirs.close()
        return cls(pid, ours)

    @classmethod
    def start(cls, env: Mapping[str, str]) -> Zygote:
        """Spawn the zygote as a new process (``dbtkd _zygote``): the way for a process that
        runs threads or an event loop, where a fork could copy a lock held mid-way."""
        if sys.platform == "win32":  # SUPPORTED is False there: never called
            raise NotImplementedError("the worker fork server is Linux's")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            popen = subprocess.Popen(
                spawn.dbtkd_argv("_zygote", "--socket-fd", str(theirs.fileno())),
                stdin=subprocess.DEVNULL,
                env=spawn.child_environment(env),
                pass_fds=(theirs.fileno(),),
                process_group=0,
                cwd="/",
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(popen.pid, ours, popen)

    def fork(self, listener: socket.socket, token: str, settings: WorkerSettings) -> spawn.Spawned:
        """Ask for a worker serving ``listener``; its pid comes later (``Child.started``)."""
        if sys.platform == "win32":  # SUPPORTED is False there: never called
            raise NotImplementedError("the worker fork server is Linux's")
        if self.gone:
            raise ZygoteGone("the zygote is gone")
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            socket.send_fds(self.sock, [FORK], [stdin_r, out_w, listener.fileno(), reply_w])
        except OSError as exc:
            for fd in (stdin_r, stdin_w, out_r, out_w, reply_r, reply_w):
                os.close(fd)
            self.gone = True
            raise ZygoteGone(f"the zygote is gone ({exc})") from exc
        for fd in (stdin_r, out_w, reply_w):
            os.close(fd)  # the zygote has its own copies now
        child = Child()
        if self._loop is not None:
            child._bind(self._loop)
        self.pending.append(child)
        probe = spawn.new_probe_nonce()
        stdin = os.fdopen(stdin_w, "wb")
        spawn.send_handshake(stdin, token, settings, probe, {"fd": CHILD_LISTENER_FD})
        return spawn.Spawned(child, stdin, os.fdopen(out_r, "rb"), reply_r, probe)

    def attach(self, loop: Any) -> None:
        """Start hearing the zygote on ``loop`` (answers queued before this are kept)."""
        self._loop = loop
        for child in self.pending:
            child._bind(loop)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            with contextlib.suppress(ValueError, TypeError, KeyError):
                self._dispatch(json.loads(data))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if ("pid" in message or "error" in message) and self.pending:
            child = self.pending.popleft()
            if "pid" in message:
                pid = int(message["pid"])
                self.forked += 1
                self.children[pid] = child
                child._set_pid(pid)
            else:
                log.error("the zygote could not fork a worker: %s", message["error"])
                child._set_exit(EXIT_CHILD_SETUP)
        elif "exit" in message:
            exited = self.children.pop(int(message["exit"]), None)
            if exited is not None:
                exited._set_exit(int(message["code"]))

    def _lost(self) -> None:
        """The zygote is gone: its workers die with it (PR_SET_PDEATHSIG), forks never come."""
        self._stop_hearing()
        for child in [*self.pending, *self.children.values()]:
            child._set_exit(-SIGKILL)
        self.pending.clear()
        self.children.clear()

    def close(self) -> None:
        """Let the zygote go: it exits at end of file (the supervisor's subreaper reaps it)."""
        self._stop_hearing()
        self.sock.close()

    def _stop_hearing(self) -> None:
        if self._loop is not None and not self.gone:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.sock.fileno())
        self.gone = True


def start_or_none(env: Mapping[str, str], *, fork: bool = False) -> Zygote | None:
    """A new zygote, or None where there is none (not Linux) or it cannot be started.
    ``fork``: fork it from this process (see ``Zygote.fork_here``) instead of spawning it."""
    if not SUPPORTED:
        log.warning("worker_start = fork needs Linux (pidfds); workers are spawned")
        return None
    try:
        return Zygote.fork_here(env) if fork else Zygote.start(env)
    except OSError as exc:
        log.warning("no worker fork server (%s): workers are spawned", exc)
        return None


# ---------------------------------------------------------------------------------------------
# The zygote process.


def main(argv: list[str]) -> int:
    if sys.platform == "win32":  # SUPPORTED is False there: never called
        raise NotImplementedError("the worker fork server is Linux's")
    if len(argv) != 2 or argv[0] != "--socket-fd" or not argv[1].isdigit():
        print(
            "usage: dbtkd _zygote --socket-fd N (started by the supervisor only)", file=sys.stderr
        )
        return 2
    return _run(socket.socket(fileno=int(argv[1])))


def _run(sock: socket.socket) -> int:
    """The zygote, spawned or forked: import the worker, then fork workers until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from dbtkd import worker

    worker.die_with_parent()
    _set_name(b"dbtkd-zygote")
    gc.disable()  # no collections during the imports: ~60,000 objects, nearly all kept
    worker.preload()
    gc.collect()
    gc.freeze()  # what survives is shared with every worker; keep collections off its pages
    gc.enable()
    serve(sock)
    return 0


# What the forked zygote inherited and must never use nor let go: the supervisor's log
# handlers (their file is closed here; a finalizer would close whatever took its number).
_INHERITED: list[object] = []


def _leave_the_supervisor(sock_fd: int, env: Mapping[str, str]) -> None:
    """In the zygote just forked from the supervisor: become what ``Zygote.start`` would have
    started. Only the socket (as ``ZYGOTE_SOCKET_FD``) and 0-2 stay open, 0 reading
    /dev/null, in its own process group, with the worker's environment and name."""
    if sys.platform == "win32":  # SUPPORTED is False there: never called
        raise NotImplementedError("the worker fork server is Linux's")
    import fcntl

    os.setpgid(0, 0)
    os.chdir("/")
    moved = fcntl.fcntl(sock_fd, fcntl.F_DUPFD, ZYGOTE_SOCKET_FD + 1)
    os.dup2(moved, ZYGOTE_SOCKET_FD)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(ZYGOTE_SOCKET_FD + 1, _fd_ceiling())  # lock, port, log, pipes: not ours
    _INHERITED.extend(logfile.detach_in_child())
    os.environ.clear()
    os.environ.update(spawn.child_environment(env))
    if sys.modules.get("ssl", False) is None:
        del sys.modules["ssl"]  # the supervisor blocked it (dbtkd.__main__); workers need it
    if isinstance(sys.stdout, io.TextIOWrapper):  # PYTHONUNBUFFERED, as if spawned with it
        with contextlib.suppress(ValueError):  # closed
            sys.stdout.reconfigure(write_through=True)


def _set_name(name: bytes) -> None:
    """The process's name in ``ps``, ``top`` and ``/proc/PID/comm``: a forked process's command
    line is its parent's."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
        comm.write(name)


def _report_crash() -> None:
    import traceback

    with contextlib.suppress(OSError):
        os.write(2, traceback.format_exc().encode())


def serve(sock: socket.socket) -> None:
    """Answer ``fork`` requests and report exits until the supervisor closes the socket."""
    if sys.platform == "win32":  # SUPPORTED is False there: never called
        raise NotImplementedError("the worker fork server is Linux's")
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    pidfds: dict[int, int] = {}  # pidfd -> pid
    while True:
        for fd, _events in poller.poll():
            if fd != sock.fileno():
                pid = pidfds.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
                continue
            try:
                data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE, FORK_FDS)
            except OSError:
                data, fds = b"", []
            if not data:
                return  # the supervisor is gone; our workers follow (PR_SET_PDEATHSIG)
            if data != FORK or len(fds) != FORK_FDS:
                for received in fds:
                    os.close(received)
                _send(sock, {"error": f"expected 'fork' and {FORK_FDS} descriptors"})
                continue
            try:
                pid = _fork(fds, sock)
            except OSError as exc:
                _send(sock, {"error": f"fork failed: {exc}"})
                continue
            finally:
                for received in fds:
                    os.close(received)
            pidfd: int = getattr(os, "pidfd_open")(pid)  # noqa: B009 - Linux only
            pidfds[pidfd] = pid
            poller.register(pidfd, select.POLLIN)
            _send(sock, {"pid": pid})


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: the next recv says so
        sock.send(json.dumps(message).encode())


def _fork(fds: list[int], sock: socket.socket) -> int:
    if sys.platform == "win32":  # SUPPORTED is False there: never called
        raise NotImplementedError("the worker fork server is Linux's")
    pid = os.fork()
    if pid:
        return pid
    code = EXIT_CHILD_SETUP
    gc.disable()  # as in a spawned worker: ``dbtkd.worker.settle_collector`` turns it on
    try:
        _become_worker(fds)
        from dbtkd import worker

        code = worker.main(["--reply-fd", str(CHILD_REPLY_FD)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_CHILD_SETUP
    except BaseException:
        _report_crash()
    os._exit(code)


def _become_worker(fds: list[int]) -> None:
    """In the forked child: the descriptors in their places, nothing else open, own group."""
    if sys.platform == "win32":  # SUPPORTED is False there: never called
        raise NotImplementedError("the worker fork server is Linux's")
    import fcntl

    os.setpgid(0, 0)
    # Each source moved above the targets first, so no dup2 overwrites a source not yet moved.
    stdin, output, listener, reply = (
        fcntl.fcntl(fd, fcntl.F_DUPFD, CHILD_REPLY_FD + 1) for fd in fds
    )
    os.dup2(stdin, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.dup2(listener, CHILD_LISTENER_FD)
    os.dup2(reply, CHILD_REPLY_FD)
    os.closerange(CHILD_REPLY_FD + 1, _fd_ceiling())  # the zygote's socket and pidfds too
    _set_name(b"dbtkd-worker")


def _fd_ceiling() -> int:
    if sys.platform == "win32":  # SUPPORTED is False there: never called
        raise NotImplementedError("the worker fork server is Linux's")
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 65536
