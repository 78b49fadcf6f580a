"""Starting a worker process: argv, environment, pipes and handshake, with the stdlib only.

A cold start is three Python processes in a row (``dbtkctl``, the supervisor, the worker) and
the worker's imports are the longest step. So the first worker is started at the supervisor's
first line (``start_early``, from ``dbtkd.__main__``, POSIX), before the supervisor has read
its settings, taken the lock or bound the port; ``dbtkd.launch`` hands it all that later
(``handshake``), or ends it (``Started.discard``) if this daemon does not go on. Its start-up
then overlaps the supervisor's. Every later worker is started and handed its socket at once
(``spawn``). This module is asyncio-free and imports little, for the same reason.

The worker gets: the listening socket (``pass_fds``; an early worker gets it afterwards over a
socket pair), a private reply pipe (``--reply-fd``), its own process group, stdout and stderr
on one pipe to the supervisor's log, and on stdin the token line, then one JSON line of
settings. Nothing secret is in argv or the environment. Windows starts it differently (an
inherited reply handle, no console, a job object, the socket shared after the spawn):
``dbtkd.winproc``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from dbtkd import __version__, sockshare
from dbtkd.systemd import HANDOVER_ENV_PREFIXES

if TYPE_CHECKING:
    from typing import IO, Any

    from dbtkd import winproc  # imported where used: ctypes would slow every POSIX start
    from dbtkd.settings import Settings
    from dbtkd.wire import Handshake, WorkerSettings
    from dbtkd.zygote import Child

_WINDOWS = sys.platform == "win32"  # tests flip it to run the Windows branch on Linux


class Spawned:
    """A just-started worker: its process (a ``Popen``, or a ``zygote.Child`` when the fork
    server made it), the write end of its stdin, the read ends of its output and its reply
    pipe (the caller owns all three) and, on Windows, the job object holding its tree."""

    def __init__(
        self,
        process: subprocess.Popen[bytes] | Child,
        stdin: IO[bytes],
        stdout: IO[bytes],
        reply_fd: int,
        probe_nonce: str,
        job: winproc.Job | None = None,
    ) -> None:
        self.process = process
        self.stdin = stdin
        self.stdout = stdout
        self.reply_fd = reply_fd
        self.probe_nonce = probe_nonce
        self.job = job

    def close(self) -> None:
        """Close our pipe ends (a worker that will never be adopted)."""
        self.stdin.close()
        self.stdout.close()
        os.close(self.reply_fd)


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for the worker: no systemd hand-over variables, nothing secret."""
    clean = {k: v for k, v in env.items() if not k.startswith(HANDOVER_ENV_PREFIXES)}
    clean["PYTHONUNBUFFERED"] = "1"
    return clean


def dbtkd_argv(*args: str) -> list[str]:
    """``dbtkd ARGS`` as this process runs it: the frozen executable, or ``python -m dbtkd``."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "dbtkd", *args]


def worker_argv(flag: str, value: int) -> list[str]:
    """``dbtkd _worker --reply-fd N`` (POSIX) or ``--reply-handle H`` (Windows)."""
    return dbtkd_argv("_worker", flag, str(value))


def test_faults(env: Mapping[str, str]) -> list[str]:
    """Test-only switches for the worker: ``DBTK_TEST_FAULTS`` plus the lines of the file named
    by ``DBTK_TEST_FAULTS_FILE``, read at every spawn so a test can heal a fault."""
    faults = {f for f in env.get("DBTK_TEST_FAULTS", "").split(",") if f}
    path = env.get("DBTK_TEST_FAULTS_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                faults.update(line.strip() for line in file if line.strip())
        except OSError:
            pass
    return sorted(faults)


def new_probe_nonce() -> str:
    """Echoed only by this worker's readiness probe (``dbtkd.worker.ReadinessProbe``)."""
    import secrets  # hashlib and hmac: not on the way to the early worker

    return secrets.token_hex(8)


def send_handshake(
    stdin: IO[bytes], token: str, settings: WorkerSettings, probe: str, socket_info: dict[str, Any]
) -> None:
    """The token line and the settings line, then the pipe turns non-blocking: orders must
    never stall the supervisor (a hung worker's full pipe drops them instead)."""
    import json  # here, not at the top: re and json are ~5 ms before the early worker starts

    handshake: Handshake = {**settings, "probe": probe, "socket": socket_info}
    try:
        # Two short lines into an empty pipe: this never blocks.
        stdin.write(token.encode() + b"\n" + json.dumps(handshake).encode() + b"\n")
        stdin.flush()
    except BrokenPipeError:
        pass  # it died at once; the supervisor sees the exit and its output
    if _WINDOWS:
        from dbtkd import winproc

        winproc.make_nonblocking(stdin.fileno())
    elif sys.platform != "win32":
        os.set_blocking(stdin.fileno(), False)


