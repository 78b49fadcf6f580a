"""The programs the worker's jobs run: started from argv lists in a group of their own, killed
as one.

Every program a job or a stream runs (dump tools, migration commands, shells) starts here, as
an argv list, never a shell string. Each child leads a new process group (``process_group=0``)
or, for a terminal, a new session with the PTY as its controlling terminal. On Linux each
child is also made a *child subreaper* (``PR_SET_CHILD_SUBREAPER``, kept across exec): a
process it started whose own parent dies is handed to it, not to init, so while it runs every
process it started is among its descendants, whatever group or session they moved to
(``setsid``, a double fork). ``Child.kill`` walks that tree in ``/proc`` and kills all of it
with the group (and session). When the program itself exits, what it left behind passes to the
supervisor, the subreaper above it (``dbtkd.subreaper``): ``exit_listeners`` hear of each exit
at once (the worker tells the supervisor, which kills them). ``PR_SET_PDEATHSIG = SIGKILL``
takes the children down with a worker killed by ``kill -9``; the supervisor then gets their
leftovers too. The environment is built per child from the worker's, without the daemon's own
variables; a secret reaches a child through a 0600 file (``secret_file``) or that child's own
environment, never its argv.

``Child.kill`` is synchronous (signals), so cancellation code can call it before awaiting
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

from dbtkd import proctree
from dbtkd.procstats import pid_alive
from dbtkd.units import SECONDS

# A SIGKILLed process is gone in milliseconds; longer means it is stuck in the kernel (a dead
# NFS mount), and waiting more would only hold up a stop that must finish in 2 s.
REAP_TIMEOUT = 1 * SECONDS
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# Module constants for reading; the branches test ``sys.platform`` itself so that mypy
# --platform win32 checks the Windows side (what it cannot narrow on a constant).
LINUX = sys.platform.startswith("linux")
# Variables that belong to the daemon (and systemd's hand-over to it), never to its children.
DAEMON_PREFIXES = ("DBTK_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")
# Credentials the worker might have inherited: a tool must use the ones of the connection it
# was started for, not whatever the user's login environment happened to hold.
CREDENTIAL_VARIABLES = frozenset({"PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE", "MYSQL_PWD"})

StdioTarget = int | IO[Any] | None

# Called on the event loop the moment any child started here exits. The worker adds one that
# asks the supervisor to kill what the child left behind (its orphans are the supervisor's now).
exit_listeners: set[Callable[[], None]] = set()


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
    if sys.platform == "win32":
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
            # Whatever the program starts stays in its subtree while it runs, even a process
            # whose parent died (a double fork, a ``setsid`` helper), so ``kill`` finds it.
            prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
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
        self._watch_exit()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def _watch_exit(self) -> None:
        """Call ``exit_listeners`` the moment the program exits (Linux: through a pidfd).

        Not ``process.wait()``: asyncio answers that only once the child's pipes have closed
        too, and a process the program left behind may hold them open for ever.
        """
        if not sys.platform.startswith("linux"):
            return
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:  # exited and already reaped
            _notify_exit()
            return
        except OSError:  # a kernel before 5.3: leftovers wait for the next exit or sweep
            return
        now = proctree.read(self.pid)
        if now is None or now.start_ticks != self.start_ticks:  # reaped, its pid reused
            os.close(pidfd)
            _notify_exit()
            return
        loop = asyncio.get_running_loop()

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            _notify_exit()

        loop.add_reader(pidfd, exited)

    def kill(self) -> None:
        """SIGKILL the program and everything it started: its descendants (in any group or
        session), every process of its group, and for a terminal every one of its session."""
        if sys.platform == "win32":  # the worker's job object takes its descendants at exit
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return
        if self.process.returncode is not None and is_running(self.pgid):
            # The leader was reaped and its pid is in use again: that is someone else now.
            return
        for proc in self._tree():
            proctree.kill(proc)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)

    def _tree(self) -> list[proctree.Proc]:
        """The processes to kill, from one read of ``/proc`` (Linux; elsewhere none)."""
        table = proctree.snapshot()
        found: dict[int, proctree.Proc] = {}
        leader = table.get(self.pid)
        if leader is not None and leader.start_ticks == self.start_ticks:
            # Still our program, not a reused pid. A subreaper: all it started is under it.
            found[self.pid] = leader
            found.update((proc.pid, proc) for proc in proctree.descendants(table, self.pid))
        for proc in table.values():
            # Its group (and session) id stays reserved while any member lives: still ours.
            if proc.pgrp == self.pgid or (self.session and proc.session == self.pid):
                found[proc.pid] = proc
        return list(found.values())

    async def wait(self) -> int:
        return await self.process.wait()

    async def kill_and_reap(self) -> int | None:
        """Kill it all, then collect the leader's exit status (within ``REAP_TIMEOUT``).

        The leader is our child and is reaped here; what it started passed to the supervisor
        when it died, which reaps it (Linux; elsewhere init does). Shielded: it runs to the
        end in cancelled code too.
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
    if sys.platform != "win32":
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


# -- /proc (Linux): is a pid still the process we started ------------------------------------


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), to tell it from a reused pid."""
    proc = proctree.read(pid)
    return proc.start_ticks if proc else None


def is_running(pid: int, ticks: int | None = None) -> bool:
    """True if ``pid`` is alive (not a zombie) and, when ``ticks`` is given, started then."""
    if LINUX and ticks is not None:
        proc = proctree.read(pid)
        return proc is not None and not proc.exited and proc.start_ticks == ticks
    return pid_alive(pid)


def _notify_exit() -> None:
    for listener in list(exit_listeners):
        listener()


def kill_stale_group(pgid: int, leader_ticks: int | None) -> bool:
    """Kill a group a previous worker left behind, if it is still the one it started.

    The leader must be alive with the start time recorded for it; a pid reused since by an
    unrelated program is never signalled. Returns True if a signal was sent.
    """
    if sys.platform == "win32" or not is_running(pgid, leader_ticks):
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
