"""Metrics (control ``metrics``, ``GET /metrics``) and faults the daemon must ride out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import websockets.sync.client

from tests.support import (
    Daemon,
    ProcessReaper,
    control_call,
    control_connect,
    pid_alive,
    read_line,
    run_ctl,
    wait_for_restarts,
    wait_until,
)


def open_logs_socket(daemon: Daemon) -> websockets.sync.client.ClientConnection:
    return websockets.sync.client.connect(
        f"ws://127.0.0.1:{daemon.port}/ws/logs",
        subprotocols=["dbtk.v1", f"dbtk.bearer.{daemon.token}"],  # type: ignore[list-item]
    )


def test_control_metrics_reports_memory_cpu_restarts_and_leases(daemon: Daemon) -> None:
    os.kill(daemon.worker_pid, 9)
    daemon.reaper.track(wait_for_restarts(daemon.home, {"signal": 1})["worker_pid"])
    with control_connect(daemon.home) as lease:
        lease.sendall(b'{"id": 1, "cmd": "attach", "name": "w", "pid": 1}\n')
        read_line(lease)
        metrics = control_call(daemon.home, "metrics")
    assert metrics["restarts"] == {"signal": 1}
    assert metrics["leases"] == 1
    for process in ("supervisor", "worker"):
        stats = metrics["processes"][process]
        assert stats["pss_bytes"] > 1_000_000
        assert stats["rss_bytes"] >= stats["pss_bytes"]
        assert stats["cpu_seconds"] > 0, (process, metrics)
    assert "memory" in daemon.ctl("status").out


def test_http_metrics_needs_the_token_and_speaks_prometheus(daemon: Daemon) -> None:
    assert daemon.http("GET", "/metrics", token=False)[0] == 401
    assert daemon.http("GET", "/api/v1/health")[0] == 200
    assert daemon.http("GET", "/api/v1/nope")[0] == 404
    with control_connect(daemon.home) as lease, open_logs_socket(daemon):
        lease.sendall(b'{"id": 1, "cmd": "attach", "name": "w", "pid": 1}\n')
        read_line(lease)
        # The worker learns the lease count with the next ping (at most a second away).
        wait_until(
            lambda: "dbtk_leases 1" in daemon.http("GET", "/metrics")[2].decode(),
            what="the lease in /metrics",
        )
        status, headers, body = daemon.http("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'dbtk_websockets_open{stream="logs"} 1' in text
    assert re.search(
        r'dbtk_http_request_duration_seconds_count\{route="/api/v1/health",method="GET"\} 1\n',
        text,
    )
    # Unmatched paths share one series instead of one per path a client invents.
    assert '{route="<unmatched>",method="GET"}' in text
    assert "/api/v1/nope" not in text
    assert re.search(r'dbtk_process_proportional_memory_bytes\{process="worker"\} \d+', text)
    assert re.search(r'dbtk_process_cpu_seconds_total\{process="supervisor"\} [\d.]+', text)
    assert "# TYPE dbtk_worker_restarts_total counter" in text


def test_the_worker_turns_its_collector_on_once_serving_with_start_up_frozen(
    daemon: Daemon,
) -> None:
    # dbtkd.__main__ turns the collector off for the worker's imports; a second after the
    # app is built it collects once, freezes what is left and is on for good.
    def settled() -> str | None:
        text = daemon.http("GET", "/metrics")[2].decode()
        return text if "\ndbtk_worker_gc_enabled 1\n" in text else None

    text = wait_until(settled, what="the worker's collector to be on")
    frozen = re.search(r"\ndbtk_worker_gc_frozen_objects (\d+)\n", text)
    assert frozen is not None
    assert int(frozen[1]) > 10_000  # the modules, classes and functions of start-up
    # The app was imported after the worker began serving, and the worker says how long it took.
    loaded = re.search(r"\ndbtk_worker_app_load_seconds ([0-9.]+)\n", text)
    assert loaded is not None, text
    assert 0 < float(loaded[1]) < 60


def test_killing_the_supervisor_ends_the_worker_within_a_second_even_with_websockets_open(
    home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home)
    worker = daemon.worker_pid
    with open_logs_socket(daemon) as first, open_logs_socket(daemon):
        first.recv(timeout=10)  # the backlog: the stream is live
        os.kill(daemon.pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(worker), timeout=1.0, what="the worker to exit")
    result = run_ctl(home, "port", "--json")
    reaper.track_home(home)
    assert result.code == 0, result.err
    assert json.loads(result.out)["pid"] != daemon.pid


@pytest.fixture
def tiny_log_fs(home: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    logs = home / "logs"
    logs.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(logs)], check=True
    )
    yield logs
    subprocess.run(["umount", "-l", str(logs)], check=False)


def test_a_full_log_filesystem_is_reported_and_the_daemon_keeps_serving(
    tiny_log_fs: Path, home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home, "--log-level", "debug")  # every request is a log line
    (tiny_log_fs / "filler").write_bytes(b"x" * (64 * 1024 - 8192))  # leave almost nothing
    for _ in range(400):
        assert daemon.http("GET", "/api/v1/health")[0] == 200
        if control_call(home, "status")["log_error"]:
            break
    status = control_call(home, "status")
    assert "No space left on device" in status["log_error"]
    assert "log problem" in daemon.ctl("status").out
    # Still serving, still restarting workers, still answering the control socket.
    os.kill(daemon.worker_pid, 9)
    reaper.track(wait_for_restarts(home, {"signal": 1})["worker_pid"])
    assert daemon.http("GET", "/api/v1/health")[0] == 200
    # Space comes back: the next log line clears the error.
    (tiny_log_fs / "filler").unlink()
    wait_until(
        lambda: (
            (daemon.http("GET", "/api/v1/health"), control_call(home, "status")["log_error"])[1]
            is None
        ),
        what="the log error to clear once there is room",
    )