def worker_settings(
    settings: Settings, env: Mapping[str, str], *, port: int, started_at: float, restarts: int
) -> WorkerSettings:
    """The worker's settings line (``spawn`` adds the probe nonce and the socket)."""
    return {
        "port": port,
        "allowed_origins": list(settings.allowed_origins),
        "version": __version__,
        "daemon_pid": os.getpid(),
        "daemon_started_at": started_at,
        "worker_restarts": restarts,
        "log_file": settings.data.log_file,
        "data_dir": settings.data.data_dir,
        "config_file": settings.data.config_file,
        "log_level": settings.log_level,
        "access_log": settings.log_level == "debug",
        "test_faults": test_faults(env),
    }


class Started:
    """A worker process that has not had its handshake yet: the process, the read end of its
    reply pipe, its job object (Windows) and, for an early start, our end of the socket pair
    its listening socket will come through."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        reply_fd: int,
        job: winproc.Job | None = None,
        channel: tuple[socket.socket, int] | None = None,
    ) -> None:
        self.popen = popen
        self.reply_fd = reply_fd
        self.job = job
        self.channel = channel  # (our end, the descriptor number of the worker's end)
        self.settled = False  # handed its socket (``handshake``) or ended (``discard``)

    def discard(self) -> None:
        """End a worker that will never get its handshake (the lock was taken, a bad flag, or
        the settings asked for the fork server) and close everything of it we hold. Does
        nothing once ``handshake`` or ``discard`` ran."""
        if self.settled:
            return
        self.settled = True
        if self.job is not None:
            self.job.terminate()
            self.job.close()
        self.popen.kill()
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()
        os.close(self.reply_fd)
        if self.channel is not None:
            self.channel[0].close()


def start(env: Mapping[str, str], listener: socket.socket | None) -> Started:
    """Start a worker process. With ``listener`` None (POSIX, ``start_early``), the socket is
    not inherited but sent by ``handshake`` over a socket pair."""
    read_fd, write_fd = os.pipe()
    channel = None
    try:
        if _WINDOWS:
            from dbtkd import winproc

            popen, job = winproc.start_worker(worker_argv, write_fd, child_environment(env))
            return Started(popen, read_fd, job)
        if listener is None:
            ours, theirs = sockshare.channel_pair()
            channel = (ours, theirs.fileno())
            passed: tuple[int, ...] = (theirs.fileno(),)
        else:
            theirs = None
            passed = tuple(sockshare.spawn_kwargs(listener).get("pass_fds", ()))
        try:
            popen = subprocess.Popen(
                worker_argv("--reply-fd", write_fd),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=child_environment(env),
                pass_fds=(write_fd, *passed),
                process_group=0,
                cwd="/",
            )
        finally:
            if theirs is not None:
                theirs.close()
        return Started(popen, read_fd, None, channel)
    except BaseException:
        os.close(read_fd)
        if channel is not None:
            channel[0].close()
        raise
    finally:
        os.close(write_fd)


def start_early(argv: list[str], env: Mapping[str, str]) -> Started | None:
    """The first worker, started at the supervisor's first line; None where it must wait: on
    Windows (its job object and share need more of the supervisor), for ``--takeover``
    (the predecessor's worker serves until ours is ready; no hurry), for ``--help`` and
    ``--version``, and when ``--worker-start`` is given or ``DBTK_WORKER_START`` asks for the
    fork server (a ``dbtkd.toml`` that asks for it costs one discarded worker). A failure to start
    is not reported here: ``dbtkd.launch`` starts it again the usual way and says why."""
    if _WINDOWS or env.get("DBTK_WORKER_START", "").strip() == "fork":
        return None
    if any(a in ("--takeover", "-h", "--help", "--version") or a.startswith("--worker-start")
           for a in argv):  # fmt: skip
        return None
    try:
        return start(env, None)
    except OSError:
        return None


def handshake(
    started: Started, listener: socket.socket, token: str, settings: WorkerSettings
) -> Spawned:
    """Hand a started worker its socket, token and ``settings``."""
    popen = started.popen
    assert not started.settled, "a worker gets one handshake"
    try:
        if started.channel is not None:
            ours, theirs_fd = started.channel
            with ours:
                shared = sockshare.export_through(ours, theirs_fd, listener)
        else:
            shared = sockshare.export_for_child(listener, popen.pid)  # Windows: share(pid)
    except BaseException:
        # A worker without its socket can never serve: end it (and its job) rather than leave
        # it waiting on its stdin.
        started.discard()
        raise
    started.settled = True
    assert popen.stdin is not None
    assert popen.stdout is not None
    probe = new_probe_nonce()
    send_handshake(popen.stdin, token, settings, probe, shared)
    return Spawned(popen, popen.stdin, popen.stdout, started.reply_fd, probe, started.job)


def spawn(
    listener: socket.socket, env: Mapping[str, str], token: str, settings: WorkerSettings
) -> Spawned:
    """Start a worker serving ``listener`` and hand it the token and ``settings``."""
    return handshake(start(env, listener), listener, token, settings)
