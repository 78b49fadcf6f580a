"""Handoff gap: a newer ``dbtkctl port`` upgrades a running daemon while clients keep asking.

Two installed copies of this tree, versions 1.0.0 and 1.1.0, are built in the temp dir like
``install_copy`` in ``tests/e2e/test_handoff.py`` (the source copied with its own
``__version__``, a ``venv --without-pip`` made from the project venv's base python3, a ``.pth``
putting the copy first and the project venv's packages after it, console-script wrappers).

Each round (5, ``--quick`` 2; at least 5 for the figures of record), in a fresh
``DBTK_HOME``: the old copy's ``dbtkctl port --json --port-range 0`` starts the 1.0.0 daemon;
2 client threads send ``GET /api/v1/health`` with the token in a tight loop, a new connection
per request (``http.client``, 10 s timeout); after 0.3 s of traffic the new copy's
``dbtkctl port --json`` runs, timed from before ``Popen`` to after ``communicate()``. The
clients go on until the old supervisor and worker have exited and each client has had a 200
from 1.1.0. Measured per round: that call's time and exit status; the longest gap between
consecutive 200s in any one client (end to end) among those that span the handoff, from the
call's start until the old daemon is gone; refused (``ConnectionRefusedError``), reset
(``ConnectionResetError``, including ``RemoteDisconnected``, ``BrokenPipeError``,
``IncompleteRead``) and other outcomes; whether the port and the token in the new
``port --json`` equal the old ones, and that it reports the handoff 1.0.0 → 1.1.0 (issue 3
item 4). A call that exits non-zero is counted, not fatal: the port and token are then read
from a second, unmeasured ``dbtkctl port --json`` (what a client retrying would see). The new
daemon is stopped with the new copy's ``dbtkctl stop`` (then by pid, like every daemon of the
run).

Budget (issue 3): 0 refused connections, port unchanged.
"""

from __future__ import annotations

import http.client
import itertools
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    CTL_TIMEOUT,
    HOST,
    REPO,
    START_DEADLINE,
    Bench,
    BenchError,
    FigureResult,
    Row,
    Summary,
    base_interpreter,
    pid_alive,
    progress,
    standalone,
)

OLD, NEW = "1.0.0", "1.1.0"
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2
CLIENTS = 2
LEAD_IN = 0.3  # seconds of traffic to the old daemon before the upgrade
CLIENT_TIMEOUT = 10.0
SWITCH_DEADLINE = 20.0
OK = "200"

# One request: (start, end, outcome, version that answered), perf_counter seconds.
Attempt = tuple[float, float, str, str]


def install_copy(bench: Bench, base: Path, version: str) -> Path:
    """A venv running a copy of dbtkd/dbtkctl at ``version``; its bin dir.

    As ``tests/e2e/test_handoff.py``'s ``install_copy``, except that the venv comes from the
    project venv's base interpreter and the dependencies from the project venv (not from the
    interpreter running the bench, which ``DBTK_BENCH_PYTHON`` may change).
    """
    source = base / f"src-{version}"
    for package in ("dbtkd", "dbtkctl"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    init = source / "dbtkd" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', f'__version__ = "{version}"  # '))
    env_dir = base / f"venv-{version}"
    purelib_of = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    made = bench.run(
        [base_interpreter(bench.project_venv), "-m", "venv", "--without-pip", env_dir],
        home=None,
        timeout=CTL_TIMEOUT,
    )
    if made.returncode != 0:
        raise BenchError(f"venv {env_dir}: {made.stderr}")
    python = env_dir / "bin" / "python"
    paths = [
        bench.run([p, "-c", purelib_of], home=None, timeout=CTL_TIMEOUT)
        for p in (python, bench.project_python)
    ]
    if any(done.returncode != 0 for done in paths):
        raise BenchError(f"sysconfig: {[done.stderr for done in paths]}")
    purelib, deps = (done.stdout.strip() for done in paths)
    Path(purelib, "dbtk-copy.pth").write_text(f"{source}\n{deps}\n")
    for name in ("dbtkd", "dbtkctl"):
        script = env_dir / "bin" / name
        script.write_text(f"#!{python}\nfrom {name}.__main__ import run\nrun()\n")
        script.chmod(0o755)
    return env_dir / "bin"


def probe(port: int, token: str) -> tuple[str, str]:
    """One ``GET /api/v1/health`` with the token on a new connection: (outcome, version)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", "/api/v1/health", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return f"status {response.status}", ""
        return OK, str(json.loads(body).get("version"))
    except ConnectionRefusedError:
        return "refused", ""
    except (ConnectionResetError, BrokenPipeError, http.client.IncompleteRead):
        return "reset", ""
    except TimeoutError:
        return "timeout", ""
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"error {type(exc).__name__}", ""
    finally:
        conn.close()


class Clients:
    """``CLIENTS`` threads running ``probe`` in a loop until ``halt``."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.attempts: list[list[Attempt]] = [[] for _ in range(CLIENTS)]
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"client-{i}", daemon=True)
            for i in range(CLIENTS)
        ]

    def _loop(self, index: int) -> None:
        mine = self.attempts[index]
        while not self.halt.is_set():
            start = time.perf_counter()
            outcome, version = probe(self.port, self.token)
            mine.append((start, time.perf_counter(), outcome, version))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT + 1)

    def each_has(self, version: str) -> bool:
        return all(any(a[3] == version for a in list(mine)) for mine in self.attempts)


