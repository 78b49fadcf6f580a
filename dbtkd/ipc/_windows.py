"""Control transport over a Windows named pipe that only this user and SYSTEM may open.

asyncio's ``start_serving_pipe`` takes no security attributes, so the server here creates each
pipe instance itself, with the DACL ``D:P(A;;GA;;;SY)(A;;GA;;;<user SID>)``, claims the name with
``FILE_FLAG_FIRST_PIPE_INSTANCE`` (a squatter makes start-up fail loudly instead of receiving
our clients), refuses remote clients, and accepts connections through the Proactor loop's
overlapped ``ConnectNamedPipe``. The peer is not identified per connection: the DACL already
keeps other users out, so ``on_connect`` receives ``None`` as the peer uid.

The client (``connect``) is blocking and stdlib-only for ``dbtkctl``; its reads and writes are
overlapped so that ``settimeout`` works like a socket's. Every Win32 call sits behind one small
module-level function (``_create_named_pipe``, ``_open_pipe``, ``_token_user_sid`` ...) that the
Linux tests patch; nothing in this module imports a Windows-only module at import time.
"""

from __future__ import annotations

import ctypes
import errno
import math
import re
import time
from collections.abc import Awaitable, Callable
from ctypes import wintypes
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio
    import socket
    from types import TracebackType

# Win32 constants, spelled out here because ``_winapi`` exists only on Windows and the tests
# need the same numbers on Linux.
PIPE_ACCESS_DUPLEX = 0x00000003
FILE_FLAG_OVERLAPPED = 0x40000000
FILE_FLAG_FIRST_PIPE_INSTANCE = 0x00080000
PIPE_TYPE_BYTE = 0x00000000
PIPE_READMODE_BYTE = 0x00000000
PIPE_WAIT = 0x00000000
PIPE_REJECT_REMOTE_CLIENTS = 0x00000008
PIPE_UNLIMITED_INSTANCES = 255
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
OPEN_EXISTING = 3
# A client that opens with SECURITY_IDENTIFICATION lets the server learn who it is but never
# act as it, so a process squatting the pipe name cannot impersonate dbtkctl.
SECURITY_SQOS_PRESENT = 0x00100000
SECURITY_IDENTIFICATION = 0x00010000
INFINITE = 0xFFFFFFFF
WAIT_OBJECT_0 = 0x00000000
WAIT_TIMEOUT = 0x00000102
SDDL_REVISION_1 = 1
TOKEN_QUERY = 0x0008
TOKEN_USER_CLASS = 1  # TOKEN_INFORMATION_CLASS.TokenUser

ERROR_FILE_NOT_FOUND = 2
ERROR_ACCESS_DENIED = 5
ERROR_BROKEN_PIPE = 109
ERROR_SEM_TIMEOUT = 121
ERROR_INSUFFICIENT_BUFFER = 122
ERROR_PIPE_BUSY = 231
ERROR_NO_DATA = 232
ERROR_PIPE_NOT_CONNECTED = 233
ERROR_OPERATION_ABORTED = 995
ERROR_IO_PENDING = 997

# The other end is gone: a read reports end of stream, a write raises BrokenPipeError.
_DISCONNECTED = frozenset({ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED})

# One full control line (64 KiB, DESIGN §4) fits in the pipe's buffer in either direction.
PIPE_BUFFER_BYTES = 64 * 1024
# Only used by WaitNamedPipe(NMPWAIT_USE_DEFAULT_WAIT); our client always passes its own
# timeout, so 0 keeps the system default (50 ms).
PIPE_DEFAULT_TIMEOUT_MS = 0
# remove_stale's probe: the same half second the Unix side waits for a live daemon to answer.
STALE_PROBE_SECONDS = 0.5
# When all 255 instances are connected, CreateNamedPipe fails with ERROR_PIPE_BUSY until a
# client leaves; poll for a free slot starting fast and backing off to once a second.
INSTANCE_RETRY_FIRST_SECONDS = 0.01
INSTANCE_RETRY_MAX_SECONDS = 1.0
# After an unexpected accept error, pause before the next accept so a persistent fault costs a
# log line every tenth of a second rather than a busy loop.
ACCEPT_ERROR_PAUSE_SECONDS = 0.1

# Only a well-formed SID may reach the SDDL string and the pipe name; anything else could add
# access control entries (``)(A;;GA;;;WD)``) or path separators.
_SID_PATTERN = re.compile(r"S-1-\d+(?:-\d+)+")


