"""Helpers for tests that run the real daemon, worker and CLI as processes.

Every daemon a test starts is registered with a ``ProcessReaper`` that kills it (by pid, and
only pids we started or that our daemon reported as its worker) when the test ends, pass or
fail. Waiting is always ``wait_until(condition, deadline)``, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# DBTK_BIN_DIR=dist/db-toolkit-backend runs the tests against the frozen build instead of the
# console scripts next to this interpreter (tests/frozen/ and the frozen pass of .ci/run).
BIN = Path(os.environ.get("DBTK_BIN_DIR") or Path(sys.executable).parent).absolute()
DBTKD = str(BIN / "dbtkd")
DBTKCTL = str(BIN / "dbtkctl")
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(") ", 1)[1].split()[1])


def comm(pid: int) -> str:
    """The process's name (``ps``'s COMM): ``dbtkd-zygote`` and ``dbtkd-worker`` for the fork
    server's processes, whose command line is the supervisor's."""
    return Path(f"/proc/{pid}/comm").read_text().strip()


def connections_held(pid: int, port: int) -> int:
    """How many TCP connections to 127.0.0.1:``port`` the process ``pid`` holds open (accepted,
    in any state but closed: a client's close leaves the server's side open until it closes)."""
    inodes = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] != "0A":  # not the listening socket (TCP_LISTEN)
            inodes.add(f"socket:[{fields[9]}]")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
    return count


def daemon_processes(home: Path) -> list[int]:
    """Pids of every live dbtkd process (supervisor, worker, zygote) serving ``home``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        is_dbtkd = any(part.endswith(b"dbtkd") for part in cmdline[:3])
        if is_dbtkd and (
            str(home).encode() in b"\0".join(cmdline) or f"DBTK_HOME={home}\0".encode() in environ
        ):
            found.append(int(entry))
    return found


def health(port: int) -> int:
    """The status of ``GET /health`` on 127.0.0.1:``port`` (the one route without a token)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBTK_", "NOTIFY_SOCKET"))}
    env["DBTK_HOME"] = str(home)
    # Saved passwords stay in the test's own data dir, never in the developer's OS keyring;
    # the keyring tests pass DBTK_PASSWORD_STORE="" and a private Secret Service.
    env["DBTK_PASSWORD_STORE"] = "file"
    env.update(extra)
    return env


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_ctl(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    user: str | None = None,
) -> Result:
    argv = [DBTKCTL, *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    proc = subprocess.run(
        argv,
        env=env or env_for(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Daemon:
    """A daemon started in the foreground by a test; stopped by the reaper."""

    home: Path
    proc: subprocess.Popen[str]
    port: int
    token: str
    env: dict[str, str]
    reaper: ProcessReaper

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ctl(self, *args: str, **kwargs: Any) -> Result:
        return run_ctl(self.home, *args, env=self.env, **kwargs)

    def status(self) -> dict[str, Any]:
        return control_call(self.home, "status")

    @property
    def worker_pid(self) -> int:
        pid = self.status()["worker_pid"]
        self.reaper.track(pid)
        return int(pid)

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: bool = True,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = dict(headers or {})
            if token:
                sent.setdefault("Authorization", f"Bearer {self.token}")
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()


def control_socket(home: Path) -> str:
    from dbtkd.paths import runtime_paths

    return runtime_paths({}, str(home)).control_socket


def control_connect(home: Path, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(control_socket(home))
    except BaseException:
        sock.close()
        raise
    return sock


def read_line(sock: socket.socket, buffer: bytearray | None = None) -> dict[str, Any]:
    buffer = bytearray() if buffer is None else buffer
    while b"\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; partial {bytes(buffer)[:200]!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def assert_closed(sock: socket.socket) -> None:
    """The peer closed: EOF, or a reset when it closed with our request still unread."""
    sock.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


def control_call(home: Path, cmd: str, **args: Any) -> Any:
    with control_connect(home) as sock:
        sock.sendall(json.dumps({"id": 1, "cmd": cmd, **args}).encode() + b"\n")
        reply = read_line(sock)
    assert reply["ok"], reply
    return reply["result"]


def wait_for_restarts(home: Path, restarts: dict[str, int], timeout: float = 15) -> dict[str, Any]:
    """Wait until one status snapshot shows ``restarts`` and a running (new) worker."""
    return wait_until(
        lambda: (
            (s := control_call(home, "status"))["restarts"] == restarts
            and s["state"] == "running"
            and s
        ),
        timeout=timeout,
        what=f"restarts {restarts} and a running worker",
    )


@dataclass
class ProcessReaper:
    pids: set[int] = field(default_factory=set)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def track(self, pid: int | None) -> None:
        if pid:
            self.pids.add(int(pid))

    def track_home(self, home: Path) -> None:
        """Track the daemon (and worker) a CLI call started in ``home``, from its state file."""
        state = read_state(home)
        if state:
            self.track(state.get("pid"))
            self.track(state.get("worker_pid"))

    def start(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 30,
        loaded: bool = True,
    ) -> Daemon:
        """Start ``dbtkd`` in the foreground and return once it is ready and, unless ``loaded``
        is False, once its worker has loaded the app: a worker answers /health (and so is
        ready) while it still imports the app (dbtkd.app.loading); tests start from the app."""
        env = env or env_for(home)
        proc = subprocess.Popen(
            [DBTKD, *(["--port-range", "0"] if "--port-range" not in args else []), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        line = _readline_with_deadline(proc, timeout)
        assert line.startswith("BACKEND_PORT:"), (
            line,
            proc.stderr.read() if proc.poll() is not None and proc.stderr else "",
        )
        port = int(line.split(":")[1])
        token = control_call(home, "port")["token"]
        daemon = Daemon(home, proc, port, token, env, self)
        worker = daemon.status()["worker_pid"]
        self.track(worker)
        if loaded:
            # Waits for the app. Connection: close, or the worker would keep its side of it
            # open until Hypercorn's keep-alive timeout (5 s), even after the client closed.
            code, _, body = daemon.http(
                "GET", "/api/v1/status", headers={"Connection": "close"}, timeout=timeout
            )
            assert code == 200, body
            if Path("/proc/net/tcp").exists():
                # And the worker has closed its side: tests that count its descriptors
                # start from a worker holding none for the probe or this request.
                wait_until(
                    lambda: connections_held(worker, port) == 0,
                    timeout,
                    what=f"worker {worker} to close its connections",
                )
        return daemon

    def spawn(
        self, home: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``dbtkd`` without waiting for it to be ready (it may never be)."""
        proc = subprocess.Popen(
            [DBTKD, *(["--port-range", "0"] if "--port-range" not in args else []), *args],
            env=env or env_for(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        for pid in self.pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def read_state(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((home / "run" / "dbtkd.json").read_text())
    except (OSError, ValueError):
        return None


def _readline_with_deadline(proc: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"dbtkd printed nothing within {timeout} s")
    return proc.stdout.readline().strip()


@contextlib.contextmanager
def reaping() -> Iterator[ProcessReaper]:
    reaper = ProcessReaper()
    try:
        yield reaper
    finally:
        reaper.cleanup()
