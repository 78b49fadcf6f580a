"""The Windows worker spawn, run on Linux through its seams (``dbtkd.winproc``).

Each Win32 call is a module-level function; here a recording fake stands in for each, and
``CreateProcess`` becomes a real Linux process: the handle list becomes ``pass_fds``, so the
"inherited" reply handle really reaches the child, which echoes what the supervisor sent it
down that handle. The tests check what is asked of Windows (flags, handle list, job limits),
in which order (job → spawn → close our copy → assign → share → handshake) and what happens
when a call fails. The supervisor's pieces that differ on Windows (pipe threads instead of
``connect_read_pipe``, the job instead of ``killpg``, ``signal.signal`` instead of
``add_signal_handler``) run for real with their switch flipped.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from dbtkd import sockshare, spawn, winproc, worker, workerhandle
from dbtkd.supervisor import install_stop_signals

SHARED = b"WSAPROTOCOL_INFOW bytes"
WORKER_ARGV = spawn.worker_argv  # the real one (the fakes start a stand-in)
JOB = 0x1B0B

# The stand-in worker: its reply descriptor comes from ``--reply-handle`` (the fake handle is
# the descriptor number itself); it echoes the two handshake lines there and exits.
ECHO_WORKER = textwrap.dedent(
    """
    import os, sys
    fd = int(sys.argv[sys.argv.index("--reply-handle") + 1])
    lines = [sys.stdin.buffer.readline() for _ in range(2)]
    os.write(fd, b"".join(lines))
    """
)


class FakeWindows:
    """Records each Win32 call in order; ``fail`` names calls that raise OSError."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail or set()
        self.popen_kwargs: dict[str, Any] = {}
        self.processes: list[subprocess.Popen[bytes]] = []

    def _record(self, name: str, detail: Any = None) -> None:
        self.calls.append((name, detail))
        if name in self.fail:
            raise OSError(5, f"{name} failed (fake)")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(spawn, "_WINDOWS", True)
        monkeypatch.setattr(sockshare, "_WINDOWS", True)
        monkeypatch.setattr(winproc, "_osf_handle", lambda fd: fd)
        monkeypatch.setattr(winproc, "_set_inheritable", self.set_inheritable)
        monkeypatch.setattr(winproc, "_create_job", self.create_job)
        monkeypatch.setattr(winproc, "_assign", lambda job, h: self._record("assign", (job, h)))
        monkeypatch.setattr(
            winproc, "_terminate", lambda job, code: self._record("terminate", (job, code))
        )
        monkeypatch.setattr(winproc, "_close_handle", lambda h: self._record("close_handle", h))
        monkeypatch.setattr(winproc, "_set_pipe_nowait", lambda h: self._record("pipe_nowait", h))
        monkeypatch.setattr(winproc, "_startupinfo", lambda handles: {"handle_list": list(handles)})
        monkeypatch.setattr(winproc, "_popen", self.popen)
        monkeypatch.setattr(sockshare, "_share", self.share)
        monkeypatch.setattr(spawn, "worker_argv", self.argv)

    @staticmethod
    def argv(flag: str, value: int) -> list[str]:
        return [sys.executable, "-c", ECHO_WORKER, flag, str(value)]

    def set_inheritable(self, handle: int) -> None:
        self._record("set_inheritable", handle)
        os.set_inheritable(handle, True)

    def create_job(self, limits: int) -> int:
        self._record("create_job", limits)
        return JOB

    def share(self, sock: socket.socket, pid: int) -> bytes:
        self._record("share", pid)
        return SHARED

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        handles = kwargs["startupinfo"]["handle_list"]
        # Our copy of the inherited handle is still open while CreateProcess runs.
        assert all(os.get_inheritable(h) for h in handles)
        self._record("popen", {"flags": kwargs["creationflags"], "handles": handles})
        self.popen_kwargs = kwargs
        linux = {k: v for k, v in kwargs.items() if k not in ("startupinfo", "creationflags")}
        linux["close_fds"] = True
        proc = subprocess.Popen(argv, pass_fds=handles, **linux)
        self.processes.append(proc)
        # Fake process handle for AssignProcessToJobObject, as subprocess keeps it on Windows.
        proc._handle = 0x4444  # type: ignore[attr-defined]
        return proc


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


