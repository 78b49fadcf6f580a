"""Version handoff between two installed copies: same port, same token, nobody refused.

Each copy is the source tree with its own ``__version__`` in its own virtual environment
(``venv --without-pip``, with a ``.pth`` that puts the copy first and this project's
dependencies after it), run through its own console-script wrappers.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import venv
from collections import Counter
from pathlib import Path

import pytest

from dbtkd import zygote
from tests.support import (
    ProcessReaper,
    control_call,
    control_connect,
    env_for,
    pid_alive,
    read_line,
    read_state,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no handoff on Windows")


def install_copy(base: Path, version: str) -> Path:
    """A virtual environment running a copy of dbtkd/dbtkctl at ``version``; its bin dir."""
    source = base / f"src-{version}"
    for package in ("dbtkd", "dbtkctl"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    init = source / "dbtkd" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', f'__version__ = "{version}"  # '))
    env_dir = base / f"venv-{version}"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "dbtk-copy.pth").write_text(f"{source}\n{deps}\n")
    for name in ("dbtkd", "dbtkctl"):
        script = env_dir / "bin" / name
        script.write_text(f"#!{python}\nfrom {name}.__main__ import run\nrun()\n")
        script.chmod(0o755)
    return env_dir / "bin"


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("installs")
    return {v: install_copy(base, v) for v in ("1.0.0", "1.1.0")}


def ctl(bin_dir: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "dbtkctl"), *args],
        env=env_for(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_old(installs: dict[str, Path], home: Path, reaper: ProcessReaper, **env: str) -> dict:
    result = ctl(installs["1.0.0"], home, "port", "--json", "--port-range", "0", **env)
    reaper.track_home(home)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["version"] == "1.0.0"
    return document


class ClientLoop(threading.Thread):
    """GET /api/v1/health with the token in a tight loop; counts outcomes."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__()
        self.port, self.token = port, token
        self.outcomes: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request(
                    "GET", "/api/v1/health", headers={"Authorization": f"Bearer {self.token}"}
                )
                response = conn.getresponse()
                body = json.loads(response.read())
                self.outcomes[f"{response.status} {body.get('version')}"] += 1
            except ConnectionRefusedError:
                self.outcomes["refused"] += 1
            except (ConnectionResetError, http.client.RemoteDisconnected):
                self.outcomes["reset"] += 1
            finally:
                conn.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "worker_start",
    [
        "spawn",
        pytest.param(
            "fork",  # the new supervisor forks its zygote while it holds the handed-over files
            marks=pytest.mark.skipif(not zygote.SUPPORTED, reason="the fork server is Linux's"),
        ),
    ],
)
def test_a_newer_dbtkctl_upgrades_the_daemon_without_refusing_anyone(
    installs: dict[str, Path], home: Path, reaper: ProcessReaper, worker_start: str
) -> None:
    old = start_old(installs, home, reaper, DBTK_WORKER_START=worker_start)
    lease = control_connect(home, timeout=30)
    buffer = bytearray()
    lease.sendall(
        json.dumps({"id": 3, "cmd": "attach", "name": "window", "pid": os.getpid()}).encode()
        + b"\n"
    )
    assert read_line(lease, buffer)["ok"]
    loop = ClientLoop(old["port"], old["token"])
    loop.start()
    try:
        wait_until(lambda: loop.outcomes["200 1.0.0"] > 20, what="answers from the old daemon")
        result = ctl(installs["1.1.0"], home, "port", "--json", DBTK_WORKER_START=worker_start)
        reaper.track_home(home)
        assert result.returncode == 0, result.stderr
        new = json.loads(result.stdout)
        wait_until(lambda: not pid_alive(old["pid"]), timeout=15, what="the old daemon to exit")
        wait_until(lambda: loop.outcomes["200 1.1.0"] > 20, what="answers from the new daemon")
    finally:
        loop.halt.set()
        loop.join(timeout=15)
    assert new["handoff"] == {"from": "1.0.0", "to": "1.1.0"}
    assert new["version"] == "1.1.0"
    assert new["port"] == old["port"]
    assert new["token"] == old["token"]
    assert new["pid"] != old["pid"]
    assert new["started"] is False
    assert loop.outcomes["refused"] == 0, loop.outcomes
    assert set(loop.outcomes) <= {"200 1.0.0", "200 1.1.0", "reset"}, loop.outcomes

    # The window attached before the handoff heard about it and keeps a lease meanwhile.
    event = read_line(lease, buffer)
    while event.get("event") == "keepalive":
        event = read_line(lease, buffer)
    assert event == {"id": 3, "event": "handoff", "version": "1.1.0"}
    lease.close()
    status = control_call(home, "status")
    assert [(c["pid"], c.get("carried")) for c in status["clients"]] == [(os.getpid(), True)]
    assert status["worker_start"] == worker_start
    state = read_state(home)
    assert state is not None
    assert (state["pid"], state["version"], state["port"]) == (new["pid"], "1.1.0", new["port"])
    assert state["nonce"] == json.loads((home / "run" / "dbtkd.json").read_text())["nonce"]


def test_an_older_client_uses_a_newer_daemon_and_a_downgrade_is_refused(
    installs: dict[str, Path], home: Path, reaper: ProcessReaper
) -> None:
    result = ctl(installs["1.1.0"], home, "port", "--json", "--port-range", "0")
    reaper.track_home(home)
    newer = json.loads(result.stdout)
    older_client = ctl(installs["1.0.0"], home, "port", "--json")
    assert older_client.returncode == 0, older_client.stderr
    assert json.loads(older_client.stdout) | {"started": False} == newer | {"started": False}
    downgrade = subprocess.run(
        [str(installs["1.0.0"] / "dbtkd"), "--takeover"],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert downgrade.returncode == 1
    assert "downgrade refused" in downgrade.stderr
    status = control_call(home, "status")
    assert (status["pid"], status["version"], status["state"]) == (newer["pid"], "1.1.0", "running")


def test_a_failed_upgrade_leaves_the_old_daemon_serving_and_says_why(
    installs: dict[str, Path], home: Path, reaper: ProcessReaper
) -> None:
    old = start_old(installs, home, reaper)
    result = ctl(installs["1.1.0"], home, "port", "--json", DBTK_TEST_FAULTS="crash_on_start")
    reaper.track_home(home)
    assert result.returncode == 0, result.stderr
    assert "upgrade failed" in result.stderr
    assert "exited with status 3" in result.stderr
    document = json.loads(result.stdout)
    assert document["handoff"] is None
    assert (document["pid"], document["version"]) == (old["pid"], "1.0.0")
    status = control_call(home, "status")
    assert status["state"] == "running"
    assert "upgrade to 1.1.0 failed" in status["handoff_error"]
    conn = http.client.HTTPConnection("127.0.0.1", old["port"], timeout=10)
    conn.request("GET", "/api/v1/health", headers={"Authorization": f"Bearer {old['token']}"})
    assert conn.getresponse().status == 200
    conn.close()
    # The old daemon still owns its files: stopping it removes them.
    assert ctl(installs["1.0.0"], home, "stop").returncode == 0
    assert not (home / "run" / "dbtkd.json").exists()
    assert not (home / "run" / "dbtkd.sock").exists()
