"""The change feed (``/ws/events``) with 8 windows: event latency, and CPU while idle (issue 19).

- **latency**: 8 windows (WebSocket clients, one thread each, ``websockets``' sync client)
  subscribe; another client saves ``--changes`` connections one after another. For each change
  and window: the time the window received the event minus the time the saving client had read
  the API's answer. Negative means the event beat the answer (the route publishes before it
  answers). p50, p99 and max over all windows and changes.
- **idle CPU**: the same 8 windows stay subscribed with nothing happening for
  ``--idle-seconds`` (default 60); the worker's CPU time over that span (``/proc/PID/stat``
  utime + stime), as seconds and as a share of one core; then the same span with no window,
  the worker's own floor (its heartbeats to the supervisor).

    .venv/bin/python -m bench.bench_events [--windows 8] [--changes 200] [--idle-seconds 60]
        [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import websockets.sync.client
from websockets.typing import Subprotocol

from bench.bench_query_pages import BIN, HOST, Daemon, progress, running_daemon

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MS = 1000.0


def open_window(
    daemon: Daemon, stack: contextlib.ExitStack
) -> websockets.sync.client.ClientConnection:
    """A subscribed window, closed when ``stack`` closes."""
    socket = stack.enter_context(
        websockets.sync.client.connect(
            f"ws://{HOST}:{daemon.port}/ws/events",
            subprotocols=[Subprotocol("dbtk.v1"), Subprotocol(f"dbtk.bearer.{daemon.token}")],
            open_timeout=10,
        )
    )
    hello = json.loads(socket.recv(timeout=10))
    if hello.get("type") != "hello":
        raise RuntimeError(f"expected hello first; got {hello!r:.200}")
    return socket


def worker_cpu_seconds(daemon: Daemon) -> float:
    status = subprocess.run(
        [os.path.join(BIN, "dbtkctl"), "status", "--json"],
        env={**os.environ, "DBTK_HOME": daemon.home},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    pid = json.loads(status.stdout)["worker_pid"]
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def latency(daemon: Daemon, directory: str, windows: int, changes: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        sockets = [open_window(daemon, stack) for _ in range(windows)]
        return _latency(daemon, directory, sockets, changes)


def _latency(
    daemon: Daemon,
    directory: str,
    sockets: list[websockets.sync.client.ClientConnection],
    changes: int,
) -> dict[str, float]:
    windows = len(sockets)
    received: list[dict[str, float]] = [{} for _ in sockets]

    def listen(index: int) -> None:
        while len(received[index]) < changes:
            message = json.loads(sockets[index].recv(timeout=30))
            if message.get("type") == "change":
                received[index][message["id"]] = time.perf_counter()

    threads = [threading.Thread(target=listen, args=(i,), daemon=True) for i in range(windows)]
    for thread in threads:
        thread.start()
    answered: dict[str, float] = {}
    for number in range(changes):
        profile = {"name": f"e{number}", "db_type": "sqlite", "database": f"{directory}/e.db"}
        created = daemon.request("POST", "/api/v1/connections", profile)
        answered[created["id"]] = time.perf_counter()
    for thread in threads:
        thread.join(timeout=60)
    samples = sorted(
        (window[key] - at) * MS
        for window in received
        for key, at in answered.items()
        if key in window
    )
    missing = windows * changes - len(samples)
    if missing:
        raise RuntimeError(f"{missing} events never reached their window")
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "max_ms": samples[-1],
        "samples": len(samples),
    }


def idle_cpu(daemon: Daemon, windows: int, seconds: float) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        for _ in range(windows):
            open_window(daemon, stack)
        before = worker_cpu_seconds(daemon)
        time.sleep(seconds)  # the bench measures idleness: nothing to wait for
        used = worker_cpu_seconds(daemon) - before
    return {"cpu_seconds": used, "share_of_one_core": used / seconds, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args(argv)
    with running_daemon() as daemon, tempfile.TemporaryDirectory() as directory:
        progress(f"latency: {options.changes} changes to {options.windows} windows")
        figures: dict[str, Any] = {
            "latency": latency(daemon, directory, options.windows, options.changes)
        }
        progress(f"idle: {options.windows} windows for {options.idle_seconds:g} s")
        figures["idle"] = idle_cpu(daemon, options.windows, options.idle_seconds)
        progress(f"idle: no window for {options.idle_seconds:g} s (the worker's own floor)")
        figures["idle_floor"] = idle_cpu(daemon, 0, options.idle_seconds)
    if options.json:
        print(json.dumps(figures, indent=2))
        return 0
    lat, idle, floor = figures["latency"], figures["idle"], figures["idle_floor"]
    print(
        f"event latency, answer → other window, {options.windows} windows x {options.changes} "
        f"changes: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
        f"max {lat['max_ms']:.2f} ms (aim p99 < 20 ms)"
    )
    print(
        f"worker CPU with {options.windows} idle windows over {idle['seconds']:g} s: "
        f"{idle['cpu_seconds']:.3f} s ({idle['share_of_one_core'] * 100:.3f} % of a core; "
        f"aim ≈ 0); with no window: {floor['cpu_seconds']:.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