class UntrustedEndpoint(PermissionError):
    """The control endpoint is not the user's own (never raised here: the pipe's DACL admits
    only the user, so another user's pipe cannot be opened in the first place)."""


class Channel(Protocol):
    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, size: int, /) -> bytes: ...
    def settimeout(self, value: float | None, /) -> None: ...
    def close(self) -> None: ...


class ControlServer(Protocol):
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


OnConnect = Callable[
    ["asyncio.StreamReader", "asyncio.StreamWriter", "int | None"], Awaitable[None]
]


class _Pipe(Protocol):
    """An ``asyncio.windows_utils.PipeHandle``: what the Proactor loop reads and writes."""

    def fileno(self) -> int: ...
    def close(self) -> None: ...


class _SecurityAttributes(ctypes.Structure):
    # SECURITY_ATTRIBUTES; plain ctypes types, so the structure exists on Linux for the tests.
    _fields_ = [
        ("nLength", wintypes.DWORD),
        ("lpSecurityDescriptor", wintypes.LPVOID),
        ("bInheritHandle", wintypes.BOOL),
    ]


# --------------------------------------------------------------------------------------------
# Seams: each one Win32 call (or one tightly bound group), patched by the Linux tests.


def _winapi() -> Any:
    """The ``_winapi`` module (Windows only), imported on first use."""
    import _winapi

    return _winapi


def _win32_ctypes() -> Any:
    """``ctypes`` typed loosely: ``WinDLL``, ``WinError`` and ``get_last_error`` exist only on
    Windows, so a type checker running on Linux must not look them up."""
    return ctypes


def _winerror(exc: OSError) -> int | None:
    return getattr(exc, "winerror", None)


def _last_error() -> OSError:
    win = _win32_ctypes()
    error: OSError = win.WinError(win.get_last_error())
    return error


def _token_user_sid() -> str:
    """The SID of this process's token user, as ``S-1-5-21-...`` (ctypes, advapi32)."""
    win = _win32_ctypes()
    kernel32 = win.WinDLL("kernel32", use_last_error=True)
    advapi32 = win.WinDLL("advapi32", use_last_error=True)
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    kernel32.LocalFree.argtypes = [wintypes.HLOCAL]
    kernel32.LocalFree.restype = wintypes.HLOCAL
    advapi32.OpenProcessToken.argtypes = [
        wintypes.HANDLE,
        wintypes.DWORD,
        ctypes.POINTER(wintypes.HANDLE),
    ]
    advapi32.GetTokenInformation.argtypes = [
        wintypes.HANDLE,
        ctypes.c_int,
        wintypes.LPVOID,
        wintypes.DWORD,
        ctypes.POINTER(wintypes.DWORD),
    ]
    advapi32.ConvertSidToStringSidW.argtypes = [wintypes.LPVOID, ctypes.POINTER(wintypes.LPWSTR)]

    token = wintypes.HANDLE()
    if not advapi32.OpenProcessToken(
        kernel32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)
    ):
        raise _last_error()
    try:
        needed = wintypes.DWORD()
        # The first call only reports the size of TOKEN_USER, which varies with the SID.
        advapi32.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(needed))
        if win.get_last_error() != ERROR_INSUFFICIENT_BUFFER:
            raise _last_error()
        buffer = ctypes.create_string_buffer(needed.value)
        if not advapi32.GetTokenInformation(
            token, TOKEN_USER_CLASS, buffer, needed, ctypes.byref(needed)
        ):
            raise _last_error()
        # TOKEN_USER starts with SID_AND_ATTRIBUTES, whose first field is the PSID.
        sid_pointer = ctypes.cast(buffer, ctypes.POINTER(wintypes.LPVOID))[0]
        text = wintypes.LPWSTR()
        if not advapi32.ConvertSidToStringSidW(sid_pointer, ctypes.byref(text)):
            raise _last_error()
        try:
            return str(text.value)
        finally:
            kernel32.LocalFree(ctypes.cast(text, wintypes.HLOCAL))
    finally:
        kernel32.CloseHandle(token)


def _convert_sddl(sddl: str) -> int:
    """A self-relative security descriptor for ``sddl``, LocalAlloc'd: free with ``_local_free``."""
    win = _win32_ctypes()
    advapi32 = win.WinDLL("advapi32", use_last_error=True)
    convert = advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW
    convert.argtypes = [
        wintypes.LPCWSTR,
        wintypes.DWORD,
        ctypes.POINTER(wintypes.LPVOID),
        ctypes.POINTER(wintypes.ULONG),
    ]
    descriptor = wintypes.LPVOID()
    if not convert(sddl, SDDL_REVISION_1, ctypes.byref(descriptor), None):
        raise _last_error()
    return int(descriptor.value or 0)


