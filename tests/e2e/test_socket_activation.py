"""Socket activation end to end: dbtkd adopts a control socket someone else holds.

``systemd-socket-activate`` passes the socket exactly as systemd does (``LISTEN_FDS``,
``LISTEN_PID``, fd 3). ``socket_holder.py`` plays a socket unit across several daemon lives,
which ``systemd-socket-activate`` (it execs into its command) cannot. No systemd user instance
is involved: there is none on the test machine (issue 4, item 5 is not run here).
"""

from __future__ import annotations

import os
import select
import shlex
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbtkctl.service.loginitem import Target, daemon_executable
from dbtkctl.service.systemd import SystemdUnits
from tests.ctl.service_support import require_tool, unit_settings
from tests.support import (
    DBTKCTL,
    DBTKD,
    ProcessReaper,
    env_for,
    health,
    pid_alive,
    read_state,
    run_ctl,
    wait_until,
)

HOLDER = str(Path(__file__).with_name("socket_holder.py"))


def control_socket(home: Path) -> Path:
    run = home / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    return run / "dbtkd.sock"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def install_socket_unit(home: Path, config: Path) -> str:
    """Write this profile's units where ``dbtkctl service install`` would (no systemctl)."""
    target = Target(
        home=str(home),
        user_home=str(config.parent),
        executable=daemon_executable(),
        env={"XDG_CONFIG_HOME": str(config)},
        uid=os.getuid(),
    )
    item = SystemdUnits(target)
    for path, content in item.files().items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(content)
    return item.socket_name


def readline(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return proc.stdout.readline().strip()


def next_start(holder: subprocess.Popen[str]) -> int:
    """The pid of the holder's next start of dbtkd (skipping what dbtkd prints)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = readline(holder)
        if line.startswith("STARTED "):
            return int(line.split()[1])
    raise AssertionError("the socket holder started nothing")


@pytest.fixture
def held_socket(home: Path) -> Iterator[socket.socket]:
    """A listening control socket held by the test itself, as systemd would hold it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(control_socket(home)))
    sock.listen(8)
    with sock:
        yield sock


def pending_connection(sock: socket.socket) -> bool:
    # A Unix stream connect() completes once queued: anyone who connected is waiting here.
    return bool(select.select([sock], [], [], 0)[0])