def _wait(condition: Any, what: str, deadline: float) -> None:
    while not condition():
        if time.perf_counter() > deadline:
            raise BenchError(f"handoff: {what}: not in time")
        time.sleep(0.01)


def longest_gap(attempts: list[Attempt], since: float, until: float) -> float:
    """The longest time between the ends of consecutive 200s spanning [since, until]."""
    ends = [a[1] for a in attempts if a[2] == OK]
    gaps = [b - a for a, b in itertools.pairwise(ends) if b >= since and a <= until]
    if not gaps:
        raise BenchError("handoff: no two consecutive 200s around the handoff")
    return max(gaps)


def _new_port_document(
    bench: Bench, bins: dict[str, Path], home: Path, call: subprocess.CompletedProcess[str]
) -> dict[str, Any]:
    """The measured call's ``port --json``; if it failed, an unmeasured second call's.

    A failed call is counted (``call_exit``), not fatal: the port and token are still checked,
    as a client retrying would see them. The second call reports no handoff, so a failed call
    never counts as "handoff reported".
    """
    if call.returncode == 0:
        document: dict[str, Any] = json.loads(call.stdout)
        return document
    progress(f"handoff gap: new dbtkctl port exited {call.returncode}: {call.stderr.strip()}")
    again = bench.run([bins[NEW] / "dbtkctl", "port", "--json"], home=home, timeout=60)
    if again.returncode != 0:
        raise BenchError(f"new dbtkctl port exited {again.returncode} twice: {again.stderr}")
    document = json.loads(again.stdout)
    return document


def one_round(bench: Bench, bins: dict[str, Path]) -> dict[str, Any]:
    home = bench.new_home()
    try:
        done = bench.run(
            [bins[OLD] / "dbtkctl", "port", "--json", "--port-range", "0"],
            home=home,
            timeout=START_DEADLINE,
        )
        if done.returncode != 0:
            raise BenchError(f"old dbtkctl port exited {done.returncode}: {done.stderr}")
        old = json.loads(done.stdout)
        if old["version"] != OLD:
            raise BenchError(f"the old daemon is {old['version']}, expected {OLD}")
        old_worker = int(bench.status(home)["worker_pid"])
        clients = Clients(int(old["port"]), str(old["token"]))
        clients.start()
        try:
            deadline = time.perf_counter() + SWITCH_DEADLINE
            _wait(lambda: clients.each_has(OLD), "a 200 from the old daemon", deadline)
            time.sleep(LEAD_IN)
            call_start = time.perf_counter()
            call = bench.run([bins[NEW] / "dbtkctl", "port", "--json"], home=home, timeout=60)
            call_end = time.perf_counter()
            deadline = time.perf_counter() + SWITCH_DEADLINE
            _wait(
                lambda: not (pid_alive(int(old["pid"])) or pid_alive(old_worker)),
                "the old supervisor and worker to exit",
                deadline,
            )
            old_gone = time.perf_counter()
            _wait(lambda: clients.each_has(NEW), "a 200 from the new daemon", deadline)
        finally:
            clients.stop()
        new = _new_port_document(bench, bins, home, call)
        stopped = bench.run([bins[NEW] / "dbtkctl", "stop"], home=home, timeout=CTL_TIMEOUT)
        if stopped.returncode != 0:
            progress(f"warning: new dbtkctl stop exited {stopped.returncode}: {stopped.stderr}")
    finally:
        leftovers = bench.kill_home(home)
        if leftovers:
            progress(f"warning: killed processes of the round left running: {leftovers}")
    attempts = [a for mine in clients.attempts for a in mine]
    outcomes = Counter(a[2] for a in attempts)
    first_new = min(a[1] for a in attempts if a[3] == NEW)
    return {
        "call_s": call_end - call_start,
        "longest_gap_s": max(longest_gap(mine, call_start, old_gone) for mine in clients.attempts),
        "first_200_from_new_s": first_new - call_start,
        "old_gone_s": old_gone - call_start,
        "requests": len(attempts),
        "refused": outcomes["refused"],
        "reset": outcomes["reset"],
        "other": sum(n for o, n in outcomes.items() if o not in (OK, "refused", "reset")),
        "outcomes": dict(outcomes),
        "answered_by": dict(Counter(a[3] for a in attempts if a[2] == OK)),
        "call_exit": call.returncode,
        "call_stderr": call.stderr.strip()[-500:],
        "port_unchanged": new["port"] == old["port"],
        "token_unchanged": new["token"] == old["token"],
        "handoff": new.get("handoff"),
        "handoff_reported": new.get("handoff") == {"from": OLD, "to": NEW},
        "new_version": new.get("version"),
        "old_pid": old["pid"],
        "new_pid": new["pid"],
        "port": old["port"],
    }


