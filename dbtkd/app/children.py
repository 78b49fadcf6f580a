"""The worker's child processes: started from argv lists in a group of their own, killed as one.

Every program a job or a stream runs (dump tools, migration commands, shells) starts here, as
an argv list, never a shell string. Each child leads a new process group (``process_group=0``)
or, for a terminal, a new session with the PTY as its controlling terminal, so one ``killpg``
stops the program and whatever it started. On Linux each child also gets
``PR_SET_PDEATHSIG = SIGKILL``: a worker killed with ``kill -9`` takes its children with it,
and the next worker finds nothing of them still running. The environment is built per child
from the worker's, without the daemon's own variables; a secret reaches a child through a 0600
file (``secret_file``) or that child's own environment, never its argv.

``Child.kill`` is synchronous (a signal), so cancellation code can call it before awaiting
anything; ``Child.kill_and_reap`` then waits for the exit status, so no zombie is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any

import anyio

from dbtkd.procstats import PGRP, SESSION, START_TIME, STATE, pid_alive, stat_fields

SECONDS = 1.0
# A SIGKILLed process is gone in milliseconds; longer means it is stuck in the kernel (a dead
# NFS mount), and waiting more would only hold up a stop that must finish in 2 s.
REAP_TIMEOUT = 1 * SECONDS
PR_SET_PDEATHSIG = 1
LINUX = sys.platform.startswith("linux")
POSIX = os.name == "posix"
# Variables that belong to the daemon (and systemd's hand-over to it), never to its children.
DAEMON_PREFIXES = ("DBTK_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")
# Credentials the worker might have inherited: a tool must use the ones of the connection it
# was started for, not whatever the user's login environment happened to hold.
CREDENTIAL_VARIABLES = frozenset({"PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE", "MYSQL_PWD"})

StdioTarget = int | IO[Any] | None


def child_environment(
    extra: Mapping[str, str] | None = None,
    *,
    keep_credentials: bool = False,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The worker's environment without the daemon's variables (and, unless
    ``keep_credentials``, without inherited database credentials), plus ``extra``."""
    source = os.environ if base is None else base
    env = {
        key: value
        for key, value in source.items()
        if not key.startswith(DAEMON_PREFIXES)
        and (keep_credentials or key not in CREDENTIAL_VARIABLES)
    }
    env.update(extra or {})
    return env


def _preexec(controlling_tty: bool) -> Callable[[], None] | None:
    """What the child runs between fork and exec (POSIX only)."""
    if not POSIX:
        return None
    parent = os.getpid()
    prctl: Any = None
    if LINUX:
        import ctypes

        # Resolved before fork: the child should only make the call, not load libraries.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    tty_request = 0
    if controlling_tty:
        import termios

        tty_request = termios.TIOCSCTTY

    def in_child() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the worker died before prctl took effect
                os._exit(1)
        if controlling_tty:
            import fcntl

            # setsid() already ran (start_new_session); stdin is the PTY's slave side.
            fcntl.ioctl(0, tty_request, 0)

    return in_child


