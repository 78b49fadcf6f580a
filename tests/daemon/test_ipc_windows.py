"""The Windows control transport, run on Linux through its seams.

Every Win32 call in ``dbtkd.ipc._windows`` is a module-level function; these tests replace
them with a small fake kernel and check what the module asks Windows for (the DACL, the pipe
flags, the error mapping) and what it does with the answers. The server's accept loop runs
for real on the asyncio loop, with socket pairs standing in for connected pipe instances.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dbtkd import paths
from dbtkd.ipc import _windows as win

SID = "S-1-5-21-1004336348-1177238915-682003330-1001"
PIPE = r"\\.\pipe\db-toolkit-" + SID + "-0123456789ab"
DESCRIPTOR = 0x5D5D  # the fake address _convert_sddl hands out


def win_error(code: int) -> OSError:
    """An OSError as ``_winapi`` raises it on Windows: the Win32 code in ``winerror``."""
    exc = OSError(f"[WinError {code}]")
    exc.winerror = code  # type: ignore[attr-defined]
    return exc


class FakePipe:
    """A server pipe instance; once "connected" it carries one end of a socket pair."""

    def __init__(self, handle: int, log: list[tuple[str, int]]) -> None:
        self.handle = handle
        self.closed = False
        self.server_end: Any = None
        self._log = log

    def fileno(self) -> int:
        return self.handle

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._log.append(("close", self.handle))
            if self.server_end is not None:
                self.server_end.close()


class FakeKernel:
    """Stands in for CreateNamedPipe, ConnectNamedPipe and the pipe transport."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.log: list[tuple[str, int]] = []
        self.pipes: list[FakePipe] = []
        self.freed: list[int] = []
        self.sddl: list[str] = []
        self.create_errors: list[OSError] = []  # raised, in order, by the next creations
        self.accept_errors: list[OSError] = []
        self.waiting: asyncio.Queue[tuple[FakePipe, asyncio.Future[FakePipe]]] = asyncio.Queue()

    def convert_sddl(self, sddl: str) -> int:
        self.sddl.append(sddl)
        return DESCRIPTOR

    def create_named_pipe(
        self,
        name: str,
        open_mode: int,
        pipe_mode: int,
        max_instances: int,
        out_buffer_bytes: int,
        in_buffer_bytes: int,
        default_timeout_ms: int,
        security_attributes: int,
    ) -> int:
        if self.create_errors:
            raise self.create_errors.pop(0)
        attributes = win._SecurityAttributes.from_address(security_attributes)
        handle = 100 + len(self.created)
        self.created.append(
            {
                "name": name,
                "open_mode": open_mode,
                "pipe_mode": pipe_mode,
                "max_instances": max_instances,
                "buffers": (out_buffer_bytes, in_buffer_bytes),
                "descriptor": attributes.lpSecurityDescriptor,
                "inherit": attributes.bInheritHandle,
                "length": attributes.nLength,
            }
        )
        self.log.append(("create", handle))
        return handle

    def pipe_handle(self, handle: int) -> FakePipe:
        pipe = FakePipe(handle, self.log)
        self.pipes.append(pipe)
        return pipe

    def accept_pipe(self, loop: asyncio.AbstractEventLoop, pipe: FakePipe) -> Any:
        future: asyncio.Future[FakePipe] = loop.create_future()
        if self.accept_errors:
            future.set_exception(self.accept_errors.pop(0))
        else:
            self.waiting.put_nowait((pipe, future))
        return future

    def make_transport(
        self, loop: asyncio.AbstractEventLoop, pipe: FakePipe, protocol: Any, extra: Any
    ) -> None:
        # A connected socket behaves like a connected byte-mode pipe for the stream layer.
        loop.create_task(loop.connect_accepted_socket(lambda: protocol, pipe.server_end))

    async def client_connects(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A client opens the pipe: the pending ConnectNamedPipe completes."""
        import socket

        pipe, future = await asyncio.wait_for(self.waiting.get(), 5)
        server_end, client_end = socket.socketpair()
        pipe.server_end = server_end
        future.set_result(pipe)
        return await asyncio.open_connection(sock=client_end)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()
    monkeypatch.setattr(win, "_token_user_sid", lambda: SID)
    monkeypatch.setattr(win, "_convert_sddl", fake.convert_sddl)
    monkeypatch.setattr(win, "_local_free", fake.freed.append)
    monkeypatch.setattr(win, "_create_named_pipe", fake.create_named_pipe)
    monkeypatch.setattr(win, "_pipe_handle", fake.pipe_handle)
    monkeypatch.setattr(win, "_require_proactor", lambda loop: None)
    monkeypatch.setattr(win, "_accept_pipe", fake.accept_pipe)
    monkeypatch.setattr(win, "_make_pipe_transport", fake.make_transport)
    return fake


class Echo:
    """An ``on_connect`` that upper-cases one line back and records the peer uid."""

    def __init__(self) -> None:
        self.peers: list[int | None] = []

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: int | None
    ) -> None:
        self.peers.append(peer)
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()


async def roundtrip(kernel: FakeKernel, line: bytes) -> bytes:
    reader, writer = await kernel.client_connects()
    writer.write(line)
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return reply


# ---------------------------------------------------------------------------------------------
# Server


@pytest.mark.anyio
async def test_pipe_dacl_grants_system_and_the_user_only(kernel: FakeKernel) -> None:
    server = await win.start_server(PIPE, Echo())
    server.close()
    await server.wait_closed()

    assert kernel.sddl == [f"D:P(A;;GA;;;SY)(A;;GA;;;{SID})"]
    first = kernel.created[0]
    assert first["descriptor"] == DESCRIPTOR
    assert first["length"] == ctypes.sizeof(win._SecurityAttributes)
    assert first["inherit"] == 0  # no pipe handle leaks into the worker or its tools


@pytest.mark.anyio
async def test_only_the_first_instance_claims_the_name(kernel: FakeKernel) -> None:
    echo = Echo()
    server = await win.start_server(PIPE, echo)
    assert await roundtrip(kernel, b"one\n") == b"ONE\n"
    assert await roundtrip(kernel, b"two\n") == b"TWO\n"
    server.close()
    await server.wait_closed()

    assert len(kernel.created) == 3  # the first, then one replacement per accepted client
    first, *later = kernel.created
    assert first["open_mode"] == (
        win.PIPE_ACCESS_DUPLEX | win.FILE_FLAG_OVERLAPPED | win.FILE_FLAG_FIRST_PIPE_INSTANCE
    )
    for instance in later:
        assert instance["open_mode"] == win.PIPE_ACCESS_DUPLEX | win.FILE_FLAG_OVERLAPPED
        assert not instance["open_mode"] & win.FILE_FLAG_FIRST_PIPE_INSTANCE
    for instance in kernel.created:
        assert instance["name"] == PIPE
        assert instance["pipe_mode"] & win.PIPE_REJECT_REMOTE_CLIENTS
        assert instance["pipe_mode"] == win.PIPE_REJECT_REMOTE_CLIENTS  # byte mode, blocking
        assert instance["max_instances"] == win.PIPE_UNLIMITED_INSTANCES
        assert instance["descriptor"] == DESCRIPTOR
    assert echo.peers == [None, None]  # the DACL decides; there is no peer uid to check


@pytest.mark.anyio
async def test_the_name_is_never_released_while_serving(kernel: FakeKernel) -> None:
    # ERROR_NO_DATA (a client that left before the accept completed) arrives as BrokenPipeError.
    kernel.accept_errors.append(BrokenPipeError(errno.EPIPE, "gone"))
    server = await win.start_server(PIPE, Echo())
    assert await roundtrip(kernel, b"still here\n") == b"STILL HERE\n"
    server.close()
    await server.wait_closed()

    # The replacement (101) exists before the abandoned instance (100) is closed, and the
    # next one (102) before the accepted instance (101) is handed to on_connect.
    assert kernel.log.index(("create", 101)) < kernel.log.index(("close", 100))
    assert kernel.log[:3] == [("create", 100), ("create", 101), ("close", 100)]
    assert ("create", 102) in kernel.log


@pytest.mark.anyio
async def test_an_odd_accept_failure_is_reported_and_serving_goes_on(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(win, "ACCEPT_ERROR_PAUSE_SECONDS", 0)
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    kernel.accept_errors.append(win_error(64))  # ERROR_NETNAME_DELETED
    server = await win.start_server(PIPE, Echo())
    assert await roundtrip(kernel, b"after\n") == b"AFTER\n"
    server.close()
    await server.wait_closed()

    assert [c["message"] for c in reported] == ["control pipe accept failed"]
    assert kernel.log[:3] == [("create", 100), ("create", 101), ("close", 100)]


@pytest.mark.anyio
async def test_close_stops_accepting_and_frees_the_descriptor(kernel: FakeKernel) -> None:
    server = await win.start_server(PIPE, Echo())
    await roundtrip(kernel, b"x\n")
    assert server.is_serving()
    server.close()
    await server.wait_closed()

    assert not server.is_serving()
    listening = kernel.pipes[-1]
    assert listening.closed
    assert kernel.freed == [DESCRIPTOR]


@pytest.mark.anyio
async def test_a_squatted_name_fails_start_up_loudly(kernel: FakeKernel) -> None:
    kernel.create_errors.append(win_error(win.ERROR_ACCESS_DENIED))
    with pytest.raises(FileExistsError, match="control pipe already exists") as caught:
        await win.start_server(PIPE, Echo())
    assert caught.value.filename == PIPE
    assert kernel.freed == [DESCRIPTOR]


@pytest.mark.anyio
async def test_at_the_instance_cap_the_server_waits_for_a_free_slot(
    kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(win, "INSTANCE_RETRY_FIRST_SECONDS", 0.001)
    server = await win.start_server(PIPE, Echo())
    kernel.create_errors.extend([win_error(win.ERROR_PIPE_BUSY)] * 3)
    assert await roundtrip(kernel, b"capped\n") == b"CAPPED\n"
    assert await roundtrip(kernel, b"again\n") == b"AGAIN\n"
    server.close()
    await server.wait_closed()


@pytest.mark.anyio
async def test_an_unexpected_create_failure_is_reported_and_stops_the_server(
    kernel: FakeKernel,
) -> None:
    reported: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    server = await win.start_server(PIPE, Echo())
    kernel.create_errors.append(win_error(1450))  # ERROR_NO_SYSTEM_RESOURCES
    _reader, writer = await kernel.client_connects()
    await asyncio.wait_for(server.wait_closed(), 5)
    writer.close()

    assert [c["message"] for c in reported] == ["control pipe server stopped"]
    assert not server.is_serving()
    assert kernel.freed == [DESCRIPTOR]
    server.close()  # still safe


@pytest.mark.anyio
async def test_a_pipe_server_cannot_adopt_a_socket(kernel: FakeKernel) -> None:
    import socket

    with socket.socket() as sock, pytest.raises(ValueError, match="cannot adopt a socket"):
        await win.start_server(PIPE, Echo(), sock=sock)


@pytest.mark.anyio
async def test_the_server_needs_the_proactor_loop() -> None:
    with pytest.raises(RuntimeError, match="Proactor event loop"):
        win._require_proactor(asyncio.get_running_loop())


# ---------------------------------------------------------------------------------------------
# SID


def test_current_user_sid_comes_from_the_process_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(win, "_token_user_sid", lambda: SID)
    assert win.current_user_sid() == SID


def test_a_malformed_sid_never_reaches_the_dacl(monkeypatch: pytest.MonkeyPatch) -> None:
    injected = "S-1-5-21-1)(A;;GA;;;WD"
    with pytest.raises(ValueError, match="expected a SID"):
        win._pipe_sddl(injected)
    monkeypatch.setattr(win, "_token_user_sid", lambda: injected)
    with pytest.raises(OSError, match="unexpected user SID"):
        win.current_user_sid()


# ---------------------------------------------------------------------------------------------
# Client: connecting


def test_connect_maps_file_not_found_to_file_not_found_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_pipe(name: str) -> int:
        raise win_error(win.ERROR_FILE_NOT_FOUND)

    monkeypatch.setattr(win, "_open_pipe", no_pipe)
    with pytest.raises(FileNotFoundError) as caught:
        win.connect(PIPE, 1.0)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == PIPE


def test_connect_waits_for_a_busy_pipe_then_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[int | OSError] = [win_error(win.ERROR_PIPE_BUSY), 42]
    waits: list[int] = []

    def open_pipe(name: str) -> int:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    monkeypatch.setattr(win, "_open_pipe", open_pipe)
    monkeypatch.setattr(win, "_wait_named_pipe", lambda name, ms: waits.append(ms))
    channel = win.connect(PIPE, 2.0)
    assert channel._handle == 42
    assert channel.gettimeout() == 2.0
    assert len(waits) == 1
    assert 1 <= waits[0] <= 2000


def test_connect_refuses_when_every_instance_stays_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(name: str) -> int:
        raise win_error(win.ERROR_PIPE_BUSY)

    def wait_named_pipe(name: str, ms: int) -> None:
        import time

        time.sleep(ms / 1000)
        raise win_error(win.ERROR_SEM_TIMEOUT)

    monkeypatch.setattr(win, "_open_pipe", busy)
    monkeypatch.setattr(win, "_wait_named_pipe", wait_named_pipe)
    with pytest.raises(ConnectionRefusedError, match="stayed busy") as caught:
        win.connect(PIPE, 0.05)
    assert caught.value.errno == errno.ECONNREFUSED


def test_connect_reports_a_server_that_left_while_we_waited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def busy(name: str) -> int:
        raise win_error(win.ERROR_PIPE_BUSY)

    def gone(name: str, ms: int) -> None:
        raise win_error(win.ERROR_FILE_NOT_FOUND)

    monkeypatch.setattr(win, "_open_pipe", busy)
    monkeypatch.setattr(win, "_wait_named_pipe", gone)
    with pytest.raises(FileNotFoundError):
        win.connect(PIPE, 1.0)


def test_connect_maps_access_denied_to_permission_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(name: str) -> int:
        raise win_error(win.ERROR_ACCESS_DENIED)

    monkeypatch.setattr(win, "_open_pipe", denied)
    with pytest.raises(PermissionError, match="not ours"):
        win.connect(PIPE, 1.0)


def test_the_client_opens_the_pipe_for_identification_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []
    fake = type("FakeWinapi", (), {"CreateFile": staticmethod(lambda *a: calls.append(a) or 7)})
    monkeypatch.setattr(win, "_winapi", lambda: fake)
    assert win._open_pipe(PIPE) == 7
    (name, access, share, security, disposition, flags, template) = calls[0]
    assert (security, template) == (0, 0)  # no SECURITY_ATTRIBUTES, no template
    assert (name, access, share, disposition) == (
        PIPE,
        win.GENERIC_READ | win.GENERIC_WRITE,
        0,
        win.OPEN_EXISTING,
    )
    assert flags == (
        win.FILE_FLAG_OVERLAPPED | win.SECURITY_SQOS_PRESENT | win.SECURITY_IDENTIFICATION
    )


# ---------------------------------------------------------------------------------------------
# Client: overlapped reads and writes against a fake _winapi


class FakeOverlapped:
    def __init__(self, result: tuple[int, int], buffer: bytes = b"") -> None:
        self.event = 555
        self.result = result
        self.buffer = buffer
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def GetOverlappedResult(self, wait: bool) -> tuple[int, int]:  # noqa: N802 - Win32 name
        assert wait, "the operation must be settled before the buffer is released"
        return self.result

    def getbuffer(self) -> bytes:
        return self.buffer


class FakeWinapi:
    def __init__(self) -> None:
        self.reads: list[Any] = []  # (ov, err) or an OSError to raise, per ReadFile
        self.writes: list[Any] = []
        self.waits: list[int] = []
        self.wait_result = win.WAIT_OBJECT_0
        self.closed: list[int] = []
        self.written: list[bytes] = []

    def ReadFile(self, handle: int, size: int, overlapped: bool) -> Any:  # noqa: N802
        assert overlapped
        answer = self.reads.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    def WriteFile(self, handle: int, data: bytes, overlapped: bool) -> Any:  # noqa: N802
        assert overlapped
        self.written.append(data)
        answer = self.writes.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    def WaitForMultipleObjects(self, handles: list[int], wait_all: bool, ms: int) -> int:  # noqa: N802
        assert handles == [555]
        assert not wait_all
        self.waits.append(ms)
        return self.wait_result

    def CloseHandle(self, handle: int) -> None:  # noqa: N802
        self.closed.append(handle)


@pytest.fixture
def winapi(monkeypatch: pytest.MonkeyPatch) -> FakeWinapi:
    fake = FakeWinapi()
    monkeypatch.setattr(win, "_winapi", lambda: fake)
    return fake


def test_recv_returns_what_one_overlapped_read_brought(winapi: FakeWinapi) -> None:
    winapi.reads.append((FakeOverlapped((6, 0), b"hello\n"), win.ERROR_IO_PENDING))
    channel = win.PipeChannel(9, 1.5)
    assert channel.recv(4096) == b"hello\n"
    assert winapi.waits == [1500]


def test_recv_times_out_and_cancels_the_read(winapi: FakeWinapi) -> None:
    ov = FakeOverlapped((0, win.ERROR_OPERATION_ABORTED))
    winapi.reads.append((ov, win.ERROR_IO_PENDING))
    winapi.wait_result = win.WAIT_TIMEOUT
    channel = win.PipeChannel(9, 0.25)
    with pytest.raises(TimeoutError):
        channel.recv(10)
    assert ov.cancelled
    assert winapi.waits == [250]


def test_bytes_that_arrive_as_the_timeout_fires_are_kept(winapi: FakeWinapi) -> None:
    ov = FakeOverlapped((3, 0), b"abc")
    winapi.reads.append((ov, win.ERROR_IO_PENDING))
    winapi.wait_result = win.WAIT_TIMEOUT
    assert win.PipeChannel(9, 0.1).recv(10) == b"abc"
    assert ov.cancelled


@pytest.mark.parametrize("code", [win.ERROR_BROKEN_PIPE, win.ERROR_PIPE_NOT_CONNECTED])
def test_recv_reports_a_closed_server_as_end_of_stream(winapi: FakeWinapi, code: int) -> None:
    winapi.reads.append(win_error(code))
    winapi.reads.append((FakeOverlapped((0, code)), win.ERROR_IO_PENDING))
    channel = win.PipeChannel(9, None)
    assert channel.recv(10) == b""
    assert channel.recv(10) == b""
    assert winapi.waits == [win.INFINITE]  # settimeout(None) waits forever


def test_a_read_completed_at_once_is_not_waited_for(winapi: FakeWinapi) -> None:
    winapi.reads.append((FakeOverlapped((2, 0), b"ok"), 0))
    assert win.PipeChannel(9, 1.0).recv(2) == b"ok"
    assert winapi.waits == []


def test_sendall_writes_until_everything_is_written(winapi: FakeWinapi) -> None:
    winapi.writes.append((FakeOverlapped((4, 0)), win.ERROR_IO_PENDING))
    winapi.writes.append((FakeOverlapped((6, 0)), 0))
    win.PipeChannel(9, 1.0).sendall(b"0123456789")
    assert winapi.written == [b"0123456789", b"456789"]


def test_sendall_to_a_departed_daemon_raises_broken_pipe(winapi: FakeWinapi) -> None:
    winapi.writes.append(win_error(win.ERROR_NO_DATA))
    with pytest.raises(BrokenPipeError):
        win.PipeChannel(9, 1.0).sendall(b"x")


def test_sendall_times_out_like_a_socket(winapi: FakeWinapi) -> None:
    ov = FakeOverlapped((0, win.ERROR_OPERATION_ABORTED))
    winapi.writes.append((ov, win.ERROR_IO_PENDING))
    winapi.wait_result = win.WAIT_TIMEOUT
    with pytest.raises(TimeoutError):
        win.PipeChannel(9, 0.01).sendall(b"x")
    assert ov.cancelled


def test_a_closed_channel_closes_its_handle_once_and_refuses_io(winapi: FakeWinapi) -> None:
    with win.PipeChannel(9, 1.0) as channel:
        pass
    channel.close()
    assert winapi.closed == [9]
    with pytest.raises(OSError, match="closed") as caught:
        channel.recv(1)
    assert caught.value.errno == errno.EBADF


def test_settimeout_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        win.PipeChannel(9, None).settimeout(-1)


# ---------------------------------------------------------------------------------------------
# remove_stale


def test_remove_stale_is_a_no_op_when_nobody_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pipe(name: str) -> int:
        raise win_error(win.ERROR_FILE_NOT_FOUND)

    monkeypatch.setattr(win, "_open_pipe", no_pipe)
    win.remove_stale(PIPE)


def test_remove_stale_refuses_a_live_daemon(
    monkeypatch: pytest.MonkeyPatch, winapi: FakeWinapi
) -> None:
    monkeypatch.setattr(win, "_open_pipe", lambda name: 77)
    with pytest.raises(FileExistsError, match="live daemon answers"):
        win.remove_stale(PIPE)
    assert winapi.closed == [77]  # the probe connection was closed


def test_remove_stale_refuses_a_busy_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(name: str) -> int:
        raise win_error(win.ERROR_PIPE_BUSY)

    def timeout(name: str, ms: int) -> None:
        raise win_error(win.ERROR_SEM_TIMEOUT)

    monkeypatch.setattr(win, "_open_pipe", busy)
    monkeypatch.setattr(win, "_wait_named_pipe", timeout)
    monkeypatch.setattr(win, "STALE_PROBE_SECONDS", 0.0)
    with pytest.raises(FileExistsError, match="all instances busy"):
        win.remove_stale(PIPE)


# ---------------------------------------------------------------------------------------------
# The pipe name and the import


def test_pipe_name_follows_the_documented_format() -> None:
    home = "C:\\Users\\Ann\\Profile"
    name = paths.windows_pipe_name(home, SID)

    # Windows rules on any host: normcase lowercases, so case variants are one profile.
    digest = hashlib.sha256(b"c:\\users\\ann\\profile").hexdigest()[:12]
    assert name == rf"\\.\pipe\db-toolkit-{SID}-{digest}"
    assert re.fullmatch(r"\\\\\.\\pipe\\db-toolkit-S-1-5-21(-\d+)+-[0-9a-f]{12}", name)
    assert paths.windows_pipe_name("c:\\users\\ann\\PROFILE", SID) == name
    assert paths.windows_pipe_name("C:\\Users\\Ann", SID) != name
    assert paths.windows_pipe_name(home, "S-1-5-21-1-2-3-1002") != name


def test_windows_runtime_paths_use_the_pipe_name(tmp_path: Path) -> None:
    runtime = paths.runtime_paths({}, str(tmp_path), platform="win32", sid=SID)
    assert runtime.control_socket == paths.windows_pipe_name(str(tmp_path), SID)


def test_the_module_imports_on_linux_without_windows_modules_or_asyncio() -> None:
    # A fresh interpreter: dbtkctl imports this on Windows and must start fast.
    code = (
        "import sys, dbtkd.ipc._windows, dbtkd.sockshare\n"
        "bad = {'_winapi', 'msvcrt', '_overlapped', 'asyncio'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
