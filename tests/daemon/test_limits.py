"""Limits an unprivileged local process can hit (issue 11 item 7), against the real daemon.

A thousand half-open connections, connections over the cap, descriptors running out, and a
worker printing a flood: each time the daemon keeps serving, writes no traceback per
connection and keeps its log history.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    Daemon,
    ProcessReaper,
    connections_held,
    env_for,
    health,
    wait_until,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

HALF_OPEN = 1000
USUAL_SOFT_LIMIT = 1024  # what most desktops give a program
PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1"  # never finished


def log_text(home: Path) -> str:
    return (home / "logs" / "dbtkd.log").read_text(errors="replace")


def all_logs(home: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((home / "logs").iterdir()))


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_limit_of(pid: int) -> int:
    return resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def own_soft_limit(soft: int) -> Iterator[None]:
    """Run with our soft open-files limit at ``soft`` (children inherit it), then restore."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@contextlib.contextmanager
def connections(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    """``count`` connections to ``port`` that send ``first_bytes`` and never more."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            held.append(sock)
            if first_bytes:
                sock.sendall(first_bytes)
        yield held
    finally:
        for sock in held:
            sock.close()


def served(port: int) -> bool:
    """``GET /health`` answered 200; a refusal (503, or a reset racing it) is False."""
    try:
        return health(port) == 200
    except ConnectionError:
        return False


def answer(sock: socket.socket) -> bytes:
    """Everything the daemon sends on ``sock`` until it closes it (a reset counts as closed)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.fixture
def many_files() -> Iterator[None]:
    """Lift our own soft limit while the test holds over a thousand sockets."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = before[1]
    if hard != resource.RLIM_INFINITY and hard < 4 * HALF_OPEN:
        pytest.skip(f"needs a hard open-files limit of at least {4 * HALF_OPEN}, have {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.mark.timeout(120)
def test_a_thousand_half_open_connections_cost_no_traceback_and_no_log_history(
    home: Path, reaper: ProcessReaper, many_files: None
) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True)
    for n in range(1, 5):  # history from earlier runs, which rotation would push out
        (logs / f"dbtkd.log.{n}").write_text(f"history marker {n}\n")
    with own_soft_limit(USUAL_SOFT_LIMIT):
        daemon = reaper.start(home)
    worker = daemon.worker_pid
    # Both raised their soft limit to the hard one at start.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert soft_limit_of(daemon.pid) == hard
    assert soft_limit_of(worker) == hard
    size_before = (logs / "dbtkd.log").stat().st_size

    # Half send nothing, half an unfinished request head.
    with (
        connections(daemon.port, HALF_OPEN // 2) as silent,
        connections(daemon.port, HALF_OPEN // 2, PARTIAL_HEAD) as partial,
    ):
        wait_until(lambda: open_files(worker) >= HALF_OPEN, 30, what="the worker to accept all")
        # A legitimate client is served while they are held.
        status, _, body = daemon.http("GET", "/api/v1/status")
        assert status == 200, body
        assert health(daemon.port) == 200
        # Connections that never complete a request are closed by the daemon (Hypercorn's
        # keep-alive timeout), without an answer to the unfinished request.
        for sock in silent + partial:
            assert answer(sock) == b""

    assert daemon.proc.poll() is None
    status_now = daemon.status()
    assert status_now["state"] == "running"
    assert status_now["worker_pid"] == worker, "the worker was not replaced"
    text = log_text(home)
    assert "Traceback" not in text, text[-3000:]
    growth = (logs / "dbtkd.log").stat().st_size - size_before
    assert growth < 16 * 1024, f"the log grew by {growth} bytes:\n{text[-3000:]}"
    history = all_logs(home)
    for n in range(1, 5):
        assert f"history marker {n}" in history


@pytest.mark.timeout(120)
def test_connections_over_the_cap_are_answered_503_with_one_log_line(
    daemon: Daemon, many_files: None
) -> None:
    from dbtkd import listener

    # A worker on a hard limit of 1024 serves 768 connections at once.
    hard_limit = 1024
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (hard_limit, hard_limit))
    assert daemon.ctl("restart").code == 0
    worker = daemon.worker_pid
    assert soft_limit_of(worker) == hard_limit
    cap = listener.connection_cap(hard_limit)
    with connections(daemon.port, cap) as held:
        # Counted as connections, not as descriptors: a probe's or a module file's descriptor
        # that closes meanwhile would make a descriptor count fall short.
        wait_until(
            lambda: connections_held(worker, daemon.port) >= cap,
            30,
            what="the worker to accept all",
        )
        with connections(daemon.port, 10) as extra:
            for sock in extra:
                reply = answer(sock)
                assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), reply
                assert b"Retry-After: 1\r\n" in reply
                assert b'"error": "too_many_connections"' in reply
        for sock in held[:10]:
            sock.close()
        # Slots come back as soon as their clients leave.
        wait_until(lambda: served(daemon.port), 10, what="a slot for a new client")
    text = log_text(daemon.home)
    assert "Traceback" not in text, text[-3000:]
    assert text.count("dbtkd.listener: refused") == 1, text[-3000:]
    assert daemon.status()["worker_pid"] == worker


@pytest.mark.timeout(120)
def test_running_out_of_descriptors_below_the_cap_refuses_cleanly(
    daemon: Daemon, many_files: None
) -> None:
    worker = daemon.worker_pid
    limits = resource.prlimit(worker, resource.RLIMIT_NOFILE)
    # Leave the worker room for 20 more descriptors, far below its connection cap.
    resource.prlimit(worker, resource.RLIMIT_NOFILE, (open_files(worker) + 20, limits[1]))
    try:
        with connections(daemon.port, 100) as held:
            refused = [
                reply
                for sock in held[40:]
                if (reply := answer(sock)).startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            ]
            assert len(refused) == 60
    finally:
        resource.prlimit(worker, resource.RLIMIT_NOFILE, limits)
    wait_until(lambda: served(daemon.port), 10, what="the worker to serve again")
    # The worker's lines reach the log through the supervisor's pipe: wait for them.
    wait_until(
        lambda: "out of file descriptors" in log_text(daemon.home), 10, what="the refusal logged"
    )
    text = log_text(daemon.home)
    assert "Traceback" not in text, text[-3000:]
    assert daemon.status()["worker_pid"] == worker


@pytest.mark.timeout(180)
def test_a_worker_output_flood_is_summed_up_and_the_log_history_kept(
    home: Path, reaper: ProcessReaper
) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True)
    for n in range(1, 5):
        (logs / f"dbtkd.log.{n}").write_text(f"history marker {n}\n")
    # Small files, so that an unthrottled flood would rotate the history away many times.
    env = env_for(home, DBTK_TEST_FAULTS="raise", DBTK_LOG_MAX_BYTES=str(256 * 1024))
    daemon = reaper.start(home, env=env)
    # Each failing request makes the worker print a traceback: 600 of them are over 2 MiB.
    for _ in range(600):
        status, _, _ = daemon.http("GET", "/api/v1/_test/raise")
        assert status == 500
    wait_until(
        lambda: "similar lines suppressed" in all_logs(home),
        30,
        what="a summary of the suppressed lines",
    )
    history = all_logs(home)
    for n in range(1, 5):
        assert f"history marker {n}" in history, "the flood rotated the history away"
    assert "test fault 'raise'" in history  # the first tracebacks are written whole
    assert daemon.status()["state"] == "running"
