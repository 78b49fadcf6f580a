"""Nobody else can answer as the daemon (issue 11 item 3), with a real second user.

When the control socket falls back to ``<temp>/dbtk-<uid>/`` (no private runtime dir, or a
``DBTK_HOME`` long enough to move the socket), another local user can create that path first
and listen there. On bdb7a18 ``dbtkctl port --json`` then printed the impostor's port and
token, and the app would have sent it connection passwords. Now every client checks the
directory (a real 0700 directory of the user's), the socket (the user's) and the peer's uid
before it sends a byte; a failed check is exit 1 that sends nothing and starts nothing, and
the daemon itself never starts on someone else's directory.

The impostor is ``nobody`` (``setpriv``), so these tests need root and skip otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbtkd import paths
from tests.support import DBTKD, ProcessReaper, run_ctl, wait_until

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
# The system interpreter: nobody cannot enter /root, where the project's may live.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
ELECTRON = Path(__file__).resolve().parents[2] / "electron"

# An impostor dbtkd: makes the directory (as its owner, 0700 or as told), listens, and
# records every byte any client sends it.
IMPOSTOR = """
import os, socket, sys, threading
address, record, mode = sys.argv[1], sys.argv[2], int(sys.argv[3], 8)
os.makedirs(os.path.dirname(address), exist_ok=True)
os.chmod(os.path.dirname(address), mode)
server = socket.socket(socket.AF_UNIX)
server.bind(address)
os.chmod(address, 0o666)
server.listen(16)
open(record + ".ready", "w").close()
while True:
    conn, _ = server.accept()
    data = conn.recv(65536)
    with open(record, "ab") as out:
        out.write(data or b"")
    conn.sendall(b'{"id": 1, "ok": true, "result": {"port": 1, "token": "stolen"}}\\n')
    conn.close()
"""


@dataclass
class Impostor:
    socket: Path
    record: Path
    proc: subprocess.Popen[bytes]

    def received(self) -> bytes:
        return self.record.read_bytes() if self.record.exists() else b""


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A world-writable, sticky temp dir standing in for /tmp (the test user's TMPDIR); in
    /tmp itself, since nobody cannot reach pytest's private temp dirs."""
    tmp = Path(tempfile.mkdtemp(prefix="dbtk-shared-", dir="/tmp"))
    tmp.chmod(0o1777)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def impostor(address: str, mode: str = "700") -> Iterator[Impostor]:
    record_dir = Path(address).parent.parent / "impostor-record"
    record_dir.mkdir(exist_ok=True)
    os.chown(record_dir, NOBODY, NOBODY)
    record = record_dir / "bytes"
    proc = subprocess.Popen(
        [*AS_NOBODY, SYSTEM_PYTHON, "-c", IMPOSTOR, address, str(record), mode],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: Path(str(record) + ".ready").exists(), 10, what="the impostor")
        yield Impostor(Path(address), record, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    drop = ("DBTK_", "XDG_", "NOTIFY_SOCKET", "TMPDIR", "TEMP", "TMP")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(TMPDIR=str(tmp), **extra)
    return env


def daemons_with(marker: str) -> list[int]:
    """Our dbtkd processes whose environment names ``marker`` (the test's own paths)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
    return [pid for pid in found if pid != os.getpid()]


def long_home(base: Path) -> Path:
    """A DBTK_HOME whose control socket path is too long, so the socket goes to the temp dir."""
    home = base / ("h" * 60) / ("o" * 60)
    home.mkdir(parents=True)
    return home


def assert_refused_sending_nothing(done: object, fake: Impostor) -> None:
    code, err = done.code, done.err  # type: ignore[attr-defined]
    assert code == 1, (code, err)
    assert "refusing to use" in err, err
    assert "impersonating" in err, err
    assert fake.received() == b"", "a client sent bytes to the impostor"


@needs_root
def test_dbtkctl_refuses_a_squatted_socket_of_a_long_dbtk_home(
    tmp_path: Path, shared_tmp: Path
) -> None:
    home = long_home(tmp_path)
    env = clean_env(shared_tmp, DBTK_HOME=str(home))
    address = paths.runtime_paths(env).control_socket
    assert address.startswith(str(shared_tmp / f"dbtk-{os.getuid()}")), address
    with impostor(address) as fake:
        done = run_ctl(home, "port", "--json", env=env)
        assert_refused_sending_nothing(done, fake)
        assert "stolen" not in done.out
        assert daemons_with(str(home)) == [], "a daemon was started"


@needs_root
@pytest.mark.skipif(
    os.path.exists(f"/run/user/{os.getuid()}"),
    reason="this machine has /run/user/<uid>, so the temp-dir fallback is never used",
)
def test_dbtkctl_and_the_daemon_refuse_a_squatted_fallback_runtime_dir(
    tmp_path: Path, shared_tmp: Path, reaper: ProcessReaper
) -> None:
    user_home = tmp_path / "user"
    user_home.mkdir()
    env = clean_env(shared_tmp, HOME=str(user_home))
    address = paths.runtime_paths(env).control_socket
    assert address == str(shared_tmp / f"dbtk-{os.getuid()}" / "dbtkd.sock")
    with impostor(address) as fake:
        done = run_ctl(None, "port", "--json", env=env)  # type: ignore[arg-type]
        assert_refused_sending_nothing(done, fake)
        # The daemon itself, started by hand, never takes someone else's directory.
        proc = subprocess.run(
            [DBTKD, "--port-range", "0"], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0
        assert f"belongs to uid {NOBODY}" in proc.stderr, proc.stderr
        assert fake.received() == b""
        assert daemons_with(str(user_home)) == []


@needs_root
def test_a_socket_of_ours_with_another_user_listening_is_refused_by_peer_uid(
    tmp_path: Path, shared_tmp: Path
) -> None:
    home = long_home(tmp_path)
    env = clean_env(shared_tmp, DBTK_HOME=str(home))
    address = paths.runtime_paths(env).control_socket
    with impostor(address) as fake:
        # Make the directory and the socket file look ours: only the listener is nobody's.
        os.chown(os.path.dirname(address), 0, 0)
        os.chmod(os.path.dirname(address), 0o700)
        os.chown(address, 0, 0)
        done = run_ctl(home, "port", "--json", env=env)
        assert done.code == 1, done.err
        assert f"runs as uid {NOBODY}" in done.err, done.err
        assert fake.received() == b""


@needs_root
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_electron_ensure_backend_refuses_and_starts_nothing(
    tmp_path: Path, shared_tmp: Path
) -> None:
    home = long_home(tmp_path)
    env = clean_env(shared_tmp, DBTK_HOME=str(home))
    address = paths.runtime_paths(env).control_socket
    script = (
        "const { BackendManager } = require(process.argv[1]);"
        "new BackendManager({ home: process.argv[2], dbtkctl: process.argv[3], portRange: '0' })"
        ".ensureBackend().then((b) => { console.log(JSON.stringify(b)); process.exit(0); },"
        " (e) => { console.log(JSON.stringify({ code: e.code, message: e.message }));"
        " process.exit(3); });"
    )
    dbtkctl = str(Path(DBTKD).with_name("dbtkctl"))
    with impostor(address) as fake:
        done = subprocess.run(
            ["node", "-e", script, str(ELECTRON / "backend-manager.js"), str(home), dbtkctl],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 3, (done.stdout, done.stderr)
        error = json.loads(done.stdout)
        assert error["code"] == "daemon_failed"
        assert "refusing to use" in error["message"]
        assert fake.received() == b""
        assert daemons_with(str(home)) == []
