"""The worker fork server (``worker_start = "fork"``, dbtkd/zygote.py), with real processes.

A daemon in fork mode serves from a worker whose parent is the zygote; a worker killed with
SIGKILL is replaced by a new fork on the same port; a zygote killed takes its worker with it
and the supervisor starts a new pair; a dead supervisor leaves neither behind. The zygote's own
protocol is driven directly: garbage gets an error and the zygote goes on forking.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dbtkd import settings, spawn, worker, zygote
from dbtkd.errors import AlreadyRunning
from tests.app.db.support import Api
from tests.app.jobs.test_terminal import read_until, send
from tests.app.jobs.test_terminal import shell as terminal_shell
from tests.support import (
    Daemon,
    ProcessReaper,
    comm,
    env_for,
    health,
    pid_alive,
    ppid,
    wait_until,
)

pytestmark = pytest.mark.skipif(not zygote.SUPPORTED, reason="the fork server is Linux's")
ROOT = Path(__file__).resolve().parents[2]


def zygote_of(daemon: Daemon) -> int:
    """The zygote's pid: the supervisor's child named ``dbtkd-zygote``."""
    for task in Path(f"/proc/{daemon.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if comm(int(child)) == "dbtkd-zygote":
                daemon.reaper.track(int(child))
                return int(child)
    raise AssertionError("the daemon has no zygote")


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


@pytest.fixture
def forking(home: Path, reaper: ProcessReaper) -> Daemon:
    return reaper.start(home, "--worker-start", "fork")


def test_the_worker_is_a_fork_of_the_zygote_and_status_says_so(forking: Daemon) -> None:
    status = forking.status()
    assert status["worker_start"] == "fork"
    assert set(status["processes"]) == {"supervisor", "worker", "zygote"}
    mother = zygote_of(forking)
    assert ppid(forking.worker_pid) == mother
    assert comm(forking.worker_pid) == "dbtkd-worker"
    # Forked from the supervisor (sharing its pages), not spawned: the same command line.
    assert cmdline(mother) == cmdline(forking.pid)
    assert forking.http("GET", "/api/v1/health")[0] == 200


def test_the_forked_zygote_keeps_none_of_the_supervisors_descriptors(forking: Daemon) -> None:
    mother = zygote_of(forking)
    held = {int(fd.name): os.readlink(fd) for fd in Path(f"/proc/{mother}/fd").iterdir()}
    assert held[0] == "/dev/null"
    assert held[3].startswith("socket:")  # its end of the supervisor's socket pair
    # Besides 0-3, only pidfds of its workers: not the lock, the log, the listening socket,
    # the control socket or a worker's pipe, all of which the supervisor held when it forked.
    others = {fd: target for fd, target in held.items() if fd > 3}
    assert others, held  # at least its worker's
    assert set(others.values()) == {"anon_inode:[pidfd]"}, held
    # Closed in the zygote, the lock is still the supervisor's alone: a second daemon for this
    # home is refused, and the running one still answers.
    second = subprocess.run(
        [sys.executable, "-m", "dbtkd", "--home", str(forking.home), "--port-range", "0"],
        env=env_for(forking.home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == AlreadyRunning.exit_code, second.stderr
    assert f"another dbtkd (pid {forking.pid}) already serves this profile" in second.stderr
    assert health(forking.port) == 200


def test_a_forked_workers_log_lines_come_through_the_supervisor(
    home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home, "--worker-start", "fork", "--log-level", "debug")
    log_file = home / "logs" / "dbtkd.log"
    # A record of a ``dbtkd.*`` logger in the worker: with the supervisor's handlers still on
    # that logger, it would be written to a closed descriptor instead of the worker's output.
    line = f"dbtkd.worker[{daemon.worker_pid}]: DEBUG dbtkd.app.loading: app loaded in"
    wait_until(lambda: line in log_file.read_text(), what="the worker's line in the log")


def test_programs_a_forked_worker_runs_get_the_workers_environment(
    home: Path, reaper: ProcessReaper
) -> None:
    # As from a spawned worker: the user's variables, and PYTHONUNBUFFERED, which the supervisor
    # does not have: the zygote, forked from it, took a spawned worker's environment. (systemd's
    # hand-over variables, which are the supervisor's alone, the terminal removes as well.)
    env = env_for(
        home,
        SHELL="/bin/sh",
        ENV="",
        NOTIFY_SOCKET="/nonexistent",
        WATCHDOG_USEC="1000",
        MARK_FROM_TEST="kept",
    )
    env.pop("PYTHONUNBUFFERED", None)
    api = Api(reaper.start(home, "--worker-start", "fork", env=env))
    with terminal_shell(api) as (socket, _):
        command = 'echo "env:[$NOTIFY_SOCKET|$WATCHDOG_USEC|$MARK_FROM_TEST|$PYTHONUNBUFFERED]"'
        send(socket, type="input", data=command + "\n")
        read_until(socket, re.escape("env:[||kept|1]"))


def test_a_killed_worker_is_forked_again_on_the_same_port(forking: Daemon) -> None:
    old, mother = forking.worker_pid, zygote_of(forking)
    for _ in range(3):
        forking.reaper.track(old)
        subprocess.run(["kill", "-9", str(old)], check=True)
        new = wait_until(
            lambda old=old: (pid := forking.status()["worker_pid"]) not in (None, old) and pid,
            what="a new worker",
        )
        wait_until(lambda: health(forking.port) == 200, what="the new worker serving")
        assert ppid(new) == mother  # the same zygote forked it
        # The zygote reaped the old one: no zombie left behind.
        wait_until(lambda old=old: not Path(f"/proc/{old}").exists(), what="the old worker reaped")
        old = new
    assert forking.status()["restarts"] == {"signal": 3}


def test_a_killed_zygote_takes_its_worker_and_a_new_pair_serves(forking: Daemon) -> None:
    worker_pid, mother = forking.worker_pid, zygote_of(forking)
    subprocess.run(["kill", "-9", str(mother)], check=True)
    wait_until(lambda: not pid_alive(worker_pid), what="the worker dying with its zygote")
    wait_until(
        lambda: (
            forking.status()["worker_pid"] not in (None, worker_pid) and health(forking.port) == 200
        ),
        timeout=20,
        what="a new worker serving",
    )
    new_mother = zygote_of(forking)
    assert new_mother != mother
    assert ppid(forking.worker_pid) == new_mother
    log = (forking.home / "logs" / "dbtkd.log").read_text()
    assert f"the worker fork server {mother} exited; starting a new one" in log


def test_neither_zygote_nor_worker_outlives_a_killed_supervisor(forking: Daemon) -> None:
    worker_pid, mother = forking.worker_pid, zygote_of(forking)
    forking.proc.kill()
    forking.proc.wait(timeout=10)
    wait_until(
        lambda: not pid_alive(worker_pid) and not pid_alive(mother),
        what="zygote and worker gone",
    )


def test_stop_leaves_nothing_running(forking: Daemon) -> None:
    worker_pid, mother = forking.worker_pid, zygote_of(forking)
    assert forking.ctl("stop").code == 0
    assert forking.proc.wait(timeout=10) == 0
    wait_until(lambda: not pid_alive(worker_pid) and not pid_alive(mother), what="all gone")


def test_serve_imports_nothing_the_zygote_did_not_preload() -> None:
    # Fresh interpreter: what serve() imports, executed after preload(), adds no module.
    tree = ast.parse((ROOT / "dbtkd" / "worker.py").read_text(encoding="utf-8"))
    (serve,) = [n for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "serve"]
    imports = [
        ast.unparse(n) for n in ast.walk(serve) if isinstance(n, ast.Import | ast.ImportFrom)
    ]
    assert imports, "serve() imports nothing? the check would be empty"
    script = textwrap.dedent(
        """
        import sys
        from dbtkd import worker
        worker.preload()
        before = set(sys.modules)
        exec(sys.argv[1])
        print(sorted(set(sys.modules) - before))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "\n".join(imports)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout
    assert worker.PRELOAD  # and preload() is what the zygote runs


