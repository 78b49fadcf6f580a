"""Leases (``attach``) and idle exit: the daemon leaves only when nobody uses it."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from tests.support import (
    Daemon,
    ProcessReaper,
    control_call,
    control_connect,
    read_line,
    wait_until,
)


def attach(home: Path, name: str = "window") -> tuple[socket.socket, bytearray, dict]:
    sock = control_connect(home, timeout=30)
    buffer = bytearray()
    sock.sendall(
        json.dumps({"id": 9, "cmd": "attach", "name": name, "pid": os.getpid()}).encode() + b"\n"
    )
    return sock, buffer, read_line(sock, buffer)


def stays_alive(daemon: Daemon, seconds: float) -> None:
    """Observe for ``seconds`` that the daemon does not exit (a negative check needs time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert daemon.proc.poll() is None, "the daemon exited while it was in use"
        time.sleep(0.05)


def exits_within(daemon: Daemon, seconds: float) -> float:
    started = time.monotonic()
    daemon.proc.wait(timeout=seconds)
    return time.monotonic() - started


def test_attach_registers_a_lease_listed_by_status(daemon: Daemon) -> None:
    sock, _, reply = attach(daemon.home, "main-window")
    with sock:
        assert reply["ok"] is True
        assert reply["result"]["state"] == "running"
        clients = control_call(daemon.home, "status")["clients"]
        assert [(c["name"], c["pid"]) for c in clients] == [("main-window", os.getpid())]
        assert "main-window" in daemon.ctl("status").out
    wait_until(
        lambda: control_call(daemon.home, "status")["clients"] == [],
        what="the lease to end with its connection",
    )


def test_a_lease_survives_a_worker_restart_and_hears_about_it(daemon: Daemon) -> None:
    sock, buffer, _ = attach(daemon.home)
    with sock:
        old = daemon.worker_pid
        os.kill(old, 9)
        event = read_line(sock, buffer)
        assert event["event"] == "worker_restarted"
        assert event["id"] == 9
        assert event["cause"] == "signal"
        assert event["worker_pid"] != old
        daemon.reaper.track(event["worker_pid"])
        assert len(control_call(daemon.home, "status")["clients"]) == 1


def test_a_lease_hears_when_the_daemon_fails(home: Path, reaper: ProcessReaper) -> None:
    faults = home / "faults"
    env = {**os.environ, "DBTK_HOME": str(home), "DBTK_TEST_FAULTS_FILE": str(faults)}
    daemon = reaper.start(home, env=env)
    sock, buffer, _ = attach(home)
    with sock:
        faults.write_text("crash_on_start\n")
        os.kill(daemon.worker_pid, 9)
        while (event := read_line(sock, buffer))["event"] != "state":
            pass
        assert event["state"] == "failed"
        assert "exited with status 3" in event["error"]["exit"]


@pytest.mark.timeout(60)
def test_the_daemon_exits_idle_exit_seconds_after_the_last_lease_ends(
    home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home, "--idle-exit", "2")
    first, _, _ = attach(home, "one")
    second, _, _ = attach(home, "two")
    stays_alive(daemon, 3)  # longer than idle_exit: the leases keep it
    first.close()
    stays_alive(daemon, 3)  # one lease is enough
    second.close()
    waited = exits_within(daemon, 10)
    assert waited >= 1.5
    assert daemon.proc.returncode == 0
    assert "idle exit" in (home / "logs" / "dbtkd.log").read_text()


@pytest.mark.timeout(60)
def test_a_request_in_between_resets_the_idle_timer(home: Path, reaper: ProcessReaper) -> None:
    daemon = reaper.start(home, "--idle-exit", "3")
    lease, _, _ = attach(home)
    lease.close()
    stays_alive(daemon, 2)
    assert daemon.http("GET", "/api/v1/health")[0] == 200
    stays_alive(daemon, 2)  # 4 s after the lease ended, but 2 s after the request
    exits_within(daemon, 10)


@pytest.mark.timeout(60)
def test_a_new_lease_in_between_resets_the_idle_timer(home: Path, reaper: ProcessReaper) -> None:
    daemon = reaper.start(home, "--idle-exit", "3")
    lease, _, _ = attach(home)
    lease.close()
    stays_alive(daemon, 2)
    again, _, _ = attach(home)
    stays_alive(daemon, 4)
    again.close()
    exits_within(daemon, 10)


@pytest.mark.timeout(60)
def test_an_open_websocket_counts_as_use(home: Path, reaper: ProcessReaper) -> None:
    import websockets.sync.client

    daemon = reaper.start(home, "--idle-exit", "2")
    with websockets.sync.client.connect(
        f"ws://127.0.0.1:{daemon.port}/ws/logs",
        subprotocols=["dbtk.v1", f"dbtk.bearer.{daemon.token}"],  # type: ignore[list-item]
    ):
        stays_alive(daemon, 4)
    exits_within(daemon, 10)


@pytest.mark.timeout(60)
def test_a_daemon_no_client_ever_reached_exits_after_the_timeout(
    home: Path, reaper: ProcessReaper
) -> None:
    proc = reaper.spawn(home, "--idle-exit", "2")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("BACKEND_PORT:")
    started = time.monotonic()
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started >= 1.5
    assert not (home / "run" / "dbtkd.json").exists()


def test_without_idle_exit_the_daemon_stays(daemon: Daemon) -> None:
    assert control_call(daemon.home, "status")["idle_exit"] is None
    stays_alive(daemon, 2)