def _local_free(pointer: int) -> None:
    win = _win32_ctypes()
    kernel32 = win.WinDLL("kernel32", use_last_error=True)
    kernel32.LocalFree.argtypes = [wintypes.HLOCAL]
    kernel32.LocalFree.restype = wintypes.HLOCAL
    kernel32.LocalFree(pointer)


def _create_named_pipe(
    name: str,
    open_mode: int,
    pipe_mode: int,
    max_instances: int,
    out_buffer_bytes: int,
    in_buffer_bytes: int,
    default_timeout_ms: int,
    security_attributes: int,
) -> int:
    """``CreateNamedPipeW``; ``security_attributes`` is the address of a SECURITY_ATTRIBUTES.

    ``_winapi.CreateNamedPipe`` takes that pointer as an integer, so no hand-written ctypes
    prototype (and no risk of truncating a 64-bit HANDLE) is needed for the call itself.
    """
    handle: int = _winapi().CreateNamedPipe(
        name,
        open_mode,
        pipe_mode,
        max_instances,
        out_buffer_bytes,
        in_buffer_bytes,
        default_timeout_ms,
        security_attributes,
    )
    return handle


def _pipe_handle(handle: int) -> _Pipe:
    """Wrap a raw handle the way asyncio.windows_events does, so the Proactor can use it."""
    # importlib: the module raises ImportError off Windows and its stubs are Windows-only.
    import importlib

    pipe: _Pipe = importlib.import_module("asyncio.windows_utils").PipeHandle(handle)
    return pipe


def _require_proactor(loop: asyncio.AbstractEventLoop) -> None:
    if getattr(loop, "_proactor", None) is None:
        raise RuntimeError(
            "the Windows control server needs asyncio's Proactor event loop (the default on "
            f"Windows), got {type(loop).__name__}; do not install a selector event loop policy"
        )


def _accept_pipe(loop: Any, pipe: _Pipe) -> Awaitable[_Pipe]:
    """Overlapped ``ConnectNamedPipe`` on the IOCP: resolves once a client has connected."""
    accepted: Awaitable[_Pipe] = loop._proactor.accept_pipe(pipe)
    return accepted


def _make_pipe_transport(
    loop: Any, pipe: _Pipe, protocol: asyncio.Protocol, extra: dict[str, Any]
) -> asyncio.Transport:
    transport: asyncio.Transport = loop._make_duplex_pipe_transport(pipe, protocol, extra=extra)
    return transport


def _open_pipe(name: str) -> int:
    """``CreateFile`` on the pipe for overlapped reading and writing; raises OSError."""
    winapi = _winapi()
    handle: int = winapi.CreateFile(
        name,
        GENERIC_READ | GENERIC_WRITE,
        0,
        0,
        OPEN_EXISTING,
        FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
        0,
    )
    return handle


def _wait_named_pipe(name: str, timeout_ms: int) -> None:
    """``WaitNamedPipe``: block until an instance is free; ERROR_SEM_TIMEOUT when none was."""
    _winapi().WaitNamedPipe(name, timeout_ms)


def _close_handle(handle: int) -> None:
    _winapi().CloseHandle(handle)


def _wait_for_event(event: int, timeout_ms: int) -> bool:
    """True once ``event`` is signalled, False on timeout.

    WaitForMultipleObjects rather than WaitForSingleObject: in the main thread ``_winapi`` adds
    the Ctrl-C event to the wait, so ``dbtkctl`` stays interruptible.
    """
    result: int = _winapi().WaitForMultipleObjects([event], False, timeout_ms)
    if result == WAIT_TIMEOUT:
        return False
    if result != WAIT_OBJECT_0:
        raise OSError(f"WaitForMultipleObjects returned {result:#x}, expected 0 or WAIT_TIMEOUT")
    return True


