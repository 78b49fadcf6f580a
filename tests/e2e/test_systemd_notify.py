"""sd_notify end to end: what dbtkd tells a ``Type=notify`` service manager, and from which pid.

The test plays systemd: it binds the datagram socket named by ``NOTIFY_SOCKET`` with
``SO_PASSCRED``, so each message arrives with the sender's pid (``SCM_CREDENTIALS``), which
is what ``NotifyAccess=main`` checks.
"""

from __future__ import annotations

import http.client
import select
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import (
    DBTKD,
    ProcessReaper,
    control_call,
    control_socket,
    env_for,
    read_state,
    wait_until,
)

CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass
class Message:
    pid: int
    fields: dict[str, str]
    state_file_written: bool = False  # when READY=1 arrived
    health_status: int | None = None  # GET /health, asked the moment READY=1 arrived


@dataclass
class NotifyListener:
    """Receives sd_notify datagrams on a thread, checking the daemon the moment READY=1 lands."""

    path: str
    home: Path
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
            pid = next(
                CREDENTIALS.unpack(cdata[: CREDENTIALS.size])[0]
                for level, kind, cdata in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            )
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            message = Message(pid, fields)
            if fields.get("READY") == "1":
                state = read_state(self.home)
                message.state_file_written = state is not None
                if state is not None:
                    message.health_status = _health(state["port"])
            self.messages.append(message)

    def find(self, key: str) -> list[Message]:
        return [m for m in self.messages if key in m.fields]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def _health(port: int) -> int | None:
    # A worker that is not serving yet would leave this waiting in the backlog: a short
    # timeout turns "READY=1 too early" into a visible failure instead of a slow pass.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@pytest.fixture
def listener(home: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(str(home / "notify.sock"), home)
    yield notify
    notify.close()


def test_ready_then_stopping_come_from_the_daemon_pid_and_ready_only_once_health_answers(
    home: Path, reaper: ProcessReaper, listener: NotifyListener
) -> None:
    daemon = reaper.start(home, env=env_for(home, NOTIFY_SOCKET=listener.path))
    (ready,) = wait_until(lambda: listener.find("READY"), what="READY=1")
    assert ready.pid == daemon.pid
    assert ready.fields["READY"] == "1"
    assert ready.state_file_written
    assert ready.health_status == 200
    assert f"127.0.0.1:{daemon.port}" in ready.fields["STATUS"]

    worker = daemon.worker_pid
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"LISTEN_", b"WATCHDOG_"))]

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0
    (stopping,) = wait_until(lambda: listener.find("STOPPING"), what="STOPPING=1")
    assert stopping.pid == daemon.pid
    assert stopping.fields["STOPPING"] == "1"
    assert all(m.pid == daemon.pid for m in listener.messages)


def test_a_worker_that_never_answers_health_never_gets_ready_sent(
    home: Path, reaper: ProcessReaper, listener: NotifyListener
) -> None:
    env = env_for(home, NOTIFY_SOCKET=listener.path, DBTK_TEST_FAULTS="crash_on_start")
    proc = subprocess.Popen(
        [DBTKD, "--port-range", "0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    reaper.procs.append(proc)

    # The supervisor creates its control socket before the first worker, so once the file
    # is there every status call connects.
    wait_until(lambda: Path(control_socket(home)).exists(), what="the control socket")
    wait_until(
        lambda: control_call(home, "status")["state"] == "failed",
        timeout=60,
        interval=0.05,
        what="the daemon to give up on its worker",
    )
    assert listener.find("READY") == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    (stopping,) = wait_until(lambda: listener.find("STOPPING"), what="STOPPING=1")
    assert stopping.pid == proc.pid  # the listener did hear this daemon