class Child:
    """One started program, leader of its own process group (and session, for a terminal).

    Whoever spawned it owns it: it must end with ``kill_and_reap`` (or ``wait`` after a normal
    exit), so its exit status is collected and nothing it started is left running.
    """

    def __init__(self, process: asyncio.subprocess.Process, *, session: bool) -> None:
        self.process = process
        self.pid = process.pid
        self.pgid = process.pid  # process_group=0 / setsid: the child leads its own group
        self.session = session
        self.start_ticks = start_ticks(self.pid)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the whole group (and, for a session, every process still in it)."""
        if not POSIX:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return
        if self.process.returncode is not None and is_running(self.pgid):
            # The leader was reaped and its pid is in use again: that is someone else now.
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        if self.session:
            # A shell with job control puts each job in a group of its own, inside its session.
            for pid in session_members(self.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    async def wait(self) -> int:
        return await self.process.wait()

    async def kill_and_reap(self) -> int | None:
        """Kill the group, then collect the leader's exit status (within ``REAP_TIMEOUT``).

        The leader is our child and is reaped here; anything it started was reparented when
        it died and is reaped by init. Shielded: it runs to the end in cancelled code too.
        """
        self.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(REAP_TIMEOUT):
            await self.process.wait()
        return self.process.returncode


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    stdin: StdioTarget = asyncio.subprocess.DEVNULL,
    stdout: StdioTarget = asyncio.subprocess.DEVNULL,
    stderr: StdioTarget = asyncio.subprocess.DEVNULL,
    session: bool = False,
    controlling_tty: bool = False,
) -> Child:
    """Start ``argv`` (a list: no shell) in a process group of its own, or a new session.

    Raises ``OSError`` when the program cannot be started (not found, not executable).
    """
    if not argv:
        raise ValueError("expected a non-empty argv list; got []")
    kwargs: dict[str, Any] = {}
    if POSIX:
        if session:
            kwargs["start_new_session"] = True
        else:
            kwargs["process_group"] = 0
        kwargs["preexec_fn"] = _preexec(controlling_tty)
    else:  # Windows: a new process group receives no console Ctrl-C meant for the worker
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env),
        cwd=cwd,
        close_fds=True,
        **kwargs,
    )
    return Child(process, session=session)


# -- /proc (Linux): who is in a group or a session, and is a pid still the process we started --


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot; field 22), to tell it from a reused pid."""
    fields = stat_fields(pid) if LINUX else None
    return int(fields[START_TIME]) if fields and len(fields) > START_TIME else None


def is_running(pid: int, ticks: int | None = None) -> bool:
    """True if ``pid`` is alive (not a zombie) and, when ``ticks`` is given, started then."""
    if LINUX and ticks is not None:
        fields = stat_fields(pid)
        if fields is None or fields[STATE] in ("Z", "X"):
            return False
        return len(fields) > START_TIME and int(fields[START_TIME]) == ticks
    return pid_alive(pid)


def _members(index: int, value: int) -> list[int]:
    members = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                fields = stat_fields(int(name))
                if fields and fields[index] == str(value) and fields[STATE] not in ("Z", "X"):
                    members.append(int(name))
    return members


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (Linux; elsewhere empty)."""
    return _members(PGRP, pgid) if LINUX else []


def session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (Linux; elsewhere empty)."""
    return _members(SESSION, sid) if LINUX else []


def kill_stale_group(pgid: int, leader_ticks: int | None) -> bool:
    """Kill a group a previous worker left behind, if it is still the one it started.

    The leader must be alive with the start time recorded for it; a pid reused since by an
    unrelated program is never signalled. Returns True if a signal was sent.
    """
    if not POSIX or not is_running(pgid, leader_ticks):
        return False
    if leader_ticks is None and not LINUX:
        # No start time to compare: only a pid that still leads its own group is ours.
        try:
            if os.getpgid(pgid) != pgid:
                return False
        except OSError:
            return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
        return True
    return False


# -- secrets for a child ------------------------------------------------------------------------


@contextlib.contextmanager
def secret_file(directory: str, content: str, *, suffix: str = "") -> Iterator[str]:
    """A 0600 file holding ``content`` in the private ``directory``, removed on exit.

    For a password a tool reads from a file (PGPASSFILE, ``--defaults-extra-file``). The
    directory sits in the 0700 data dir, and leftovers of a crash are swept at worker start.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # mkstemp: O_EXCL, mode 0600 from the first byte.
    # The worker's pid in the name: a sweep removes only what dead workers left.
    fd, path = tempfile.mkstemp(prefix=f".secret-{os.getpid()}-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(content)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def sweep_secret_files(directory: str) -> list[str]:
    """Remove the secret files of workers that are gone (a crash left them); returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            owner = name.split("-")[1] if name.startswith(".secret-") else ""
            if owner.isdigit() and not is_running(int(owner)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
                    removed.append(name)
    return removed
