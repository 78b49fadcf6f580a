"""The blocking control client, and starting a daemon on demand.

``Client.call`` opens a connection to the control socket, sends one request and returns the
result, raising ``NotRunning`` when nothing listens and ``DaemonError`` for an error reply.
``ensure_running`` is the race-free start: under the client-side ``spawn.lock`` it probes,
spawns a detached ``dbtkd`` if needed and waits until the worker answers, so fifty racing
callers start exactly one daemon. When nothing answers at this caller's control socket, the
record next to the data (``dbtkd.live.json``) names the socket of a daemon started with another
runtime dir (a login item vs an ssh session), which is then used instead of starting a second.
Stdlib plus the stdlib-only modules of ``dbtkd``, because this is ``dbtkctl``'s hot path.
"""

from __future__ import annotations

import os
import sys
import time

from dbtkd import ipc, protocol
from dbtkd.errors import DaemonError, DbtkError, NotRunning, ProtocolMismatch, StartFailed
from dbtkd.paths import RuntimePaths, data_paths
from dbtkd.systemd import HANDOVER_ENV_PREFIXES
from dbtkd.units import SECONDS

TYPE_CHECKING = False  # typing costs dbtkctl ~2 ms at start-up; only annotations need it
if TYPE_CHECKING:
    from typing import Any


CONNECT_TIMEOUT = 2 * SECONDS
# ``port`` on a starting daemon waits inside the daemon for the worker (up to 30 s there).
REPLY_TIMEOUT = 35 * SECONDS
START_TIMEOUT = 40 * SECONDS
BUSY_RETRIES = 8
SPAWN_POLL = 0.01 * SECONDS
LOG_LINES_ON_FAILURE = 5
START_ERRORS_FILE = "dbtkd.start.err"
MAX_START_ERRORS_BYTES = 64 * 1024
# After our dbtkd exits at start, how long the data dir's owner may take to record its socket.
OWNER_GRACE = 2 * SECONDS


class Client:
    """One profile's daemon, as seen over its control socket."""

    def __init__(self, runtime: RuntimePaths, *, timeout: float = REPLY_TIMEOUT) -> None:
        self.runtime = runtime
        self.timeout = timeout
        self.daemon: dict[str, Any] = {}
        self._ids = 0

    def call(self, cmd: str, **args: Any) -> Any:
        """Send one request; return its ``result``. Retries ``busy`` with backoff."""
        delay = 0.02
        for _attempt in range(BUSY_RETRIES):
            try:
                return self._call_once(cmd, args)
            except DaemonError as exc:
                if exc.code != protocol.BUSY:
                    raise
                time.sleep(delay)
                delay *= 2
        return self._call_once(cmd, args)

    def _call_once(self, cmd: str, args: dict[str, Any]) -> Any:
        channel = self._connect()
        try:
            self._ids += 1
            channel.settimeout(self.timeout)
            channel.sendall(protocol.encode_request(self._ids, cmd, **args))
            message = _read_message(channel)
        finally:
            channel.close()
        return self._result(message)

    def _connect(self) -> ipc.Channel:
        try:
            return self._connect_to(self.runtime.control_socket)
        except NotRunning:
            other = self._live_socket()
            if other is None:
                raise
        channel = self._connect_to(other)
        self.runtime.control_socket = other  # the rest of this command talks to it too
        return channel

    def _live_socket(self) -> str | None:
        """The control socket recorded next to the data by the daemon that owns it, when it
        is not ours (the daemon was started with another runtime dir)."""
        from dbtkd.state import read_json

        try:
            live = read_json(data_paths(home=self.runtime.home).live_file) or {}
        except OSError:
            return None
        other = live.get("control_socket")
        if isinstance(other, str) and other != self.runtime.control_socket:
            return other
        return None

    def _connect_to(self, address: str) -> ipc.Channel:
        try:
            return ipc.connect(address, CONNECT_TIMEOUT)
        except ipc.UntrustedEndpoint as exc:
            # Not "not running": nothing may be started or sent until the user looks.
            raise DbtkError(str(exc)) from None
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"dbtkd is not running (no daemon at {address})") from exc
        except PermissionError as exc:
            raise DbtkError(
                f"permission denied opening {address}: that daemon belongs "
                "to another user; run dbtkctl as that user or use your own --home"
            ) from exc
        except OSError as exc:
            raise NotRunning(f"cannot reach dbtkd at {address}: {exc}") from exc

    def _result(self, message: dict[str, Any]) -> Any:
        self.daemon = message.get("daemon") or {}
        if self.daemon.get("protocol", protocol.PROTOCOL_VERSION) != protocol.PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"daemon is newer ({self.daemon.get('version')}) and speaks control protocol "
                f"{self.daemon.get('protocol')}; this dbtkctl speaks "
                f"{protocol.PROTOCOL_VERSION}. Use the newer dbtkctl."
            )
        if message.get("ok"):
            return message.get("result")
        error = message.get("error") or {}
        raise DaemonError(str(error.get("code")), str(error.get("message")))

    def stream(self, cmd: str, **args: Any) -> tuple[Any, StreamReader]:
        """Send a streaming request; return its result and an iterator over event messages."""
        channel = self._connect()
        self._ids += 1
        channel.settimeout(self.timeout)
        channel.sendall(protocol.encode_request(self._ids, cmd, **args))
        reader = StreamReader(channel)
        result = self._result(reader.next_message())
        channel.settimeout(None)
        return result, reader


