"""The supervisor as a real process: lock, port, state files, worker restarts, shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support import (
    DBTKD,
    Daemon,
    ProcessReaper,
    control_call,
    env_for,
    health,
    pid_alive,
    read_state,
    run_ctl,
    wait_for_restarts,
    wait_until,
)


def test_foreground_daemon_announces_its_port_only_once_the_worker_answers(
    daemon: Daemon,
) -> None:
    assert health(daemon.port) == 200
    status = daemon.status()
    assert status["state"] == "running"
    assert status["port"] == daemon.port
    assert status["pid"] == daemon.pid


def test_state_files_are_private_complete_and_never_hold_the_token(daemon: Daemon) -> None:
    state_file = daemon.home / "run" / "dbtkd.json"
    document = json.loads(state_file.read_text())
    assert set(document) == {
        "format",
        "version",
        "protocol",
        "pid",
        "worker_pid",
        "port",
        "url",
        "control_socket",
        "nonce",
        "started_at",
        "home",
    }
    assert document["port"] == daemon.port
    assert document["url"] == f"http://127.0.0.1:{daemon.port}"
    assert daemon.token not in state_file.read_text()
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((daemon.home / "run").stat().st_mode) == 0o700
    sock = Path(document["control_socket"])
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert (daemon.home / "state" / "last-port").read_text().strip() == str(daemon.port)
    assert (daemon.home / "backend.port").read_text().strip() == str(daemon.port)


def test_stop_removes_its_files_but_keeps_last_port(daemon: Daemon) -> None:
    assert daemon.ctl("stop").code == 0
    assert daemon.proc.wait(timeout=10) == 0
    assert not (daemon.home / "run" / "dbtkd.json").exists()
    assert not (daemon.home / "run" / "dbtkd.sock").exists()
    assert not (daemon.home / "backend.port").exists()
    assert (daemon.home / "state" / "last-port").read_text().strip() == str(daemon.port)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_port_in_last_port_is_preferred_over_the_start_of_the_range(
    home: Path, reaper: ProcessReaper
) -> None:
    preferred = free_port()
    (home / "state").mkdir()
    (home / "state" / "last-port").write_text(f"{preferred}\n")
    low = max(1024, preferred - 20)
    daemon = reaper.start(home, "--port-range", f"{low}-{preferred + 5}")
    assert daemon.port == preferred


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_daemon_within_five_seconds_and_cleans_up(
    daemon: Daemon, signum: signal.Signals
) -> None:
    worker = daemon.worker_pid
    started = time.monotonic()
    daemon.proc.send_signal(signum)
    assert daemon.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert not pid_alive(worker)
    assert read_state(daemon.home) is None


def test_second_daemon_for_the_same_home_refuses_and_leaves_the_first_alone(
    daemon: Daemon,
) -> None:
    socket_path = daemon.home / "run" / "dbtkd.sock"
    inode = socket_path.stat().st_ino
    proc = subprocess.run(
        [DBTKD, "--port-range", "0"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 1
    assert f"pid {daemon.pid}" in proc.stderr
    assert socket_path.stat().st_ino == inode
    assert daemon.status()["state"] == "running"
    assert health(daemon.port) == 200


def test_a_socket_file_left_by_a_dead_daemon_is_replaced(home: Path, reaper: ProcessReaper) -> None:
    run = home / "run"
    run.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run / "dbtkd.sock"))
    stale.close()  # the file stays, nobody listens
    daemon = reaper.start(home)
    assert daemon.status()["state"] == "running"


def test_worker_killed_with_sigkill_is_replaced_on_the_same_port_without_refusals(
    daemon: Daemon,
) -> None:
    old_worker = daemon.worker_pid
    refused = 0
    served = 0
    stop = threading.Event()

    def hammer() -> None:
        nonlocal refused, served
        while not stop.is_set():
            try:
                if health(daemon.port) == 200:
                    served += 1
            except ConnectionRefusedError:
                refused += 1
            except (ConnectionResetError, http_errors()):
                pass  # an in-flight request on the dying worker; retried by the loop

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_until(lambda: served > 5, what="the client loop to get answers")
        os.kill(old_worker, signal.SIGKILL)
        new_worker = wait_for_restarts(daemon.home, {"signal": 1})["worker_pid"]
        before = served
        wait_until(lambda: served > before + 5, what="answers from the new worker")
    finally:
        stop.set()
        thread.join(timeout=10)
    daemon.reaper.track(new_worker)
    assert refused == 0
    assert daemon.status()["port"] == daemon.port
    assert daemon.status()["restarts"] == {"signal": 1}
    assert not pid_alive(old_worker)


def http_errors() -> type[Exception]:
    import http.client

    return http.client.RemoteDisconnected


def test_worker_exits_within_a_second_when_the_supervisor_is_killed(daemon: Daemon) -> None:
    worker = daemon.worker_pid
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.wait(timeout=5)
    wait_until(lambda: not pid_alive(worker), timeout=1.0, what="the orphaned worker to exit")


def test_worker_runs_in_its_own_process_group_and_ignores_sigterm(daemon: Daemon) -> None:
    worker = daemon.worker_pid
    assert os.getpgid(worker) == worker
    os.kill(worker, signal.SIGTERM)
    os.kill(worker, signal.SIGINT)
    assert health(daemon.port) == 200
    assert daemon.status()["worker_pid"] == worker


def test_token_reaches_the_worker_through_its_pipe_not_argv_or_environment(
    daemon: Daemon,
) -> None:
    for pid in (daemon.pid, daemon.worker_pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert daemon.token.encode() not in cmdline
        assert daemon.token.encode() not in environ


def test_exhausted_port_range_exits_4_naming_the_range_and_the_fix(
    home: Path, reaper: ProcessReaper
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [DBTKD, "--port-range", f"{port}-{port}"],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 4
    assert f"port range {port}-{port} is all in use" in proc.stderr
    assert "--port-range" in proc.stderr
    assert "DBTK_PORT_RANGE" in proc.stderr


def test_config_file_is_read_and_flags_beat_environment_beat_file(
    home: Path, reaper: ProcessReaper
) -> None:
    (home / "config").mkdir()
    (home / "config" / "dbtkd.toml").write_text(
        'port_range = "0"\nidle_exit = 900\nlog_level = "debug"\n'
    )
    env = env_for(home, DBTK_IDLE_EXIT="800")
    proc = subprocess.Popen(
        [DBTKD, "--idle-exit", "700"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    reaper.procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("BACKEND_PORT:")
    status = control_call(home, "status")
    assert status["idle_exit"] == 700
    assert status["port_range"] == "0"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    proc2 = subprocess.Popen(
        [DBTKD], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    reaper.procs.append(proc2)
    assert proc2.stdout is not None
    assert proc2.stdout.readline().startswith("BACKEND_PORT:")
    assert control_call(home, "status")["idle_exit"] == 800


def test_unknown_config_key_is_an_error_naming_it(home: Path) -> None:
    (home / "config").mkdir()
    (home / "config" / "dbtkd.toml").write_text("port_rnage = '0'\n")
    proc = subprocess.run([DBTKD], env=env_for(home), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown key 'port_rnage'" in proc.stderr


def test_log_rotates_at_the_configured_size_keeping_the_configured_count(
    home: Path, reaper: ProcessReaper
) -> None:
    (home / "config").mkdir()
    (home / "config" / "dbtkd.toml").write_text("log_max_bytes = 2000\nlog_backups = 2\n")
    daemon = reaper.start(home)
    for _ in range(30):
        daemon.ctl("restart")  # each restart logs a few lines
        if (home / "logs" / "dbtkd.log.2").exists():
            break
    logs = sorted(p.name for p in (home / "logs").iterdir())
    assert logs == ["dbtkd.log", "dbtkd.log.1", "dbtkd.log.2"]
    assert all((home / "logs" / name).stat().st_size <= 2000 + 500 for name in logs)


def test_a_home_too_long_for_a_socket_path_moves_only_the_socket(
    tmp_path: Path, reaper: ProcessReaper
) -> None:
    home = tmp_path / ("h" * 90)
    home.mkdir()
    daemon = reaper.start(home)
    state = read_state(home)
    assert state is not None
    sock = state["control_socket"]
    assert len(sock.encode()) <= 100
    assert sock.endswith(".sock")
    assert f"dbtk-{os.getuid()}" in sock
    assert (home / "run" / "dbtkd.json").exists()
    result = run_ctl(home, "port", "--no-start")
    assert result.code == 0
    assert int(result.out) == daemon.port
    daemon.ctl("stop")
    daemon.proc.wait(timeout=10)
    assert not Path(sock).exists()


def test_a_symlink_planted_at_the_temp_socket_directory_is_refused_not_followed(
    tmp_path: Path, reaper: ProcessReaper
) -> None:
    home = tmp_path / ("h" * 90)  # long enough that the socket moves to the temp dir
    home.mkdir()
    temp = tmp_path / "tmp"
    temp.mkdir()
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o777)
    planted = temp / f"dbtk-{os.getuid()}"
    planted.symlink_to(elsewhere)
    proc = subprocess.run(
        [DBTKD, "--port-range", "0"],
        env=env_for(home, TMPDIR=str(temp)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 4
    assert f"{planted} is not a directory (a symlink?)" in proc.stderr
    assert list(elsewhere.iterdir()) == []
    # dbtkctl refuses before it connects or starts anything (issue 11 item 3): exit 1.
    result = run_ctl(home, "port", env=env_for(home, TMPDIR=str(temp)))
    assert result.code == 1
    assert "is not a real directory (a symlink?)" in result.err


def test_the_listening_backlog_stays_deep_after_the_worker_starts(daemon: Daemon) -> None:
    # Hypercorn re-listens on the inherited socket; its default backlog (100) would shrink
    # the queue that holds connections while a worker restarts.
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{daemon.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "LISTEN"
    assert int(out[2]) == 1024  # Send-Q of a listening socket is its backlog
