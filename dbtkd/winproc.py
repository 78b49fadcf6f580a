"""The worker process on Windows: how it is started, what it inherits, how it is killed.

POSIX gives the worker its descriptors with ``pass_fds``, its own process group, and
``PR_SET_PDEATHSIG``. The Windows counterparts, used by ``dbtkd.spawn`` and
``dbtkd.workerhandle`` when ``sys.platform == "win32"``:

- **Inheritance.** Only the handles named in ``STARTUPINFO.lpAttributeList["handle_list"]``
  reach the worker (``close_fds=True`` with a handle list: ``subprocess`` adds the three standard
  handles itself). That is the write end of the reply pipe, passed as ``--reply-handle H``.
  The listening socket is never inherited: the supervisor calls ``socket.share(pid)`` after the
  spawn and sends the bytes on the worker's stdin (``dbtkd.sockshare``).
- **No window, no Ctrl-C.** ``CREATE_NO_WINDOW`` (no console flashes up for the worker of a
  ``dbtkd.exe`` built without one) and ``CREATE_NEW_PROCESS_GROUP`` (a Ctrl-C or Ctrl-Break in
  the supervisor's console is not the worker's business: the supervisor tells it to stop on its
  stdin, as on POSIX).
- **A job object per worker** with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``: when the supervisor
  dies, however it dies, Windows closes its handle to the job and kills the worker and every
  program the worker started (a dump tool, a shell) — the counterpart of the process group plus
  ``PR_SET_PDEATHSIG`` plus the subreaper. ``DIE_ON_UNHANDLED_EXCEPTION`` keeps a crashing worker
  from waiting on an error-report dialog nobody sees. Killing the worker is
  ``TerminateJobObject``: the whole tree at once, like ``killpg``.

Order of a spawn (``dbtkd.spawn``): create the job → ``CreateProcess`` → close our copy of the
inherited reply handle → assign the worker to the job → ``socket.share(pid)`` → write the
handshake. The worker starts no program before it has read the handshake, so nothing it
starts can escape the job. If the job cannot be created or assigned (a parent job that forbids
it, say), the worker runs without one: it still exits when the supervisor goes (its stdin
reaches end of file), only its programs would outlive a crashed supervisor; the log says so.

Every Win32 call sits behind one small module-level function (``_kernel32``, ``_popen``,
``_startupinfo`` ...), which the Linux tests replace with recording fakes
(``tests/daemon/test_winproc.py``); nothing here imports a Windows-only module at import time.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from ctypes import wintypes
from typing import Any

log = logging.getLogger("dbtkd.supervisor")

# winbase.h / winnt.h, spelled out so Linux tests see the same numbers.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
WORKER_CREATION_FLAGS = CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP
JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x00000400
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
WORKER_JOB_LIMITS = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9  # JobObjectExtendedLimitInformation
PIPE_NOWAIT = 0x00000001
# The exit status TerminateJobObject gives the worker and its programs: 128 + SIGKILL, so a
# killed worker reads the same in the log as on POSIX.
KILLED_EXIT_CODE = 137


# Fixed-width fields (wintypes.DWORD is a C long: 8 bytes on Linux), so the layout is Win64's
# wherever it is built, and tests/daemon/test_winproc.py can check it on Linux.
_DWORD = ctypes.c_uint32


class _IoCounters(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "ReadOperationCount",
            "WriteOperationCount",
            "OtherOperationCount",
            "ReadTransferCount",
            "WriteTransferCount",
            "OtherTransferCount",
        )
    ]


class _BasicLimits(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_longlong),
        ("PerJobUserTimeLimit", ctypes.c_longlong),
        ("LimitFlags", _DWORD),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", _DWORD),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", _DWORD),
        ("SchedulingClass", _DWORD),
    ]


class ExtendedLimits(ctypes.Structure):
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION (plain ctypes: it exists on Linux for the tests)."""

    _fields_ = [
        ("BasicLimitInformation", _BasicLimits),
        ("IoInfo", _IoCounters),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


# --------------------------------------------------------------------------------------------
# Seams: each one Win32 call, replaced by the Linux tests.


def _kernel32() -> Any:
    """kernel32 through ctypes (``WinDLL`` exists only on Windows, hence ``Any``)."""
    win: Any = ctypes
    return win.WinDLL("kernel32", use_last_error=True)


def _last_error() -> OSError:
    win: Any = ctypes
    error: OSError = win.WinError(win.get_last_error())
    return error


def _create_job(limits: int) -> int:
    """CreateJobObjectW + SetInformationJobObject: an anonymous job with ``limits``."""
    kernel32 = _kernel32()
    kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    job = kernel32.CreateJobObjectW(None, None)
    if not job:
        raise _last_error()
    info = ExtendedLimits()
    info.BasicLimitInformation.LimitFlags = limits
    if not kernel32.SetInformationJobObject(
        wintypes.HANDLE(job),
        JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
        ctypes.byref(info),
        ctypes.sizeof(info),
    ):
        error = _last_error()
        _close_handle(job)
        raise error
    return int(job)


def _assign(job: int, process_handle: int) -> None:
    if not _kernel32().AssignProcessToJobObject(
        wintypes.HANDLE(job), wintypes.HANDLE(process_handle)
    ):
        raise _last_error()


def _terminate(job: int, exit_code: int) -> None:
    if not _kernel32().TerminateJobObject(wintypes.HANDLE(job), exit_code):
        raise _last_error()


def _close_handle(handle: int) -> None:
    _kernel32().CloseHandle(wintypes.HANDLE(handle))


def _set_pipe_nowait(handle: int) -> None:
    """SetNamedPipeHandleState(PIPE_NOWAIT): anonymous pipes take it too; a write to a full
    pipe then returns at once instead of blocking."""
    mode = wintypes.DWORD(PIPE_NOWAIT)
    if not _kernel32().SetNamedPipeHandleState(
        wintypes.HANDLE(handle), ctypes.byref(mode), None, None
    ):
        raise _last_error()


def _osf_handle(fd: int) -> int:
    """The Win32 handle behind C runtime descriptor ``fd`` (``msvcrt.get_osfhandle``)."""
    import msvcrt

    handle: int = getattr(msvcrt, "get_osfhandle")(fd)  # noqa: B009 - Windows-only stub
    return handle


def _open_osf_handle(handle: int) -> int:
    """A C runtime descriptor for an inherited Win32 handle (``msvcrt.open_osfhandle``)."""
    import msvcrt

    fd: int = getattr(msvcrt, "open_osfhandle")(handle, os.O_WRONLY)  # noqa: B009 - as above
    return fd


def _set_inheritable(handle: int) -> None:
    getattr(os, "set_handle_inheritable")(handle, True)  # noqa: B009 - Windows only


def _startupinfo(handles: Sequence[int]) -> Any:
    """A STARTUPINFO whose attribute list lets exactly ``handles`` be inherited."""
    info: Any = getattr(subprocess, "STARTUPINFO")()  # noqa: B009 - Windows only
    info.lpAttributeList = {"handle_list": list(handles)}
    return info


def _popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, **kwargs)