def test_dbtkd_adopts_the_socket_systemd_socket_activate_passes_and_never_unlinks_it(
    home: Path, reaper: ProcessReaper
) -> None:
    tool = require_tool("systemd-socket-activate")
    path = control_socket(home)
    activator = subprocess.Popen(
        [tool, "-l", str(path), "-E", f"DBTK_HOME={home}", DBTKD, "--port-range", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper.procs.append(activator)
    # It binds, then listens, then says so: connecting between the two would be refused.
    assert activator.stderr is not None
    assert select.select([activator.stderr], [], [], 30)[0], "systemd-socket-activate is silent"
    assert activator.stderr.readline().startswith(f"Listening on {path}")
    inode = os.stat(path).st_ino

    port = run_ctl(home, "port")  # connecting is what makes it start dbtkd
    reaper.track_home(home)
    assert port.code == 0, port.err
    state = read_state(home)
    assert state is not None
    assert state["pid"] == activator.pid  # it exec'd into dbtkd: the pid it told LISTEN_PID
    assert health(int(port.out)) == 200
    worker_env = environ_of(state["worker_pid"])
    assert not [k for k in worker_env if k.startswith(("LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_"))]

    stopped = run_ctl(home, "stop")
    assert stopped.code == 0, stopped.err
    assert activator.wait(timeout=15) == 0
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert os.stat(path).st_ino == inode  # neither unlinked nor re-created by dbtkd


def test_the_rendered_units_start_a_daemon_that_serves_through_the_socket_they_name(
    home: Path, tmp_path: Path, reaper: ProcessReaper
) -> None:
    # What systemd would do with our units, minus systemd: the socket from ListenStream=,
    # the environment from Environment=, the command from ExecStart=.
    tool = require_tool("systemd-socket-activate")
    config = tmp_path / "config"
    install_socket_unit(home, config)
    (service_file,) = config.glob("systemd/user/*.service")
    (socket_file,) = config.glob("systemd/user/*.socket")
    service_unit = unit_settings(service_file.read_text())["Service"]
    (listen,) = unit_settings(socket_file.read_text())["Socket"]["ListenStream"]
    (environment,) = shlex.split(service_unit["Environment"][0].replace("%%", "%"))
    argv = shlex.split(service_unit["ExecStart"][0].replace("%%", "%").replace("$$", "$"))
    path = listen.replace("%%", "%")
    control_socket(home)  # DirectoryMode=0700 would create it

    activator = subprocess.Popen(
        [tool, "-l", path, "-E", environment, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper.procs.append(activator)
    assert activator.stderr is not None
    assert select.select([activator.stderr], [], [], 30)[0], "systemd-socket-activate is silent"
    assert activator.stderr.readline().startswith(f"Listening on {path}")

    port = run_ctl(home, "port")
    reaper.track_home(home)
    assert port.code == 0, port.err
    status = run_ctl(home, "status", "--json").json()
    assert (status["pid"], status["home"], status["idle_exit"]) == (activator.pid, str(home), None)
    assert status["control_socket"] == path
    assert health(int(port.out)) == 200


def test_status_reports_stopped_socket_activated_without_connecting(
    home: Path, tmp_path: Path, held_socket: socket.socket
) -> None:
    env = env_for(home, XDG_CONFIG_HOME=str(tmp_path / "config"))
    unit = install_socket_unit(home, tmp_path / "config")

    status = run_ctl(home, "status", env=env)
    assert status.code == 3, status.err
    assert status.out.splitlines()[0] == (
        f"dbtkd stopped (socket-activated): {unit} starts it on first use"
    )
    document = run_ctl(home, "status", "--json", env=env).json()
    assert (document["state"], document["socket_activated"]) == ("stopped", True)
    assert document["socket_unit"] == unit
    assert not pending_connection(held_socket)


def test_stop_of_a_socket_activated_daemon_that_sleeps_connects_to_nothing(
    home: Path, tmp_path: Path, held_socket: socket.socket
) -> None:
    env = env_for(home, XDG_CONFIG_HOME=str(tmp_path / "config"))
    unit = install_socket_unit(home, tmp_path / "config")
    stopped = run_ctl(home, "stop", env=env)
    assert stopped.code == 0, stopped.err
    assert stopped.out.strip() == (
        f"dbtkd is not running; the login item ({unit}) starts it again on first use"
    )
    assert not pending_connection(held_socket)


def test_without_the_socket_unit_status_connects_as_usual(
    home: Path, held_socket: socket.socket, tmp_path: Path
) -> None:
    # The same listening socket, but no login item installed: not ours to interpret.
    # Also what keeps the two tests above honest: a status that connects is seen here.
    env = env_for(home, XDG_CONFIG_HOME=str(tmp_path / "config"))
    client = subprocess.Popen(
        [DBTKCTL, "status"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: pending_connection(held_socket), what="dbtkctl status to connect")
    finally:
        client.kill()
        client.wait()


def test_a_socket_unit_restarts_the_daemon_on_use_after_dbtkctl_stop(
    home: Path, tmp_path: Path, reaper: ProcessReaper
) -> None:
    env = env_for(home, XDG_CONFIG_HOME=str(tmp_path / "config"))
    unit = install_socket_unit(home, tmp_path / "config")
    path = control_socket(home)
    holder = subprocess.Popen(
        [sys.executable, HOLDER, str(path), DBTKD, "--port-range", "0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    reaper.procs.append(holder)
    assert readline(holder) == "LISTENING"

    first = run_ctl(home, "port", env=env)
    assert first.code == 0, first.err
    first_pid = next_start(holder)
    reaper.track_home(home)

    stopped = run_ctl(home, "stop", env=env)
    assert stopped.code == 0, stopped.err
    assert stopped.out.strip() == (
        f"dbtkd stopped (pid {first_pid}); the login item ({unit}) starts it again on first use"
    )
    wait_until(lambda: not pid_alive(first_pid), what="the first daemon to exit")
    asleep = run_ctl(home, "status", env=env)
    assert asleep.code == 3
    assert "stopped (socket-activated)" in asleep.out

    second = run_ctl(home, "port", env=env)
    assert second.code == 0, second.err
    second_pid = next_start(holder)
    reaper.track_home(home)
    assert second_pid != first_pid
    assert health(int(second.out)) == 200
    running = run_ctl(home, "status", "--json", env=env).json()
    assert (running["state"], running["pid"]) == ("running", second_pid)


def test_a_passed_socket_of_another_profile_is_refused_not_served(
    home: Path, tmp_path: Path, reaper: ProcessReaper
) -> None:
    tool = require_tool("systemd-socket-activate")
    path = control_socket(home)
    other = tmp_path / "other-profile"
    activator = subprocess.Popen(
        [tool, "-l", str(path), "-E", f"DBTK_HOME={other}", DBTKD, "--port-range", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reaper.procs.append(activator)
    assert activator.stderr is not None
    assert select.select([activator.stderr], [], [], 30)[0], "systemd-socket-activate is silent"
    assert activator.stderr.readline().startswith(f"Listening on {path}")
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))  # connecting makes it start dbtkd
        assert activator.wait(timeout=30) == 2
    assert f"this profile's is '{other}/run/dbtkd.sock'" in activator.stderr.read()
    assert "set DBTK_HOME" in (other / "logs" / "dbtkd.log").read_text()
    assert read_state(other) is None