@pytest.fixture
def make_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make_fake(fail={...})``: a FakeWindows, installed; its processes are reaped after."""
    made: list[FakeWindows] = []

    def make(fail: set[str] | None = None) -> FakeWindows:
        windows = FakeWindows(fail)
        windows.install(monkeypatch)
        made.append(windows)
        return windows

    yield make
    for proc in (proc for windows in made for proc in windows.processes):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def fake(make_fake: Any) -> FakeWindows:
    windows: FakeWindows = make_fake()
    return windows


def _reply(spawned: spawn.Spawned) -> bytes:
    with os.fdopen(spawned.reply_fd, "rb") as replies:
        return replies.read()


SETTINGS: Any = {"port": 1, "version": "0"}


def test_the_worker_is_started_with_no_window_its_own_group_and_only_the_reply_handle(
    fake: FakeWindows, listener: socket.socket
) -> None:
    spawned = spawn.spawn(listener, {"PATH": os.environ["PATH"]}, "tok", SETTINGS)
    popen_call = dict(fake.calls)["popen"]
    assert popen_call["flags"] == winproc.CREATE_NO_WINDOW | winproc.CREATE_NEW_PROCESS_GROUP
    assert popen_call["flags"] == 0x08000200
    (handle,) = popen_call["handles"]  # the reply pipe's write end, nothing else
    assert fake.popen_kwargs["close_fds"] is True  # only the handle list is inherited
    assert "pass_fds" not in fake.popen_kwargs
    assert "process_group" not in fake.popen_kwargs
    assert WORKER_ARGV("--reply-handle", handle)[-3:] == ["_worker", "--reply-handle", str(handle)]
    # The child got the handshake on stdin and wrote it back through the inherited handle.
    token, handshake = _reply(spawned).splitlines()
    assert token == b"tok"
    sent = json.loads(handshake)
    assert sent["socket"] == {"share": base64.b64encode(SHARED).decode()}
    assert sent["probe"] == spawned.probe_nonce
    # Our copy of the handle was closed after the spawn: only the child holds the write end.
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(handle)
    assert spawned.process.wait(timeout=10) == 0


def test_the_order_is_job_spawn_assign_share_then_orders_never_block(
    fake: FakeWindows, listener: socket.socket
) -> None:
    spawned = spawn.spawn(listener, {"PATH": os.environ["PATH"]}, "tok", SETTINGS)
    _reply(spawned)
    pid = spawned.process.pid
    assert fake.names() == [
        "set_inheritable",
        "create_job",
        "popen",
        "assign",
        "share",
        "pipe_nowait",
    ]
    calls = dict(fake.calls)
    assert calls["create_job"] == winproc.WORKER_JOB_LIMITS
    assert calls["create_job"] & winproc.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE == 0x2000
    assert calls["create_job"] & winproc.JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION == 0x400
    assert calls["assign"] == (JOB, 0x4444)
    assert calls["share"] == pid  # shared for this worker's pid, after it exists
    assert calls["pipe_nowait"] == spawned.process.stdin.fileno()  # type: ignore[union-attr]
    assert spawned.job is not None
    assert spawned.job.handle == JOB
    spawned.process.wait(timeout=10)


@pytest.mark.parametrize(
    ("failing", "logged"),
    [
        ("create_job", "no job object for the worker"),
        ("assign", "could not put the worker in its job object"),
    ],
)
def test_without_a_job_object_the_worker_still_starts_and_the_log_says_what_is_lost(
    make_fake: Any,
    listener: socket.socket,
    caplog: pytest.LogCaptureFixture,
    failing: str,
    logged: str,
) -> None:
    fake = make_fake({failing})
    with caplog.at_level(logging.WARNING, "dbtkd.supervisor"):
        spawned = spawn.spawn(listener, {"PATH": os.environ["PATH"]}, "tok", SETTINGS)
    assert _reply(spawned).startswith(b"tok\n")
    assert spawned.job is None
    assert logged in caplog.text
    names = fake.names()
    if failing == "create_job":
        assert "assign" not in names
    else:  # the job made for it is closed again
        assert names[names.index("assign") + 1] == "close_handle"
    spawned.process.wait(timeout=10)


def test_a_failed_create_process_closes_the_job_and_every_pipe_end(
    make_fake: Any, listener: socket.socket
) -> None:
    fake = make_fake({"popen"})
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="popen failed"):
        spawn.spawn(listener, {}, "tok", SETTINGS)
    assert fake.names()[-1] == "close_handle"
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_failed_share_kills_the_worker_and_its_job_instead_of_leaving_it_waiting(
    make_fake: Any, listener: socket.socket
) -> None:
    fake = make_fake({"share"})
    with pytest.raises(OSError, match="share failed"):
        spawn.spawn(listener, {"PATH": os.environ["PATH"]}, "tok", SETTINGS)
    assert fake.names()[-3:] == ["share", "terminate", "close_handle"]
    assert dict(fake.calls)["terminate"] == (JOB, winproc.KILLED_EXIT_CODE)
    (proc,) = fake.processes
    assert proc.returncode is not None  # killed and reaped, not left behind


def test_the_job_layout_is_win64s_jobobject_extended_limit_information() -> None:
    # 144 bytes on 64-bit Windows, LimitFlags at offset 16 (winnt.h).
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(winproc.ExtendedLimits) == 144
    assert winproc._BasicLimits.LimitFlags.offset == 16


def test_the_worker_reads_its_reply_handle_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[int] = []
    monkeypatch.setattr(winproc, "_open_osf_handle", lambda h: opened.append(h) or 9)
    assert worker._reply_fd(["--reply-handle", "1234"]) == 9
    assert opened == [1234]
    assert worker._reply_fd(["--reply-fd", "7"]) == 7
    for bad in (["--reply-handle"], ["--reply-handle", "-1"], ["--reply-fd", "x"], ["--x", "1"]):
        assert worker._reply_fd(bad) is None


def test_on_windows_threads_read_the_workers_pipes_to_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workerhandle, "_WINDOWS", True)

    async def main() -> bytes:
        read_fd, write_fd = os.pipe()
        reader = asyncio.StreamReader()
        await workerhandle._connect_reader(reader, os.fdopen(read_fd, "rb"))
        payload = b"".join(b"line %d\n" % i for i in range(20_000))  # > one pipe buffer
        await asyncio.get_running_loop().run_in_executor(None, os.write, write_fd, payload)
        os.close(write_fd)
        return await asyncio.wait_for(reader.read(), 10)

    assert asyncio.run(main()) == b"".join(b"line %d\n" % i for i in range(20_000))


def test_on_windows_killing_the_worker_terminates_its_job_and_sends_no_signal_to_a_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminated: list[tuple[int, int]] = []
    closed: list[int] = []
    monkeypatch.setattr(winproc, "_terminate", lambda job, code: terminated.append((job, code)))
    monkeypatch.setattr(winproc, "_close_handle", closed.append)
    monkeypatch.setattr(workerhandle, "_WINDOWS", True)
    monkeypatch.setattr(workerhandle.os, "killpg", lambda *a: pytest.fail("killpg on Windows"))

    read_fd, write_fd = os.pipe()
    popen = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    os.close(write_fd)

    async def main() -> int:
        handle = await workerhandle.WorkerHandle.adopt(
            spawn.Spawned(popen, popen.stdin, popen.stdout, read_fd, "nonce", winproc.Job(JOB)),
            lambda: None,
        )
        handle.kill()
        code = await asyncio.wait_for(handle.proc.wait(), 10)
        await asyncio.wait_for(asyncio.gather(*handle.pumps), 10)  # the threads saw EOF
        handle.release()
        return code

    assert asyncio.run(main()) == -signal.SIGKILL  # on Linux the fake job left it to kill()
    assert terminated == [(JOB, winproc.KILLED_EXIT_CODE)]
    assert closed == [JOB]


class ProactorLikeLoop(asyncio.SelectorEventLoop):
    """The Windows Proactor loop's one difference that matters here."""

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        raise NotImplementedError


def test_without_loop_signal_handlers_a_real_sigint_still_requests_a_stop() -> None:
    loop = ProactorLikeLoop()
    received: list[int] = []
    stopped = asyncio.Event()

    def request_stop(signum: int) -> None:
        received.append(signum)
        stopped.set()

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        installed = install_stop_signals(loop, request_stop)
        assert installed == [signal.SIGTERM, signal.SIGINT]  # SIGBREAK: Windows only

        async def main() -> None:
            os.kill(os.getpid(), signal.SIGINT)
            await stopped.wait()

        loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        loop.close()
    assert received == [signal.SIGINT]


def test_a_unix_loop_takes_the_stop_signals_itself() -> None:
    loop = asyncio.new_event_loop()
    set_by_hand: list[int] = []
    try:
        install_stop_signals(loop, lambda n: None, lambda n, h: set_by_hand.append(n))
        assert set_by_hand == []
        for signum in (signal.SIGTERM, signal.SIGINT):
            assert loop.remove_signal_handler(signum)
    finally:
        loop.close()
