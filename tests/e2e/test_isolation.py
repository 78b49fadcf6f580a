"""Nobody but the daemon's user gets in: other Unix users, and secrets in logs and /proc.

The other-user tests switch uid with ``setpriv`` and so need root; they are skipped with a
reason otherwise (as root, ``chmod`` does not stop us, so a real second uid is the test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import (
    DBTKD,
    ProcessReaper,
    assert_closed,
    env_for,
    read_line,
    run_ctl,
    wait_until,
)

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@needs_root
def test_another_user_cannot_open_the_control_socket(daemon_home_open: Path) -> None:
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(daemon_home_open / 'run' / 'dbtkd.sock')!r})\n"
        "except PermissionError as e:\n"
        "    print('EACCES', e.errno)\n"
    )
    proc = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", probe], capture_output=True, text=True, timeout=30
    )
    assert proc.stdout.strip() == "EACCES 13", proc.stderr
    cli = subprocess.run(
        [*AS_NOBODY, str(Path(sys.executable).parent / "dbtkctl"), "port"],
        env=env_for(daemon_home_open),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 1
    # nobody's dbtkctl sees a directory of root's where its daemon should be: it refuses
    # before connecting (issue 11 item 3), saying whose it is.
    assert "belongs to uid 0" in cli.stderr, cli.stderr


@pytest.fixture
def daemon_home_open(home: Path, reaper: ProcessReaper) -> Path:
    """A root daemon in a home that other users may traverse (only run/ is private)."""
    reaper.start(home)
    assert (home.stat().st_mode & 0o005) == 0o005
    return home


@needs_root
def test_a_daemon_of_another_user_answers_root_with_forbidden(
    home: Path, reaper: ProcessReaper
) -> None:
    os.chown(home, NOBODY, NOBODY)
    # The daemon runs as nobody; DAC override lets it read this root-owned checkout, and has
    # no bearing on the peer-uid check under test.
    proc = subprocess.Popen(
        [
            *AS_NOBODY,
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
            DBTKD,
            "--port-range",
            "0",
        ],
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    reaper.procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("BACKEND_PORT:")
    state = json.loads((home / "run" / "dbtkd.json").read_text())
    reaper.track(state["worker_pid"])
    assert os.stat(f"/proc/{state['pid']}").st_uid == NOBODY
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(state["control_socket"])
        sock.sendall(b'{"id": 1, "cmd": "port"}\n')
        reply = read_line(sock)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "forbidden"
        assert "token" not in json.dumps(reply)
        assert_closed(sock)
    # root's dbtkctl now refuses before it connects: the run dir is nobody's (issue 11 item 3).
    result = run_ctl(home, "port", "--no-start")
    assert result.code == 1
    assert f"belongs to uid {NOBODY}" in result.err, result.err


def find_token(token: str, home: Path, texts: dict[str, bytes]) -> list[str]:
    """Every place under ``home`` or in ``texts`` that contains the token."""
    hits = [name for name, data in texts.items() if token.encode() in data]
    for path in home.rglob("*"):
        if path.is_file() and not path.is_socket() and token.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def test_the_token_never_reaches_logs_files_argv_or_environment(
    home: Path, reaper: ProcessReaper
) -> None:
    env = env_for(home, DBTK_TEST_FAULTS="raise")
    daemon = reaper.start(home, "--log-level", "debug", env=env)
    token = daemon.token
    status, _, _ = daemon.http("GET", "/api/v1/_test/raise")
    assert status == 500
    status, _, _ = daemon.http("GET", f"/api/v1/health?token={token}")
    assert status == 200
    # A refused WebSocket handshake that carries the token (no dbtk.v1 offered → 403).
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as ws:
        ws.sendall(
            f"GET /ws/logs HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Protocol: dbtk.bearer.{token}\r\n\r\n".encode()
        )
        assert ws.recv(4096).startswith(b"HTTP/1.1 403")
    port_json = run_ctl(home, "port", "--json", env=env)
    assert json.loads(port_json.out)["token"] == token  # the one place it belongs
    procs = {}
    for pid in (daemon.pid, daemon.worker_pid):
        procs[f"/proc/{pid}/cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
        procs[f"/proc/{pid}/environ"] = Path(f"/proc/{pid}/environ").read_bytes()
    wait_until(
        lambda: b"/api/v1/health" in (home / "logs" / "dbtkd.log").read_bytes(),
        what="the access log line",
    )
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=10)
    assert daemon.proc.stderr is not None
    procs["daemon stderr"] = daemon.proc.stderr.read().encode()
    procs["dbtkctl stderr"] = port_json.err.encode()
    log = (home / "logs" / "dbtkd.log").read_text()
    assert "Traceback" in log  # the 500 was logged, so the scan below has something to scan
    assert "GET /api/v1/health" in log  # and so was the access log line, without its query
    assert find_token(token, home, procs) == []
    # The scan itself can fail: a planted copy is found.
    (home / "data" / "planted").parent.mkdir(exist_ok=True)
    (home / "data" / "planted").write_text(token)
    assert find_token(token, home, procs) == [str(home / "data" / "planted")]
