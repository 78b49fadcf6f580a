"""dbtkctl as users and scripts run it: outputs, exit codes, starting on demand, races."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import (
    DBTKCTL,
    Daemon,
    ProcessReaper,
    daemon_processes,
    env_for,
    pid_alive,
    read_state,
    run_ctl,
    wait_until,
)


@pytest.fixture
def spawned(home: Path, reaper: ProcessReaper) -> Path:
    """A home whose daemon was started by ``dbtkctl port`` (and is reaped after the test)."""
    result = run_ctl(home, "port", "--port-range", "0")
    assert result.code == 0, result.err
    reaper.track_home(home)
    return home


def test_port_prints_only_the_port_and_a_newline(daemon: Daemon) -> None:
    result = daemon.ctl("port")
    assert result.code == 0
    assert result.out == f"{daemon.port}\n"


def test_port_json_has_the_documented_fields(daemon: Daemon) -> None:
    document = daemon.ctl("port", "--json").json()
    assert document == {
        "port": daemon.port,
        "url": f"http://127.0.0.1:{daemon.port}",
        "token": daemon.token,
        "pid": daemon.pid,
        "version": document["version"],
        "started": False,
        "handoff": None,
    }


def test_url_prints_the_loopback_address_not_localhost(daemon: Daemon) -> None:
    assert daemon.ctl("url").out == f"http://127.0.0.1:{daemon.port}\n"


def test_status_json_reports_everything_but_the_token(daemon: Daemon) -> None:
    result = daemon.ctl("status", "--json")
    assert result.code == 0
    status = result.json()
    for key in (
        "state",
        "pid",
        "worker_pid",
        "port",
        "url",
        "version",
        "uptime",
        "restarts",
        "clients",
        "control_socket",
        "home",
        "log_file",
        "data_dir",
        "config_file",
        "idle_exit",
    ):
        assert key in status, key
    assert status["state"] == "running"
    assert status["home"] == str(daemon.home)
    assert daemon.token not in result.out
    assert daemon.token not in daemon.ctl("status").out


def test_commands_against_a_stopped_daemon_have_honest_exit_codes(
    home: Path, reaper: ProcessReaper
) -> None:
    status = run_ctl(home, "status", "--json")
    assert status.code == 3
    assert status.json()["state"] == "stopped"
    assert run_ctl(home, "port", "--no-start").code == 3
    assert run_ctl(home, "url", "--no-start").code == 3
    stop = run_ctl(home, "stop")
    assert stop.code == 0
    assert "not running" in stop.out
    # restart of a stopped daemon starts it, as systemctl and docker do (on 4ca2263: exit 3).
    restarted = run_ctl(home, "restart", "--port-range", "0", "--json")
    reaper.track_home(home)
    assert restarted.code == 0, restarted.err
    assert restarted.json()["started"] is True
    assert run_ctl(home, "status").code == 0
    stop = run_ctl(home, "stop")
    assert stop.code == 0
    assert "dbtkd stopped" in stop.out
    assert not (home / "run" / "dbtkd.sock").exists()


def test_usage_errors_exit_2(home: Path) -> None:
    assert run_ctl(home, "frobnicate").code == 2
    assert run_ctl(home, "port", "--bogus").code == 2
    bad_range = run_ctl(home, "port", "--port-range", "9000-8000")
    assert bad_range.code == 2
    assert "expected a port range" in bad_range.err
    assert not (home / "run" / "dbtkd.json").exists()


def test_json_failures_still_print_exactly_one_document(home: Path) -> None:
    result = run_ctl(home, "port", "--no-start", "--json")
    assert result.code == 3
    assert json.loads(result.out)["exit_code"] == 3


def test_version_reports_client_and_daemon(daemon: Daemon) -> None:
    document = daemon.ctl("version", "--json").json()
    assert document["client"]["protocol"] == 1
    assert document["daemon"]["pid"] == daemon.pid


def test_restart_replaces_the_worker_and_keeps_port_and_token(daemon: Daemon) -> None:
    old_worker = daemon.worker_pid
    result = daemon.ctl("restart", "--json")
    assert result.code == 0
    new_worker = result.json()["worker_pid"]
    daemon.reaper.track(new_worker)
    assert new_worker != old_worker
    assert daemon.ctl("port", "--json").json()["token"] == daemon.token
    status, _, _ = daemon.http("GET", "/api/v1/health")
    assert status == 200
    assert daemon.status()["restarts"] == {"requested": 1}


def test_logs_reads_the_file_even_when_the_daemon_is_stopped(daemon: Daemon) -> None:
    daemon.ctl("stop")
    daemon.proc.wait(timeout=10)
    result = daemon.ctl("logs", "-n", "2")
    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) == 2
    assert "dbtkd stopped" in lines[-1]


def test_port_starts_a_detached_daemon_and_returns_at_once_to_a_capturing_caller(
    home: Path, reaper: ProcessReaper
) -> None:
    # capture_output: if the daemon kept our pipes, run() would hang until its timeout.
    proc = subprocess.run(
        [DBTKCTL, "port", "--json", "--port-range", "0"],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    reaper.track_home(home)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["started"] is True
    supervisor = document["pid"]
    assert os.getsid(supervisor) == supervisor  # its own session: no terminal, no signals
    assert os.readlink(f"/proc/{supervisor}/cwd") == "/"
    assert os.readlink(f"/proc/{supervisor}/fd/1") == "/dev/null"
    status = json.loads(run_ctl(home, "status", "--json").out)
    assert status["idle_exit"] == 600
    assert run_ctl(home, "port").out == f"{document['port']}\n"
    assert json.loads(run_ctl(home, "port", "--json").out)["started"] is False


def test_spawned_daemon_environment_has_no_systemd_handover_variables(
    home: Path, reaper: ProcessReaper
) -> None:
    env = env_for(
        home, NOTIFY_SOCKET="/nonexistent", LISTEN_FDS="1", LISTEN_PID="1", WATCHDOG_USEC="1000"
    )
    assert run_ctl(home, "port", "--port-range", "0", env=env).code == 0
    reaper.track_home(home)
    state = read_state(home)
    assert state is not None
    for pid in (state["pid"], state["worker_pid"]):
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        for name in (b"NOTIFY_SOCKET=", b"LISTEN_FDS=", b"LISTEN_PID=", b"WATCHDOG_USEC="):
            assert name not in environ


def test_fifty_racing_port_calls_start_exactly_one_daemon(
    home: Path, reaper: ProcessReaper
) -> None:
    def call(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DBTKCTL, "port", "--port-range", "0"],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=90,
        )

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            results = list(pool.map(call, range(50)))
    finally:
        reaper.track_home(home)
        for pid in daemon_processes(home):
            reaper.track(pid)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    assert len({r.stdout for r in results}) == 1
    assert len(daemon_processes(home)) == 2  # one supervisor, one worker


def test_stale_state_after_kill_9_of_both_processes_heals_on_the_next_port(
    spawned: Path, reaper: ProcessReaper
) -> None:
    state = read_state(spawned)
    assert state is not None
    old_token = json.loads(run_ctl(spawned, "port", "--json").out)["token"]
    for pid in (state["pid"], state["worker_pid"]):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(state["pid"]) and not pid_alive(state["worker_pid"]))
    assert (spawned / "run" / "dbtkd.sock").exists()  # left behind by the dead daemon
    result = run_ctl(spawned, "port", "--json")
    reaper.track_home(spawned)
    assert result.code == 0, result.err
    document = result.json()
    assert document["started"] is True
    assert document["pid"] != state["pid"]
    assert document["token"] != old_token


def test_start_failure_exits_4_with_the_reason_the_log_path_and_the_last_lines(
    home: Path,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_ctl(home, "port", "--port-range", f"{port}-{port}")
    assert result.code == 4
    assert "exited with status 4" in result.err
    assert str(home / "logs" / "dbtkd.log") in result.err
    assert f"port range {port}-{port} is all in use" in result.err


def test_stop_stops_a_spawned_daemon_and_its_worker(spawned: Path) -> None:
    state = read_state(spawned)
    assert state is not None
    result = run_ctl(spawned, "stop")
    assert result.code == 0
    assert not pid_alive(state["pid"])
    wait_until(lambda: not pid_alive(state["worker_pid"]), timeout=5)
    assert run_ctl(spawned, "status").code == 3


def test_start_reports_a_running_daemon_without_starting_another(daemon: Daemon) -> None:
    result = daemon.ctl("start")
    assert result.code == 0
    assert "already running" in result.out
    assert f"pid {daemon.pid}" in result.out


def test_port_warns_when_the_running_daemon_has_other_settings(daemon: Daemon) -> None:
    result = daemon.ctl("port", "--idle-exit", "30")
    assert result.code == 0
    assert "already running with idle_exit" in result.err


def test_dbtkctl_port_imports_none_of_the_heavy_modules(daemon: Daemon) -> None:
    probe = (
        "import sys\n"
        "from dbtkctl.cli import main\n"
        f"assert main(['--home', {str(daemon.home)!r}, 'port']) == 0\n"
        "heavy = {'starlette', 'hypercorn', 'platformdirs', 'pathlib', 'asyncio'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(daemon.port), "[]"]
