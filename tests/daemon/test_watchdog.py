"""The hang watchdog: pings over the worker's private pipe; silence means hung, busy does not."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import ProcessReaper, control_call, env_for, wait_until


def request(port: int, token: str, method: str, path: str, timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def new_worker(home: Path, old: int, timeout: float) -> int:
    return int(
        wait_until(
            lambda: (
                (s := control_call(home, "status"))["state"] == "running"
                and s["worker_pid"] != old
                and s["worker_pid"]
            ),
            timeout=timeout,
            what="a replacement worker",
        )
    )


def test_a_stopped_worker_is_replaced_and_the_log_says_no_dump_was_possible(
    home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(home, "--watchdog-timeout", "2")
    worker = daemon.worker_pid
    os.kill(worker, signal.SIGSTOP)
    replacement = new_worker(home, worker, timeout=2 + 1 + 5)
    reaper.track(replacement)
    log = (home / "logs" / "dbtkd.log").read_text()
    assert f"worker {worker} unresponsive" in log
    assert "no stack dump was possible" in log
    assert control_call(home, "status")["restarts"] == {"watchdog": 1}
    status, _, _ = daemon.http("GET", "/api/v1/health")
    assert status == 200


def test_a_blocked_event_loop_is_dumped_naming_the_function_before_the_kill(
    home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(
        home, "--watchdog-timeout", "2", env=env_for(home, DBTK_TEST_FAULTS="block")
    )
    worker = daemon.worker_pid
    blocked = threading.Thread(
        target=lambda: _swallow(
            lambda: request(
                daemon.port, daemon.token, "POST", "/api/v1/_test/block?seconds=60", timeout=20
            )
        ),
    )
    blocked.start()
    try:
        reaper.track(new_worker(home, worker, timeout=15))
    finally:
        blocked.join(timeout=30)
    log = (home / "logs" / "dbtkd.log").read_text()
    dump_at = log.index("_test_fault_block_event_loop")
    kill_at = log.index(f"killing unresponsive worker {worker}")
    assert log.index(f"worker {worker} unresponsive") < dump_at < kill_at
    assert "no stack dump was possible" not in log


def _swallow(call: object) -> None:
    # The worker is killed under this request, as intended.
    with contextlib.suppress(OSError, http.client.HTTPException):
        call()  # type: ignore[operator]


@pytest.mark.timeout(120)
def test_busy_is_not_hung_two_hundred_slow_requests_and_a_blocked_loop(
    home: Path, reaper: ProcessReaper
) -> None:
    daemon = reaper.start(
        home, "--watchdog-timeout", "10", env=env_for(home, DBTK_TEST_FAULTS="block")
    )
    worker = daemon.worker_pid

    def slow(_: int) -> int:
        return request(daemon.port, daemon.token, "GET", "/api/v1/_test/sleep?seconds=5")

    with ThreadPoolExecutor(max_workers=201) as pool:
        slow_requests = [pool.submit(slow, i) for i in range(200)]
        block = pool.submit(
            request, daemon.port, daemon.token, "POST", "/api/v1/_test/block?seconds=3"
        )
        assert block.result(timeout=60) == 200
        assert [f.result(timeout=60) for f in slow_requests] == [200] * 200
    status = control_call(home, "status")
    assert status["worker_pid"] == worker
    assert status["restarts"] == {}
    assert "unresponsive" not in (home / "logs" / "dbtkd.log").read_text()