def _transfer(start: Callable[[], tuple[Any, int]], timeout_ms: int, what: str) -> tuple[Any, int]:
    """Run one overlapped ReadFile/WriteFile started by ``start``: ``(overlapped, bytes moved)``.

    Waits at most ``timeout_ms``, then cancels (TimeoutError). BrokenPipeError when the other
    end is gone. The operation is always settled (``GetOverlappedResult(True)``) before this
    returns, even on Ctrl-C, so the kernel never writes into a buffer Python has freed.
    """
    timed_out = False
    try:
        ov, err = start()
        if err == ERROR_IO_PENDING:
            try:
                timed_out = not _wait_for_event(ov.event, timeout_ms)
            except BaseException:
                ov.cancel()
                ov.GetOverlappedResult(True)
                raise
            if timed_out:
                ov.cancel()
        transferred, error = ov.GetOverlappedResult(True)
    except OSError as exc:
        if _winerror(exc) in _DISCONNECTED:
            raise BrokenPipeError(errno.EPIPE, "the daemon closed the control pipe") from exc
        raise
    if error in _DISCONNECTED:
        raise BrokenPipeError(errno.EPIPE, "the daemon closed the control pipe")
    if error == ERROR_OPERATION_ABORTED:
        if timed_out:
            raise TimeoutError(errno.ETIMEDOUT, f"timed out {what} the control pipe")
        raise OSError(errno.EBADF, f"the control pipe was closed while {what} it")
    # Bytes that arrived between the timeout and the cancel count as a success, not a loss.
    return ov, int(transferred)


def _read(handle: int, size: int, timeout_ms: int) -> bytes:
    """Up to ``size`` bytes; ``b""`` once the server has closed; TimeoutError after the timeout."""
    try:
        ov, _ = _transfer(
            lambda: _winapi().ReadFile(handle, size, overlapped=True), timeout_ms, "reading from"
        )
    except BrokenPipeError:
        return b""
    # A byte-mode pipe never reports ERROR_MORE_DATA: one read returns what is there.
    return bytes(ov.getbuffer())


def _write(handle: int, data: bytes, timeout_ms: int) -> int:
    """Write ``data``; the number of bytes written. BrokenPipeError if the server is gone."""
    _, written = _transfer(
        lambda: _winapi().WriteFile(handle, data, overlapped=True), timeout_ms, "writing to"
    )
    return written


# --------------------------------------------------------------------------------------------
# Pure helpers.


def _milliseconds(seconds: float | None) -> int:
    """A Win32 timeout: INFINITE for None, else at least 1 ms (0 means "the default" to some
    calls) and below INFINITE."""
    if seconds is None:
        return INFINITE
    return min(max(1, math.ceil(seconds * 1000)), INFINITE - 1)


def _pipe_sddl(sid: str) -> str:
    """The pipe's security descriptor: a protected DACL granting all access to SYSTEM and to
    ``sid`` alone (no inherited entries, so Everyone, Administrators and the network get none)."""
    if not _SID_PATTERN.fullmatch(sid):
        raise ValueError(f"expected a SID like S-1-5-21-..., got {sid!r}")
    return f"D:P(A;;GA;;;SY)(A;;GA;;;{sid})"


def _pipe_open_mode(first: bool) -> int:
    mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED
    if first:
        # Fails with ERROR_ACCESS_DENIED if any process already created this name.
        mode |= FILE_FLAG_FIRST_PIPE_INSTANCE
    return mode


def _pipe_mode() -> int:
    # Byte mode, like a stream socket: the control protocol does its own newline framing.
    return PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS


def _security_attributes(sddl: str) -> _SecurityAttributes:
    """SECURITY_ATTRIBUTES for ``sddl``; free its descriptor with ``_release``."""
    attributes = _SecurityAttributes()
    attributes.nLength = ctypes.sizeof(_SecurityAttributes)
    attributes.lpSecurityDescriptor = _convert_sddl(sddl)
    # Pipe handles stay out of every child process (the worker, dump tools, shells).
    attributes.bInheritHandle = False
    return attributes


def _release(attributes: _SecurityAttributes) -> None:
    if attributes.lpSecurityDescriptor:
        _local_free(attributes.lpSecurityDescriptor)
        attributes.lpSecurityDescriptor = None


def _create_pipe_instance(name: str, first: bool, attributes: _SecurityAttributes) -> int:
    """One more instance of the pipe ``name``; the first one claims the name or fails."""
    try:
        return _create_named_pipe(
            name,
            _pipe_open_mode(first),
            _pipe_mode(),
            PIPE_UNLIMITED_INSTANCES,
            PIPE_BUFFER_BYTES,
            PIPE_BUFFER_BYTES,
            PIPE_DEFAULT_TIMEOUT_MS,
            ctypes.addressof(attributes),
        )
    except OSError as exc:
        if first and _winerror(exc) == ERROR_ACCESS_DENIED:
            raise FileExistsError(
                errno.EEXIST,
                "the control pipe already exists: another dbtkd serves this profile, or another "
                "program holds the name (dbtkctl status shows which)",
                name,
            ) from exc
        raise


