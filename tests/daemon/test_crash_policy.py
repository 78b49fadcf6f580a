"""Crash policy (DESIGN §2): ready workers restart at once; start failures back off to failed."""

from __future__ import annotations

import http.client
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
    env_for,
    health,
    pid_alive,
    wait_until,
)


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every child of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0]))
    return found


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(180)
def test_fifty_kill_9_of_ready_workers_never_reach_failed(daemon: Daemon) -> None:
    health(daemon.port)
    fds_before = open_fds(daemon.pid)
    worker = daemon.worker_pid
    for _ in range(50):
        os.kill(worker, 9)
        worker = wait_until(
            lambda old=worker: (
                (s := control_call(daemon.home, "status"))["state"] == "running"
                and s["worker_pid"] != old
                and s["worker_pid"]
            ),
            timeout=15,
            what="a new ready worker",
        )
        daemon.reaper.track(worker)
        assert health(daemon.port) == 200
    status = control_call(daemon.home, "status")
    assert status["state"] == "running"
    assert status["port"] == daemon.port
    assert status["restarts"] == {"signal": 50}
    # The last control connection may still be closing on the daemon's side; a leak per
    # restart would leave 50 more, never settle.
    wait_until(
        lambda: open_fds(daemon.pid) <= fds_before,
        timeout=5,
        what=f"the supervisor's fds to settle at {fds_before}",
    )
    assert [pid for pid, _ in children(daemon.pid)] == [worker]  # no zombies, one worker


def faults_env(home: Path) -> tuple[dict[str, str], Path]:
    faults = home / "faults"
    return env_for(home, DBTK_TEST_FAULTS_FILE=str(faults)), faults


def wait_failed(home: Path, timeout: float = 15) -> dict:
    return wait_until(
        lambda: (
            _status_or_none(home)
            if (_status_or_none(home) or {}).get("state") == "failed"
            else None
        ),
        timeout=timeout,
        what="state failed",
    )


def _status_or_none(home: Path) -> dict | None:
    try:
        return control_call(home, "status")
    except (OSError, ConnectionError):
        return None


def test_a_worker_that_dies_during_start_reaches_failed_and_restart_clears_it(
    home: Path, reaper: ProcessReaper
) -> None:
    env, faults = faults_env(home)
    faults.write_text("crash_on_start\n")
    started = time.monotonic()
    proc = reaper.spawn(home, env=env)
    status = wait_failed(home)
    took = time.monotonic() - started
    assert took < 8, f"reached failed after {took:.1f} s (expected about 4 s)"
    assert status["error"]["exit"] == "exited with status 3"
    assert any("crash_on_start" in line for line in status["error"]["stderr"])
    assert "6 times" in status["error"]["reason"]
    port = status["port"]

    # Every HTTP request and WebSocket upgrade gets 503 from the supervisor itself.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/v1/status")
    response = conn.getresponse()
    assert response.status == 503
    assert response.getheader("Retry-After") == "5"
    # In the API's error shape, with the reason and what to do (on 4ca2263: only
    # {"state": "failed"}).
    answer = json.loads(response.read())
    assert answer["error"] == "daemon_failed"
    assert answer["state"] == "failed"
    assert answer["reason"] == status["error"]["reason"]
    assert status["error"]["reason"] in answer["detail"]
    assert "dbtkctl restart" in answer["detail"]
    assert answer["next_try"] is None
    conn.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as ws:
        ws.sendall(
            f"GET /ws/logs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        assert ws.recv(4096).startswith(b"HTTP/1.1 503")

    # The CLI says so, with the reason, and exits 4.
    from tests.support import run_ctl

    result = run_ctl(home, "status", env=env)
    assert result.code == 4
    assert "exited with status 3" in result.out
    port_result = run_ctl(home, "port", env=env)
    assert port_result.code == 4
    assert "daemon failed" in port_result.err

    # Heal the fault; restart brings it back on the same port.
    faults.write_text("")
    assert run_ctl(home, "restart", env=env).code == 0
    status = control_call(home, "status")
    reaper.track(status["worker_pid"])
    assert status["state"] == "running"
    assert status["port"] == port
    assert health(port) == 200
    assert proc.poll() is None


@pytest.mark.timeout(150)
def test_the_failed_supervisor_uses_no_cpu(home: Path, reaper: ProcessReaper) -> None:
    env, faults = faults_env(home)
    faults.write_text("crash_on_start\n")
    reaper.spawn(home, env=env)
    status = wait_failed(home)
    pid = status["pid"]

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu_seconds()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # an observation window, not a synchronisation
        time.sleep(deadline - time.monotonic())
    used = cpu_seconds() - before
    assert used <= 0.06, f"supervisor used {used * 1000:.0f} ms of CPU in 60 s while failed"
    assert pid_alive(pid)


def test_a_fatal_configuration_error_is_reported_once_not_retried(
    home: Path, reaper: ProcessReaper
) -> None:
    (home / "data").write_text("a file where the data directory should be")
    proc = reaper.spawn(home)
    # The data dir holds the daemon's lock (one daemon per data dir), so an unusable one
    # stops the start at once: exit 4, its reason on stderr and in the log, no worker.
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 4, stderr
    assert f"{home / 'data'} is not a directory" in stderr
    log = (home / "logs" / "dbtkd.log").read_text()
    assert f"{home / 'data'} is not a directory" in log
    assert not any(" started" in line and "worker" in line for line in log.splitlines())