class StreamReader:
    """Event lines after a streaming reply; closes the channel when exhausted."""

    def __init__(self, channel: ipc.Channel) -> None:
        self._channel = channel
        self._buffer = b""

    def next_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self._channel.recv(65536)
            if not chunk:
                self._channel.close()
                raise ConnectionError("the daemon closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return protocol.decode_message(line)

    def __iter__(self) -> StreamReader:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return self.next_message()
        except ConnectionError:
            raise StopIteration from None


def _read_message(channel: ipc.Channel) -> dict[str, Any]:
    buffer = b""
    while b"\n" not in buffer:
        chunk = channel.recv(65536)
        if not chunk:
            raise NotRunning("the daemon closed the connection before answering (stopping?)")
        buffer += chunk
    return protocol.decode_message(buffer.partition(b"\n")[0])


def daemon_command() -> list[str]:
    """How to run ``dbtkd`` from here: the frozen sibling executable, or this interpreter."""
    if getattr(sys, "frozen", False):
        name = "dbtkd.exe" if sys.platform == "win32" else "dbtkd"
        return [os.path.join(os.path.dirname(sys.executable), name)]
    return [sys.executable, "-m", "dbtkd"]


def start_errors_path(runtime: RuntimePaths) -> str:
    """Where a daemon started here writes its stderr: the reason it could not start, in its
    own words, which the log may not have (a bad ``dbtkd.toml`` stops it before the log is
    open). Emptied once a start succeeds."""
    return os.path.join(runtime.run_dir, START_ERRORS_FILE)


def last_start_errors(runtime: RuntimePaths) -> list[str]:
    """What a daemon started here last wrote to its stderr (empty if nothing, or unreadable)."""
    try:
        with open(start_errors_path(runtime), encoding="utf-8", errors="replace") as file:
            text = file.read(MAX_START_ERRORS_BYTES)
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines() if line.strip()][-LOG_LINES_ON_FAILURE:]