# --------------------------------------------------------------------------------------------
# Server.


class PipeControlServer:
    """Accepts connections on a named pipe, one pre-created instance at a time.

    Owns the instance waiting for a client and the security descriptor; each connected
    instance is handed, as asyncio streams, to ``on_connect``, which owns it from then on.
    A replacement instance is always created before the previous one is handed off or closed,
    so this process holds the name for its whole life and nobody can squat it in between.
    At the 255-instance cap the newest client waits until another one leaves.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        address: str,
        on_connect: OnConnect,
        attributes: _SecurityAttributes,
    ) -> None:
        self._loop = loop
        self._address = address
        self._on_connect = on_connect
        self._attributes = attributes
        self._pipe: _Pipe | None = _pipe_handle(_create_pipe_instance(address, True, attributes))
        self._task: asyncio.Task[None] = loop.create_task(self._serve())

    @property
    def address(self) -> str:
        return self._address

    def is_serving(self) -> bool:
        return self._pipe is not None

    def close(self) -> None:
        """Stop accepting; connections already handed to ``on_connect`` stay open."""
        # Cancelling the task cancels the pending overlapped ConnectNamedPipe before the handle
        # under it is closed (the order asyncio's PipeServer.close uses).
        self._task.cancel()
        self._release_all()

    async def wait_closed(self) -> None:
        import asyncio

        if not self._task.done():
            await asyncio.wait([self._task])

    def _release_all(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        _release(self._attributes)

    async def _new_instance(self) -> _Pipe:
        import asyncio

        delay = INSTANCE_RETRY_FIRST_SECONDS
        while True:
            try:
                return _pipe_handle(_create_pipe_instance(self._address, False, self._attributes))
            except OSError as exc:
                if _winerror(exc) != ERROR_PIPE_BUSY:
                    raise
            # All 255 instances are connected; new clients wait in WaitNamedPipe meanwhile.
            await asyncio.sleep(delay)
            delay = min(delay * 2, INSTANCE_RETRY_MAX_SECONDS)

    async def _replace(self, pipe: _Pipe) -> None:
        fresh = await self._new_instance()
        self._pipe = fresh
        pipe.close()

    def _hand_off(self, pipe: _Pipe) -> None:
        import asyncio

        def client_connected(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> Awaitable[None]:
            # No peer uid: the DACL has already decided who may connect.
            return self._on_connect(reader, writer, None)

        reader = asyncio.StreamReader(loop=self._loop)
        protocol = asyncio.StreamReaderProtocol(reader, client_connected, loop=self._loop)
        try:
            _make_pipe_transport(self._loop, pipe, protocol, {"addr": self._address})
        except BaseException:
            pipe.close()
            raise

    async def _serve(self) -> None:
        import asyncio

        try:
            while self._pipe is not None:
                pipe = self._pipe
                try:
                    await _accept_pipe(self._loop, pipe)
                except BrokenPipeError:
                    # ERROR_NO_DATA: the client connected and left before we saw it.
                    await self._replace(pipe)
                    continue
                except OSError as exc:
                    if self._pipe is None:
                        return  # closed under us
                    self._loop.call_exception_handler(
                        {"message": "control pipe accept failed", "exception": exc}
                    )
                    await self._replace(pipe)
                    await asyncio.sleep(ACCEPT_ERROR_PAUSE_SECONDS)  # never spin on an error
                    continue
                self._pipe = await self._new_instance()
                self._hand_off(pipe)
        except Exception as exc:
            # Creating an instance failed for a reason other than the instance cap, so the
            # control endpoint is gone: say so loudly and let go of what is left.
            self._loop.call_exception_handler(
                {"message": "control pipe server stopped", "exception": exc}
            )
            self._release_all()


async def start_server(
    address: str, on_connect: OnConnect, sock: socket.socket | None = None
) -> PipeControlServer:
    """Serve the pipe ``address``; the caller closes the returned server.

    Raises FileExistsError if the name is already taken (another daemon or a squatter), and
    RuntimeError outside a Proactor event loop.
    """
    import asyncio

    if sock is not None:
        raise ValueError(
            "a named pipe server cannot adopt a socket: Windows has no socket activation or "
            "handoff, restart the daemon instead"
        )
    loop = asyncio.get_running_loop()
    _require_proactor(loop)
    attributes = _security_attributes(_pipe_sddl(current_user_sid()))
    try:
        return PipeControlServer(loop, address, on_connect, attributes)
    except BaseException:
        _release(attributes)
        raise


# --------------------------------------------------------------------------------------------
# Client.


class PipeChannel:
    """The client end of one control connection; the caller owns it and must close it.

    Blocking, with socket-like timeouts: every read and write is overlapped and waited for at
    most the timeout, then cancelled (TimeoutError). ``settimeout(None)`` waits forever.
    """

    def __init__(self, handle: int, timeout: float | None) -> None:
        self._handle: int | None = handle
        self._timeout = timeout

    def settimeout(self, value: float | None, /) -> None:
        if value is not None and value < 0:
            raise ValueError(f"expected a timeout >= 0 or None, got {value}")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def _live_handle(self) -> int:
        if self._handle is None:
            raise OSError(errno.EBADF, "the control pipe is closed")
        return self._handle

    def sendall(self, data: bytes, /) -> None:
        # One deadline for the whole buffer, as socket.sendall has had since Python 3.5.
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        view = memoryview(data)
        while view:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            written = _write(self._live_handle(), bytes(view), _milliseconds(remaining))
            view = view[written:]

    def recv(self, size: int, /) -> bytes:
        if size < 0:
            raise ValueError(f"expected a size >= 0, got {size}")
        if size == 0:
            return b""
        return _read(self._live_handle(), size, _milliseconds(self._timeout))

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _close_handle(handle)

    def __enter__(self) -> PipeChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _connect_client(name: str, timeout: float) -> int:
    """Open the pipe, waiting up to ``timeout`` seconds while every instance is busy.

    FileNotFoundError: nobody serves ``name``. ConnectionRefusedError: a server exists but no
    instance came free in time. PermissionError: the name is held by someone we may not talk to.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _open_pipe(name)
        except OSError as exc:
            code = _winerror(exc)
            if code == ERROR_FILE_NOT_FOUND:
                raise FileNotFoundError(errno.ENOENT, "no dbtkd serves this pipe", name) from exc
            if code == ERROR_ACCESS_DENIED:
                raise PermissionError(
                    errno.EACCES, "the control pipe exists but is not ours to open", name
                ) from exc
            if code != ERROR_PIPE_BUSY:
                raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED,
                f"every instance of the control pipe stayed busy for {timeout} s; retry",
                name,
            )
        try:
            _wait_named_pipe(name, _milliseconds(remaining))
        except OSError as exc:
            code = _winerror(exc)
            if code == ERROR_FILE_NOT_FOUND:
                # The server went away while we waited.
                raise FileNotFoundError(errno.ENOENT, "no dbtkd serves this pipe", name) from exc
            if code != ERROR_SEM_TIMEOUT:
                raise
            # Timed out: one last CreateFile, then the deadline check refuses.


