"""One daemon per data directory, whatever runtime dir its callers see (issue 11 item 2).

A login item, an ssh session and ``sudo -u`` can see different ``XDG_RUNTIME_DIR`` values. On
bdb7a18 the instance lock lived in the runtime dir, so each got a daemon of its own on the one
data dir, and each rewrote ``connections.json`` from its own memory: connections made on one
were gone after the other wrote. Now the lock sits next to the data; a second daemon refuses
to start, naming the running one; and ``dbtkctl`` and the Electron module started with the
other runtime dir find the running daemon through ``dbtkd.live.json`` in the data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DBTKCTL, DBTKD, reaping, wait_until

ELECTRON = Path(__file__).resolve().parents[2] / "electron"


def caller_env(user_home: Path, runtime: Path) -> dict[str, str]:
    """A caller with its own XDG_RUNTIME_DIR and no DBTK_HOME: the per-OS defaults apply."""
    drop = ("DBTK_", "XDG_", "NOTIFY_SOCKET")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(HOME=str(user_home), XDG_RUNTIME_DIR=str(runtime))
    return env


def ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DBTKCTL, *args], env=env, capture_output=True, text=True, timeout=60)


def daemons_of(user_home: Path) -> list[int]:
    """dbtkd processes (supervisors and workers) whose HOME is this test's."""
    marker = f"HOME={user_home}\0".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ and b"dbtkd" in cmdline:
            found.append(int(entry))
    return found


@pytest.fixture
def user_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "user"
    home.mkdir()
    with reaping() as reaper:
        yield home
        # Stop whatever a test started here (by pid, ours only), also when it failed.
        env = caller_env(home, tmp_path / "rt-a")
        ctl(env, "stop")
        for pid in daemons_of(home):
            reaper.track(pid)


def test_two_runtime_dirs_share_one_daemon_port_and_token(user_home: Path, tmp_path: Path) -> None:
    login_item = caller_env(user_home, tmp_path / "rt-a")
    ssh_session = caller_env(user_home, tmp_path / "rt-b")

    first = ctl(login_item, "port", "--json", "--port-range", "0")
    assert first.returncode == 0, first.stderr
    started = json.loads(first.stdout)
    second = ctl(ssh_session, "port", "--json", "--port-range", "0")
    assert second.returncode == 0, second.stderr
    found = json.loads(second.stdout)
    assert (found["port"], found["token"], found["pid"]) == (
        started["port"],
        started["token"],
        started["pid"],
    )
    assert len(daemons_of(user_home)) == 2  # one supervisor and its worker, not two daemons

    # A second daemon started by hand on the same data dir refuses, naming the running one.
    refused = subprocess.run(
        [DBTKD, "--port-range", "0"], env=ssh_session, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert f"pid {started['pid']}" in refused.stderr, refused.stderr
    assert str(tmp_path / "rt-a") in refused.stderr  # its control socket
    assert "already owns the data directory" in refused.stderr

    # Stopped from the other runtime dir, through the record next to the data.
    stopped = ctl(ssh_session, "stop")
    assert stopped.returncode == 0, stopped.stderr
    wait_until(lambda: not daemons_of(user_home), 15, what="the daemon to stop")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_electron_with_another_runtime_dir_uses_the_running_daemon(
    user_home: Path, tmp_path: Path
) -> None:
    login_item = caller_env(user_home, tmp_path / "rt-a")
    first = ctl(login_item, "port", "--json", "--port-range", "0")
    assert first.returncode == 0, first.stderr
    started = json.loads(first.stdout)
    script = (
        "const { BackendManager } = require(process.argv[1]);"
        "const m = new BackendManager({ dbtkctl: process.argv[2], portRange: '0' });"
        "m.ensureBackend().then((b) => { console.log(JSON.stringify({ port: b.port,"
        " token: b.token, calls: m.stats })); m.close(); process.exit(0); },"
        " (e) => { console.error(e.message); process.exit(3); });"
    )
    app = subprocess.run(
        ["node", "-e", script, str(ELECTRON / "backend-manager.js"), DBTKCTL],
        env=caller_env(user_home, tmp_path / "rt-electron"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert app.returncode == 0, app.stderr
    answer = json.loads(app.stdout)
    assert (answer["port"], answer["token"]) == (started["port"], started["token"])
    assert len(daemons_of(user_home)) == 2