def _start_errors_file(runtime: RuntimePaths) -> int | None:
    """The stderr file for a daemon about to start, emptied (None if the run dir is unusable:
    the daemon then says why in the log, or nowhere, as before)."""
    try:
        os.makedirs(runtime.run_dir, mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        return os.open(start_errors_path(runtime), flags, 0o600)
    except OSError:
        return None


def spawn_daemon(runtime: RuntimePaths, extra_args: list[str]) -> Any:
    """Start a detached ``dbtkd`` (new session, stdin and stdout to /dev/null, stderr to the
    start errors file, cwd /); return the Popen."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(HANDOVER_ENV_PREFIXES)}
    argv = [*daemon_command(), *extra_args]
    if runtime.home is not None:
        argv += ["--home", runtime.home]
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
    else:
        kwargs["start_new_session"] = True
    errors = _start_errors_file(runtime)
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if errors is None else errors,
            cwd=os.path.abspath(os.sep),
            env=env,
            close_fds=True,
            **kwargs,
        )
    finally:
        if errors is not None:
            os.close(errors)


def start_failure(runtime: RuntimePaths, reason: str, *, exited: bool = False) -> StartFailed:
    """A ``StartFailed`` whose message has the reason (with the daemon's own last words if it
    exited), the log path and the last log lines."""
    from dbtkd.logfile import tail

    said = last_start_errors(runtime) if exited else []
    if said:
        reason = f"{reason}: {said[-1].removeprefix('dbtkd: ')}"
        if len(said) > 1:
            reason += "\ndbtkd's output:\n" + "\n".join("  " + line for line in said)
    log_file = data_paths(home=runtime.home).log_file
    try:
        lines = tail(log_file, LOG_LINES_ON_FAILURE)
        shown = "\n".join("  " + line for line in lines) or "  (the log is empty)"
    except OSError as exc:
        shown = f"  (the log cannot be read: {exc.strerror or exc})"
    return StartFailed(f"{reason}\nlog: {log_file}\nlast log lines:\n{shown}")


def _forget_start_errors(runtime: RuntimePaths) -> None:
    """A start succeeded: what an earlier one said is no longer the state of things."""
    try:
        with open(start_errors_path(runtime), "r+b") as file:
            file.truncate(0)
    except OSError:
        pass


def ensure_running(
    client: Client, spawn_args: list[str], *, timeout: float = START_TIMEOUT
) -> tuple[dict[str, Any], bool]:
    """The ``port`` result of a ready daemon, starting one if needed; and whether we did."""
    try:
        return _port(client), False
    except NotRunning:
        pass
    from dbtkd import lock

    runtime = client.runtime
    fd = lock.acquire_blocking(runtime.spawn_lock, timeout)
    if fd is None:
        raise start_failure(
            runtime,
            f"timed out after {timeout:.0f} s waiting for another "
            f"client to start dbtkd ({runtime.spawn_lock})",
        )
    try:
        try:
            return _port(client), False  # another caller started it while we waited
        except NotRunning:
            pass
        proc = spawn_daemon(runtime, spawn_args)
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        while time.monotonic() < deadline:
            code = proc.poll()
            try:
                result = _port(client)
            except NotRunning:
                if code is not None:
                    # It may have found the data dir owned by a daemon started with another
                    # runtime dir, which records its socket only once that listens.
                    exited_at = exited_at or time.monotonic()
                    owner = _data_dir_owner(runtime)
                    if owner in (None, proc.pid) or time.monotonic() - exited_at > OWNER_GRACE:
                        raise start_failure(
                            runtime, f"dbtkd exited with status {code} while starting", exited=True
                        ) from None
            else:
                _forget_start_errors(runtime)
                return result, True
            time.sleep(SPAWN_POLL)
        raise start_failure(runtime, f"dbtkd did not become ready within {timeout:.0f} s")
    finally:
        lock.release(fd)


def _data_dir_owner(runtime: RuntimePaths) -> int | None:
    """The live daemon recorded next to the data, if any (a hint: the lock is the truth, but
    taking it to look would make a starting daemon fail)."""
    from dbtkd.state import read_json

    try:
        pid = int((read_json(data_paths(home=runtime.home).live_file) or {}).get("pid") or 0)
        if pid > 0:
            os.kill(pid, 0)
            return pid
    except (OSError, ValueError, TypeError):
        pass
    return None


def _port(client: Client) -> dict[str, Any]:
    try:
        result: dict[str, Any] = client.call("port")
    except DaemonError as exc:
        if exc.code == protocol.NOT_READY:
            raise start_failure(client.runtime, str(exc)) from None
        raise
    return result


def upgrade_if_older(
    client: Client, result: dict[str, Any], *, allow_development: bool
) -> tuple[dict[str, Any], dict[str, str] | None]:
    """If the running daemon is older than this client, hand it over to our version.

    Returns the ``port`` result to use and ``{from, to}`` when a handoff happened. A newer or
    equal daemon is used as it is (the protocol already matched). Development builds hand
    over only when asked (``--takeover``). A failed upgrade leaves the old daemon serving; the
    reason goes to stderr and the old daemon's result is returned.
    """
    from dbtkd import __version__

    running = str(result.get("version"))
    if running == __version__:
        return result, None  # the common case: nothing more to import or ask
    from dbtkd import handoff

    if not handoff.is_newer(__version__, running):
        return result, None
    if not allow_development and (
        handoff.is_development(__version__) or handoff.is_development(running)
    ):
        print(
            f"dbtkctl: dbtkd {running} is running and this is {__version__}, a development "
            "build: pass --takeover to upgrade it",
            file=sys.stderr,
        )
        return result, None
    if sys.platform == "win32":
        print(
            f"dbtkctl: dbtkd {running} is running; on Windows an upgrade is a restart: "
            "dbtkctl stop, then dbtkctl start",
            file=sys.stderr,
        )
        return result, None
    status = client.call("status")
    extra = ["--takeover"]
    if status.get("idle_exit") is not None:
        extra += ["--idle-exit", str(status["idle_exit"])]
    proc = spawn_daemon(client.runtime, extra)
    deadline = time.monotonic() + handoff.VERDICT_TIMEOUT + 5
    while time.monotonic() < deadline:
        code = proc.poll()
        try:
            hello = client.call("hello")
        except NotRunning:
            hello = {}
        if hello.get("pid") == proc.pid and hello.get("state") == "running":
            return _port(client), {"from": running, "to": __version__}
        if code is not None:
            break
        time.sleep(SPAWN_POLL)
    try:
        reason = client.call("status").get("handoff_error") or "see dbtkctl logs"
    except DbtkError:
        reason = "see dbtkctl logs"
    print(f"dbtkctl: upgrade failed: {reason}; still using dbtkd {running}", file=sys.stderr)
    return _port(client), None
