"""The first worker starts at dbtkd's first line (``dbtkd.spawn.start_early``), before the
supervisor has its settings, lock or port, and gets its socket later over a socket pair.

With real processes: the early worker serves, is the supervisor's child and has the daemon's
umask whatever the caller's; a dbtkd that does not go on (the profile is taken, a bad flag, a
``dbtkd.toml`` that asks for the fork server) leaves no worker of its own behind. The socket
pair itself: the listening socket arrives, and a pair that brings none is refused clearly.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from dbtkd import sockshare, zygote
from tests.support import (
    DBTKD,
    ProcessReaper,
    comm,
    daemon_processes,
    env_for,
    health,
    ppid,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc")


def workers_in(home: Path) -> list[int]:
    """Every live ``dbtkd _worker`` process of the profile ``home``."""
    return [pid for pid in daemon_processes(home) if _is_worker(pid)]


def _is_worker(pid: int) -> bool:
    try:
        return b"_worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # gone meanwhile


def umask(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"/proc/{pid}/status has no Umask")


def test_the_early_worker_serves_as_the_supervisors_child_with_its_umask(
    home: Path, reaper: ProcessReaper
) -> None:
    # Started by a caller with umask 000, the worker still creates files for the user only.
    previous = os.umask(0)
    try:
        daemon = reaper.start(home)
    finally:
        os.umask(previous)
    worker = daemon.worker_pid
    assert health(daemon.port) == 200
    assert ppid(worker) == daemon.pid
    assert umask(worker) == "0077"
    assert workers_in(home) == [worker]


def test_a_second_dbtkd_for_a_taken_profile_ends_its_early_worker(
    home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home)
    second = subprocess.run(
        [DBTKD, "--port-range", "0"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1, second.stderr
    assert "already serves this profile" in second.stderr
    # Its own worker was killed and reaped before it exited: only the first daemon's is left.
    assert workers_in(home) == [daemon.worker_pid]
    assert health(daemon.port) == 200


def test_a_bad_flag_leaves_no_worker_behind(home: Path) -> None:
    refused = subprocess.run(
        [DBTKD, "--port-range", "0", "--no-such-flag"],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "--no-such-flag" in refused.stderr
    assert workers_in(home) == []


@pytest.mark.skipif(not zygote.SUPPORTED, reason="the fork server is Linux's")
def test_a_config_file_asking_for_the_fork_server_discards_the_early_worker(
    home: Path, reaper: ProcessReaper
) -> None:
    (home / "config").mkdir(mode=0o700)
    (home / "config" / "dbtkd.toml").write_text('worker_start = "fork"\n')
    daemon = reaper.start(home)
    status = daemon.status()
    assert status["worker_start"] == "fork"
    # The worker serving is the zygote's fork; the early one, started as ``dbtkd _worker``,
    # is gone.
    assert workers_in(home) == []
    parent = ppid(daemon.worker_pid)
    assert comm(parent) == "dbtkd-zygote"
    assert ppid(parent) == daemon.pid
    assert health(daemon.port) == 200


def test_the_listening_socket_arrives_over_the_socket_pair() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    ours, theirs = sockshare.channel_pair()
    with listener, ours:
        info = sockshare.export_through(ours, theirs.detach(), listener)
        sock, bind = sockshare.import_in_child(info)
        with sock:
            assert sock.getsockname() == listener.getsockname()
            assert bind.startswith("fd://")
            client = socket.create_connection(listener.getsockname(), timeout=5)
            accepted, _ = sock.accept()
            client.close()
            accepted.close()
        os.close(int(bind.removeprefix("fd://")))


def test_a_socket_pair_that_brings_no_socket_is_refused_clearly() -> None:
    ours, theirs = sockshare.channel_pair()
    ours.close()  # the supervisor died before it sent anything
    with pytest.raises(ValueError, match="expected one descriptor on socket pair"):
        sockshare.import_in_child({"recv": theirs.detach()})