# --------------------------------------------------------------------------------------------


class Job:
    """The worker's job object: its whole process tree, killed together."""

    def __init__(self, handle: int) -> None:
        self.handle: int | None = handle

    def terminate(self) -> None:
        """Kill every process in the job (the worker and what it started)."""
        if self.handle is not None:
            try:
                _terminate(self.handle, KILLED_EXIT_CODE)
            except OSError as exc:
                log.warning("could not terminate the worker's job object: %s", exc)

    def close(self) -> None:
        """Let go of the job (after the worker exited: closing kills what is left in it)."""
        if self.handle is not None:
            _close_handle(self.handle)
            self.handle = None


def start_worker(
    argv_for: Callable[[str, int], list[str]], reply_write_fd: int, env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], Job | None]:
    """Start the worker on Windows; ``argv_for(flag, value)`` builds its command line.

    Returns the process and its job (None if the job could not be set up; see the module
    docstring). The caller still closes ``reply_write_fd``.
    """
    reply_handle = _osf_handle(reply_write_fd)
    _set_inheritable(reply_handle)
    try:
        job: Job | None = Job(_create_job(WORKER_JOB_LIMITS))
    except OSError as exc:
        log.warning("no job object for the worker (%s): its programs could outlive a crash", exc)
        job = None
    try:
        popen = _popen(
            argv_for("--reply-handle", reply_handle),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=os.path.expanduser("~"),
            close_fds=True,
            startupinfo=_startupinfo([reply_handle]),
            creationflags=WORKER_CREATION_FLAGS,
        )
    except BaseException:
        if job is not None:
            job.close()
        raise
    if job is not None:
        try:
            _assign(job.handle or 0, int(getattr(popen, "_handle")))  # noqa: B009
        except OSError as exc:
            log.warning("could not put the worker in its job object (%s): running without", exc)
            job.close()
            job = None
    return popen, job


def make_nonblocking(fd: int) -> None:
    """Writes to the pipe behind ``fd`` never block (the worker's stdin: orders)."""
    try:
        _set_pipe_nowait(_osf_handle(fd))
    except OSError as exc:
        log.warning("orders to the worker may block: %s", exc)


def reply_fd_from_handle(handle: int) -> int:
    """In the worker: the descriptor for the reply handle named by ``--reply-handle``."""
    return _open_osf_handle(handle)