def connect(address: str, timeout: float) -> PipeChannel:
    """Connect to the control pipe; raises FileNotFoundError or ConnectionRefusedError if no
    daemon can take the connection, like the Unix socket's ENOENT / ECONNREFUSED."""
    return PipeChannel(_connect_client(address, timeout), timeout)


def current_user_sid() -> str:
    """This process's user SID (``S-1-5-21-...``), for the pipe name and its DACL."""
    sid = _token_user_sid()
    if not _SID_PATTERN.fullmatch(sid):
        raise OSError(f"Windows reported an unexpected user SID {sid!r}")
    return sid


def remove_stale(address: str) -> None:
    """Named pipes vanish with the last handle to them, so nothing is ever left to remove.

    Raises FileExistsError when a live server holds the name (it answers, is busy, or denies
    us), exactly where the Unix side refuses to unlink a live socket.
    """
    try:
        connect(address, STALE_PROBE_SECONDS).close()
    except FileNotFoundError:
        return
    except ConnectionRefusedError as exc:
        raise FileExistsError(f"a live daemon holds {address} (all instances busy)") from exc
    except PermissionError as exc:
        raise FileExistsError(
            f"{address} is held by a process we may not open (another user's?); find and "
            "stop it, or use another --home"
        ) from exc
    except OSError:
        # Unknown state: creating the first instance will claim the name or fail loudly.
        return
    raise FileExistsError(f"a live daemon answers on {address}")
