"""Run the daemon's life once on this machine and report each step: the first thing to run on
an OS the test suite has not run on (Windows, macOS).

    python tools/platform_check.py                       # the source install (dbtkctl on PATH
                                                         # or python -m dbtkctl)
    python tools/platform_check.py --bin dist\\db-toolkit-backend   # the frozen build

Steps, each timed and bounded: ``dbtkctl version``; ``start`` in a fresh temporary profile
(``--home``: never the user's own daemon); ``port`` and ``GET /health`` on that port; the
worker killed from outside (``taskkill /F`` on Windows, SIGKILL elsewhere) and a new worker
serving on the same port; ``stop``; the supervisor and worker gone. It prints one line per
step and a JSON report (``--json``), exits 0 only if every step passed, and stops the daemon
it started whatever happens. Stdlib only; the same script is run on Linux by
``tests/e2e/test_platform_check.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

STEP_TIMEOUT = 30.0  # seconds any one step may take
POLL = 0.05


class StepFailed(Exception):
    pass


def dbtkctl_argv(bin_dir: str | None) -> list[str]:
    if bin_dir:
        name = "dbtkctl.exe" if sys.platform == "win32" else "dbtkctl"
        return [os.path.join(bin_dir, name)]
    return [sys.executable, "-m", "dbtkctl"]


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL)
    raise StepFailed(f"timed out after {STEP_TIMEOUT:.0f} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        listed = subprocess.run(
            ["tasklist", "/FI", f"PID eq {pid}", "/NH", "/FO", "CSV"],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        return f'"{pid}"' in listed.stdout
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def kill_hard(pid: int) -> None:
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/PID", str(pid)], capture_output=True, check=True)
    else:
        os.kill(pid, signal.SIGKILL)


def health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


class Check:
    def __init__(self, ctl: list[str], home: str) -> None:
        self.ctl = ctl
        self.home = home
        self.steps: list[dict[str, Any]] = []
        self.pids: list[int] = []

    def run_ctl(self, *args: str) -> tuple[int, Any]:
        done = subprocess.run(
            [*self.ctl, *args, "--home", self.home, "--json"],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        try:
            document = json.loads(done.stdout)
        except ValueError:
            document = {"stdout": done.stdout[-500:], "stderr": done.stderr[-500:]}
        return done.returncode, document

    def ctl_ok(self, *args: str) -> Any:
        code, document = self.run_ctl(*args)
        if code != 0:
            raise StepFailed(f"dbtkctl {' '.join(args)} exited {code}: {document}")
        return document

    def step(self, name: str, action: Callable[[], str]) -> bool:
        started = time.monotonic()
        try:
            detail, ok = action(), True
        except (StepFailed, OSError, subprocess.SubprocessError) as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        seconds = round(time.monotonic() - started, 3)
        self.steps.append({"step": name, "ok": ok, "seconds": seconds, "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {name:<32} {seconds:7.3f} s  {detail}", flush=True)
        return ok

    def version(self) -> str:
        # version takes no --home (it asks the daemon nothing) but accepts --json
        done = subprocess.run(
            [*self.ctl, "version", "--json"], capture_output=True, text=True, timeout=STEP_TIMEOUT
        )
        if done.returncode != 0:
            raise StepFailed(f"dbtkctl version exited {done.returncode}: {done.stderr[-300:]}")
        return done.stdout.strip().replace("\n", " ")[:120]

    def start(self) -> str:
        document = self.ctl_ok("start")
        self.pids.append(int(document["pid"]))
        return f"supervisor pid {document['pid']}, port {document['port']}"

    def port(self) -> str:
        port = int(self.ctl_ok("port")["port"])
        status = wait_for(lambda: health(port) == 200, f"GET /health on {port}")
        return f"port {port}, GET /health {200 if status else '?'}"

    def kill_worker(self) -> str:
        before = self.ctl_ok("status")
        old, port = int(before["worker_pid"]), int(before["port"])
        self.pids.append(old)
        kill_hard(old)
        started = time.monotonic()

        def replaced() -> Any:
            code, status = self.run_ctl("status")
            new = status.get("worker_pid") if code == 0 else None
            return new if new not in (None, old) and health(port) == 200 else None

        new = int(wait_for(replaced, "a new worker serving"))
        self.pids.append(new)
        after = self.ctl_ok("status")
        if int(after["port"]) != port:
            raise StepFailed(f"the port changed from {port} to {after['port']}")
        if pid_alive(old):
            raise StepFailed(f"the killed worker {old} still runs")
        gap = time.monotonic() - started
        return f"worker {old} -> {new} on port {port}, serving again after {gap:.3f} s"

    def stop(self) -> str:
        document = self.ctl_ok("stop")
        if not document.get("was_running"):
            raise StepFailed(f"stop found no daemon: {document}")
        return f"stopped pid {document.get('pid')}"

    def nothing_left(self) -> str:
        wait_for(lambda: not any(pid_alive(pid) for pid in self.pids), "every process to exit")
        code, status = self.run_ctl("status")
        if code != 3:
            raise StepFailed(f"status after stop exited {code}, expected 3 (stopped): {status}")
        return f"processes {self.pids} gone; status exits 3"

    def cleanup(self) -> None:
        """Stop the daemon we started, whatever failed (never another one: our own --home)."""
        if self.pids:
            self.run_ctl("stop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", help="folder of the frozen build (dbtkctl[.exe] in it)")
    parser.add_argument("--json", action="store_true", help="print the JSON report at the end")
    parser.add_argument("--home", help="profile to use (default: a new temporary one)")
    options = parser.parse_args(argv)
    home = options.home or tempfile.mkdtemp(prefix="dbtk-check-")
    check = Check(dbtkctl_argv(options.bin), home)
    print(f"{platform.platform()}, Python {platform.python_version()}, profile {home}")
    try:
        for name, action in (
            ("dbtkctl version", check.version),
            ("start", check.start),
            ("port and /health", check.port),
            ("worker killed, replaced", check.kill_worker),
            ("stop", check.stop),
            ("nothing left running", check.nothing_left),
        ):
            if not check.step(name, action):
                break
    finally:
        check.cleanup()
    passed = len(check.steps) == 6 and all(step["ok"] for step in check.steps)
    if options.json:
        report = {"platform": platform.platform(), "passed": passed, "steps": check.steps}
        print(json.dumps(report, indent=1))
    if passed and not options.home:
        shutil.rmtree(home, ignore_errors=True)
    else:
        print(f"kept the profile for its log: {home}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