def measure(bench: Bench, samples: int | None = None) -> FigureResult:
    n = samples or (QUICK_ROUNDS if bench.quick else DEFAULT_ROUNDS)
    base = bench.workdir / "installs"
    base.mkdir()
    progress(f"handoff gap: installing copies {OLD} and {NEW}")
    bins = {version: install_copy(bench, base, version) for version in (OLD, NEW)}
    rounds = []
    for i in range(n):
        progress(f"handoff gap: round {i + 1}/{n}")
        rounds.append(one_round(bench, bins))
    call = Summary.of([r["call_s"] for r in rounds])
    gap = Summary.of([r["longest_gap_s"] for r in rounds])
    refused = sum(r["refused"] for r in rounds)
    reset = sum(r["reset"] for r in rounds)
    other = sum(r["other"] for r in rounds)
    requests = sum(r["requests"] for r in rounds)
    port_kept = sum(r["port_unchanged"] for r in rounds)
    token_kept = sum(r["token_unchanged"] for r in rounds)
    reported = sum(r["handoff_reported"] for r in rounds)
    failed = Counter(r["call_exit"] for r in rounds if r["call_exit"] != 0)
    silent = sum(r["call_exit"] == 0 and not r["handoff_reported"] for r in rounds)
    failures = "; ".join(
        [f"{k} exited {code}" for code, k in sorted(failed.items())]
        + ([f"{silent} reported no handoff"] if silent else [])
    )
    not_applicable = "n/a (no upgrade in place)"
    rows = [
        Row(
            figure=f"handoff {OLD}->{NEW}: new dbtkctl port (median of {n}, min-max)",
            dbtkd=call.text(unit="ms", digits=0),
            baseline=not_applicable,
        ),
        Row(
            figure="handoff: new dbtkctl port exits 0 and reports the handoff",
            dbtkd=f"{reported}/{n}" + (f" ({failures})" if failures else ""),
            baseline=not_applicable,
            budget="every time (item 4)",
            ok=reported == n,
        ),
        Row(
            figure=f"handoff: longest gap between 200s, {CLIENTS} clients (median of {n}, min-max)",
            dbtkd=gap.text(),
            baseline=not_applicable,
        ),
        Row(
            figure=f"handoff: refused connections during {n} handoffs",
            dbtkd=f"{refused} (resets {reset}, other {other}; {requests} requests)",
            baseline=not_applicable,
            budget="0",
            ok=refused == 0,
        ),
        Row(
            figure="handoff: port unchanged (token unchanged)",
            dbtkd=f"{port_kept}/{n} ({token_kept}/{n})",
            baseline=not_applicable,
            budget="port unchanged",
            ok=port_kept == n,
        ),
    ]
    data = {
        "rounds": rounds,
        "call_s": vars(call),
        "longest_gap_s": vars(gap),
        "refused_total": refused,
        "reset_total": reset,
        "other_total": other,
        "requests_total": requests,
        "call_failures": {str(code): k for code, k in failed.items()},
        "clients": CLIENTS,
    }
    return FigureResult("handoff_gap", rows, data)


if __name__ == "__main__":
    standalone(measure, __doc__.splitlines()[0])
