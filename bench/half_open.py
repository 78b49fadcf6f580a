"""Half-open load: a legitimate client's latency while 1000 idle connections are held open.

Issue 11 item 7: with the usual soft open-files limit of 1024, 1000 connections that never
send a request (any local process can open them) raised a legitimate client's p99 to 5.2 s
and wrote 1777 tracebacks (27 MB in 30 s) into the log. One daemon, ``dbtkd --port-range 0``
started directly with the bench's soft ``RLIMIT_NOFILE`` lowered to 1024 (so it starts as a
desktop would start it; the bench itself then lifts its own limit to hold the connections).

- **half-open**: 1000 connections are opened and held, half silent, half with an unfinished
  request head; a holder thread replaces each one the daemon closes (its keep-alive timeout
  closes them after 5 s), so 1000 stay open for the whole phase, as a hostile process would
  keep them. Once the worker holds them all, its PSS is read, then the client sends
  ``GET /health`` in a loop, a new connection each time, for the phase's duration (10 s,
  ``--quick`` 3 s); every latency is kept.
- **quiet**: the connections closed, the same client loop for the same time.

Reported per phase: p50 and p99 (nearest rank) of the client's latencies, failures (any
status but 200, any connection error); for the half-open phase also the connections the
holder had to reopen, how much the log grew and how many tracebacks it gained, and the
worker's PSS with the connections held. The ratio is p99 half-open / p99 quiet, both from the
same run. No budget (issue 11 sets none); the "baseline" column is the quiet phase.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import selectors
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    MIB,
    MS,
    START_DEADLINE,
    Bench,
    BenchError,
    FigureResult,
    Row,
    memory_of,
    progress,
    read_line,
    standalone,
)

HALF_OPEN = 1000
USUAL_SOFT_LIMIT = 1024
DEFAULT_SECONDS = 10.0
QUICK_SECONDS = 3.0
PARTIAL_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1"
CLIENT_TIMEOUT = 30.0
PORT_PREFIX = "BACKEND_PORT:"


def _start(bench: Bench, home: Path) -> subprocess.Popen[bytes]:
    """``dbtkd`` in the foreground, started with a soft open-files limit of 1024."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(USUAL_SOFT_LIMIT, before[1]), before[1]))
    try:
        return bench.popen(
            [bench.project_venv / "bin" / "dbtkd", "--port-range", "0"],
            home=home,
            name="dbtkd-half-open",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def _port(bench: Bench, proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    deadline = time.perf_counter() + START_DEADLINE
    while True:
        try:
            line = read_line(proc.stdout, deadline)
        except BenchError as exc:
            raise BenchError(f"dbtkd: {exc}\n{bench.stderr_of(proc)}") from None
        if line.startswith(PORT_PREFIX):
            return int(line.removeprefix(PORT_PREFIX))


def _client(port: int, seconds: float) -> dict[str, Any]:
    """``GET /health`` in a loop on new connections; every latency, and the failures."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            outcome = "ok" if response.status == 200 else f"status {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
        finally:
            conn.close()
        latencies.append(time.perf_counter() - started)
        if outcome != "ok":
            failures[outcome] = failures.get(outcome, 0) + 1
    return {"latencies": latencies, "failures": failures}


class Holder:
    """Holds ``HALF_OPEN`` idle connections to ``port``, reopening each one the daemon closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.reopened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="half-open holder", daemon=True)

    def _open(self, index: int) -> None:
        sock = socket.create_connection((HOST, self.port), timeout=CLIENT_TIMEOUT)
        if index % 2:
            sock.sendall(PARTIAL_HEAD)
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, index)

    def start(self) -> None:
        for index in range(HALF_OPEN):
            self._open(index)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    if sock.recv(65536):
                        continue  # an answer to a partial head would be a bug; keep holding
                self.selector.unregister(sock)
                sock.close()
                with contextlib.suppress(OSError):
                    self._open(key.data)
                    self.reopened += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def _wait_accepted(worker: int, count: int) -> None:
    """Until the worker holds ``count`` more descriptors than it had (it accepted them all)."""
    deadline = time.perf_counter() + START_DEADLINE
    while len(os.listdir(f"/proc/{worker}/fd")) < count:
        if time.perf_counter() > deadline:
            raise BenchError(f"the worker did not accept {count} connections in time")
        time.sleep(0.01)


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _phase_text(phase: dict[str, Any]) -> str:
    lat = phase["latencies"]
    failed = sum(phase["failures"].values())
    return (
        f"p50 {_percentile(lat, 0.5) * MS:.2f} ms, p99 {_percentile(lat, 0.99) * MS:.2f} ms "
        f"({len(lat)} requests, {failed} failed)"
    )


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    seconds = float(samples) if samples else (QUICK_SECONDS if bench.quick else DEFAULT_SECONDS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * HALF_OPEN + 100:
        raise BenchError(f"needs a hard open-files limit of {2 * HALF_OPEN + 100}, have {hard}")
    home = bench.new_home()
    proc = _start(bench, home)
    log = home / "logs" / "dbtkd.log"
    holder: Holder | None = None
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        port = _port(bench, proc)
        status = bench.status(home)
        worker = int(status["worker_pid"])
        idle_pss = memory_of([worker])
        log_before = log.stat().st_size
        tracebacks_before = log.read_text(errors="replace").count("Traceback")
        progress(f"half-open: {HALF_OPEN} connections held, {seconds:g} s")
        holder = Holder(port)
        holder.start()
        _wait_accepted(worker, HALF_OPEN)
        # Before the client runs: its own connections leave garbage behind for a while.
        held_pss = memory_of([worker])
        loaded = _client(port, seconds)
        reopened = holder.reopened
        holder.close()
        holder = None
        text = log.read_text(errors="replace")
        log_growth = log.stat().st_size - log_before
        tracebacks = text.count("Traceback") - tracebacks_before
        progress(f"half-open: quiet phase, {seconds:g} s")
        quiet = _client(port, seconds)
        after = bench.status(home)
        if after["state"] != "running" or int(after["worker_pid"]) != worker:
            raise BenchError(f"the worker did not survive the half-open load: {after}")
    finally:
        if holder is not None:
            holder.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        bench.stop_daemon(home)
        bench.reap(proc)
    quiet_p99 = _percentile(quiet["latencies"], 0.99)
    loaded_p99 = _percentile(loaded["latencies"], 0.99)
    data = {
        "seconds_per_phase": seconds,
        "half_open": HALF_OPEN,
        "quiet": quiet,
        "half_open_phase": loaded,
        "reopened": reopened,
        "log_growth_bytes": log_growth,
        "tracebacks": tracebacks,
        "worker_pss_kib_idle": idle_pss,
        "worker_pss_kib_held": held_pss,
    }
    rows = [
        Row(
            figure=(
                f"GET /health while {HALF_OPEN} half-open connections are held "
                "(soft limit 1024 at start)"
            ),
            dbtkd=_phase_text(loaded),
            baseline=f"quiet: {_phase_text(quiet)}",
            ratio=loaded_p99 / quiet_p99,
            budget="none (issue 11: p99 was 5.2 s)",
        ),
        Row(
            figure=f"half-open load: log and memory ({seconds:g} s)",
            dbtkd=(
                f"log +{log_growth} B, {tracebacks} tracebacks, {reopened} reopened; worker "
                f"PSS {held_pss['pss_kib'] / MIB:.1f} MiB held vs "
                f"{idle_pss['pss_kib'] / MIB:.1f} MiB idle"
            ),
            baseline="n/a",
            budget="none (issue 11: 1777 tracebacks, 27 MB in 30 s)",
        ),
    ]
    return FigureResult("half_open", rows, data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