def _fork_one(z: zygote.Zygote, listener: socket.socket, home: Path) -> spawn.Spawned:
    loaded = settings.load({}, {"DBTK_HOME": str(home)}, home=str(home))
    first = spawn.worker_settings(
        loaded, {}, port=listener.getsockname()[1], started_at=0, restarts=0
    )
    return z.fork(listener, "t" * 43, first)


def test_garbage_on_the_zygote_socket_gets_an_error_and_forking_goes_on(tmp_path: Path) -> None:
    z = zygote.Zygote.start({"PATH": "/usr/bin:/bin", "DBTK_HOME": str(tmp_path)})
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        z.sock.send(b"\x00garbage")  # no descriptors
        r1, w1 = socket.socketpair()
        socket.send_fds(z.sock, [zygote.FORK], [r1.fileno(), w1.fileno()])  # two, not four
        replies = [json.loads(z.sock.recv(zygote.MAX_MESSAGE)) for _ in range(2)]
        assert replies == [
            {"error": "expected 'fork' and 4 descriptors"},
            {"error": "expected 'fork' and 4 descriptors"},
        ]
        r1.close()
        w1.close()

        async def fork_and_kill() -> tuple[int, int]:
            z.attach(asyncio.get_running_loop())
            spawned = _fork_one(z, listener, tmp_path)
            child: Any = spawned.process
            pid = await asyncio.wait_for(child.started(), 30)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_until(lambda: health(listener.getsockname()[1]) == 200)
            )
            child.kill()
            code = await asyncio.wait_for(child.wait(), 10)
            spawned.close()
            return pid, code

        pid, code = asyncio.run(fork_and_kill())
        assert pid > 0
        assert code == -9  # the zygote reaped it and said how it ended
    finally:
        z.close()
        listener.close()
        assert z.popen is not None  # spawned
        z.popen.wait(timeout=10)  # end of file on its socket: it exits
    assert z.popen.returncode == 0
