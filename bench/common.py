"""Shared helpers for the benchmarks: processes, temp homes, HTTP probes, /proc readings, table.

Stdlib only (``http.client``, ``subprocess``, ``time.perf_counter``) so that what is measured is
the daemon and the baseline, not a client library. Every process a benchmark starts goes
through :class:`Bench`, which stops it by pid in its ``close`` (called from ``finally``, also on
Ctrl-C): ``Popen`` children directly, and detached daemons by finding the processes whose
environment holds one of this run's unique ``DBTK_HOME`` directories.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_VENV = REPO / ".venv"
DEFAULT_BASELINE = REPO.parent / "shared" / "baselines" / "per_window_backend.py"
BASELINE_VENV = BENCH_DIR / ".venv-baseline"
BASELINE_PACKAGES = ("fastapi", "uvicorn", "psutil")
BASELINE_MARKER = ".bench-ready.json"
BASELINE_PORT_PREFIX = "BACKEND_PORT:"
HOST = "127.0.0.1"
Argv = Sequence[str | os.PathLike[str]]

SECONDS = 1.0
MS = 1000.0
MIB = 1024.0  # smaps_rollup reports kB (KiB)
POLL_INTERVAL = 0.001 * SECONDS
HTTP_TIMEOUT = 5 * SECONDS
START_DEADLINE = 30 * SECONDS
CTL_TIMEOUT = 30 * SECONDS
STOP_GRACE = 5 * SECONDS
PIP_TIMEOUT = 600 * SECONDS


class BenchError(RuntimeError):
    """A benchmark could not be measured (a process failed, a deadline passed)."""


def progress(message: str) -> None:
    """Progress goes to stderr, so that stdout holds only the table (or the JSON document)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- statistics -------------------------------------------------------------------------------


@dataclass
class Summary:
    """Median, min and max of a list of samples (in the samples' unit)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise BenchError("no samples")
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def text(self, unit: str = "ms", scale: float = MS, digits: int = 1) -> str:
        f = f"{{:.{digits}f}}"
        return (
            f"{f.format(self.median * scale)} {unit} "
            f"({f.format(self.min * scale)}-{f.format(self.max * scale)})"
        )


# --- result rows and the table ----------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. ``ratio`` is dbtkd / baseline; ``ok`` is None when no budget."""

    figure: str
    dbtkd: str
    baseline: str
    ratio: float | None = None
    budget: str = ""
    ok: bool | None = None


@dataclass
class FigureResult:
    """What one benchmark script returns: its table rows and its raw data for ``--json``."""

    name: str
    rows: list[Row]
    data: dict[str, Any] = field(default_factory=dict)


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: figure | dbtkd | baseline | ratio | budget | ok?."""
    header = ("figure", "dbtkd", "baseline", "ratio", "budget", "ok?")
    cells = [header]
    for row in rows:
        ok = "" if row.ok is None else ("yes" if row.ok else "NO")
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}x"
        cells.append((row.figure, row.dbtkd, row.baseline, ratio, row.budget, ok))
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = []
    for index, line in enumerate(cells):
        lines.append(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# --- HTTP ------------------------------------------------------------------------------------


def http_get(
    port: int, path: str, *, headers: dict[str, str] | None = None, timeout: float = HTTP_TIMEOUT
) -> tuple[int, bytes]:
    """One GET on a new connection to 127.0.0.1:port; (status, body). Connection errors raise."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_http_200(
    port: int,
    path: str,
    *,
    deadline: float,
    headers: dict[str, str] | None = None,
) -> int:
    """Poll GET ``path`` until it answers 200 (refused connections are retried every 1 ms).

    Returns the number of attempts. ``deadline`` is a ``time.perf_counter`` value.
    """
    attempts = 0
    while True:
        attempts += 1
        try:
            status, body = http_get(port, path, headers=headers)
        except (ConnectionRefusedError, ConnectionResetError):
            status, body = 0, b""
        if status == 200:
            return attempts
        if time.perf_counter() > deadline:
            raise BenchError(f"GET {path} on port {port}: no 200 in time (last {status} {body!r})")
        time.sleep(POLL_INTERVAL)


# --- /proc -----------------------------------------------------------------------------------


def smaps_rollup(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` as {field: kB} (Rss, Pss, Private_Dirty, ...)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0])
    return fields


def memory_of(pids: Sequence[int]) -> dict[str, Any]:
    """PSS, RSS and USS (private) in KiB summed over ``pids``, with the per-process figures."""
    per_pid = {}
    for pid in pids:
        rollup = smaps_rollup(pid)
        per_pid[pid] = {
            "pss_kib": rollup["Pss"],
            "rss_kib": rollup["Rss"],
            "uss_kib": rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
        }
    return {
        "pss_kib": sum(p["pss_kib"] for p in per_pid.values()),
        "rss_kib": sum(p["rss_kib"] for p in per_pid.values()),
        "uss_kib": sum(p["uss_kib"] for p in per_pid.values()),
        "processes": per_pid,
    }


def pids_with_env(name: str, value: str) -> list[int]:
    """Pids of processes (not this one) whose environment has ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                environ = file.read().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            found.append(int(entry))
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc/PID/task/TID/children``)."""
    tree = [pid]
    for current in tree:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as file:
                    tree.extend(int(child) for child in file.read().split())
    return tree


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def wait_pids_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_line(stream: IO[bytes], deadline: float) -> str:
    """Read one line from a child's pipe with a deadline (raw reads: no buffered readline)."""
    fd = stream.fileno()
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BenchError(f"no line in time (got {buffer!r})")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise BenchError(f"pipe closed before a full line (got {buffer!r})")
            buffer += chunk
    return buffer.partition(b"\n")[0].decode()


# --- the baseline's virtual environment -------------------------------------------------------


def base_interpreter(venv: Path) -> Path:
    """The python3 the project venv was made from (``executable`` in its pyvenv.cfg)."""
    cfg = venv / "pyvenv.cfg"
    with contextlib.suppress(OSError):
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable" and value.strip():
                return Path(value.strip())
    return Path(os.path.realpath(venv / "bin" / "python3"))


def ensure_baseline_venv(project_venv: Path, venv: Path = BASELINE_VENV) -> dict[str, Any]:
    """Create (once; cached) the baseline's own venv with fastapi, uvicorn and psutil.

    Made from the same python3 as the project venv; recreated if that interpreter changed or
    a previous creation was interrupted. Returns the marker: interpreter and package versions.
    """
    base = base_interpreter(project_venv)
    marker = venv / BASELINE_MARKER
    with contextlib.suppress(OSError, ValueError):
        info: dict[str, Any] = json.loads(marker.read_text())
        if info.get("base_interpreter") == str(base) and (venv / "bin" / "python").exists():
            return info
    progress(f"creating the baseline venv {venv} from {base} (pip install fastapi uvicorn psutil)")
    if venv.exists():
        shutil.rmtree(venv)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    for argv in ([str(base), "-m", "venv", str(venv)], [*pip, "install", *BASELINE_PACKAGES]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
    script = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    versions = subprocess.run(
        [str(python), "-c", script, *BASELINE_PACKAGES, "starlette"],
        check=True,
        capture_output=True,
        text=True,
        timeout=CTL_TIMEOUT,
    ).stdout
    info = {"base_interpreter": str(base), "packages": json.loads(versions)}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


# --- processes -------------------------------------------------------------------------------


@dataclass
class Baseline:
    """One running per-window backend."""

    proc: subprocess.Popen[bytes]
    port: int


class Bench:
    """Paths, temp homes and every process of one bench run; ``close`` stops them all."""

    def __init__(
        self,
        *,
        project_venv: Path = DEFAULT_VENV,
        baseline_script: Path = DEFAULT_BASELINE,
        quick: bool = False,
        keep_temp: bool = False,
        worker_start: str = "spawn",
    ) -> None:
        self.project_venv = project_venv
        self.project_python = project_venv / "bin" / "python"
        self.dbtkctl = project_venv / "bin" / "dbtkctl"
        self.baseline_python = BASELINE_VENV / "bin" / "python"
        self.baseline_script = baseline_script
        self.quick = quick
        self.keep_temp = keep_temp
        self.worker_start = worker_start  # written into each home's dbtkd.toml
        for path in (self.project_python, self.dbtkctl, baseline_script):
            if not path.exists():
                raise BenchError(f"missing {path}")
        self.workdir = Path(tempfile.mkdtemp(prefix="dbtk-bench-"))
        self._procs: list[subprocess.Popen[Any]] = []
        self._homes: list[Path] = []
        self._files: list[IO[bytes]] = []
        self._stderr_paths: dict[int, Path] = {}
        self._count = 0

    # Environment and homes.

    def env(self, home: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The caller's environment without DBTK_* and PYTHON* (plus DBTK_HOME if given).

        ``extra`` is added last (a test switch such as ``DBTK_TEST_FAULTS``).
        """
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("DBTK_", "PYTHON", "VIRTUAL"))
        }
        if home is not None:
            env["DBTK_HOME"] = str(home)
        env.update(extra or {})
        return env

    def new_home(self) -> Path:
        """A fresh, unique DBTK_HOME for one sample."""
        self._count += 1
        home = self.workdir / f"h{self._count}"
        home.mkdir(mode=0o700)
        if self.worker_start != "spawn":
            (home / "config").mkdir(mode=0o700)
            (home / "config" / "dbtkd.toml").write_text(f'worker_start = "{self.worker_start}"\n')
        self._homes.append(home)
        return home

    def _stderr_file(self, name: str) -> IO[bytes]:
        self._count += 1
        file = open(self.workdir / f"{name}-{self._count}.err", "wb")  # noqa: SIM115
        self._files.append(file)
        return file

    def stderr_of(self, proc: subprocess.Popen[bytes]) -> str:
        """What a child started with :meth:`popen` wrote to stderr so far (its last 2 KiB)."""
        path = self._stderr_paths.get(proc.pid)
        if path is None:
            return ""
        with contextlib.suppress(OSError):
            return path.read_bytes()[-2048:].decode(errors="replace")
        return ""

    # Children.

    def popen(
        self,
        argv: Argv,
        *,
        home: Path | None,
        name: str,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a child (stdout piped, stderr to a file in the workdir) and track it."""
        stderr = self._stderr_file(name)
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=self.env(home, extra_env),
            cwd=self.workdir,
        )
        self._procs.append(proc)
        self._stderr_paths[proc.pid] = Path(stderr.name)
        return proc

    def run(
        self, argv: Argv, *, home: Path | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run a short child to completion (bounded); stdout and stderr captured."""
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(home),
            cwd=self.workdir,
            text=True,
        )
        self._procs.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(f"{argv[0]} {' '.join(map(str, argv[1:]))}: timed out") from None
        # Forgotten only once it has exited: on Ctrl-C, close() still kills it.
        self._procs.remove(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def reap(self, proc: subprocess.Popen[bytes], timeout: float = STOP_GRACE) -> None:
        """Terminate (then kill) a tracked child and forget it."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    # The daemon.

    def ctl(self, home: Path, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """Run ``dbtkctl ARGS`` for ``home``; its stdout. A non-zero exit raises."""
        done = self.run([self.dbtkctl, *args], home=home, timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"dbtkctl {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def status(self, home: Path) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ctl(home, "status", "--json"))
        return result

    def start_daemon(self, home: Path) -> dict[str, Any]:
        """``dbtkctl port --json --port-range 0`` (unmeasured): the port document."""
        result: dict[str, Any] = json.loads(
            self.ctl(home, "port", "--json", "--port-range", "0", timeout=START_DEADLINE)
        )
        return result

    def stop_daemon(self, home: Path) -> None:
        """``dbtkctl stop``, then SIGKILL whatever still runs with this DBTK_HOME.

        Safe in ``finally``: a failed stop is reported, never raised over the real error.
        """
        try:
            self.ctl(home, "stop", timeout=CTL_TIMEOUT)
        except BenchError as exc:
            progress(f"warning: {exc}")
        finally:
            leftovers = self.kill_home(home)
            if leftovers:
                progress(f"warning: killed processes left after dbtkctl stop: {leftovers}")

    def kill_home(self, home: Path) -> list[int]:
        """SIGKILL (by pid) every process whose environment has DBTK_HOME=home."""
        pids = pids_with_env("DBTK_HOME", str(home))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_pids_gone(pids, STOP_GRACE)
        return pids

    # The baseline.

    def spawn_baseline(self) -> subprocess.Popen[bytes]:
        return self.popen([self.baseline_python, self.baseline_script], home=None, name="baseline")

    def baseline_port(self, proc: subprocess.Popen[bytes], deadline: float) -> int:
        """Parse ``BACKEND_PORT:<port>`` from a per-window backend's stdout."""
        assert proc.stdout is not None
        while True:
            try:
                line = read_line(proc.stdout, deadline)
            except BenchError as exc:
                raise BenchError(f"per-window backend: {exc}\n{self.stderr_of(proc)}") from None
            if line.startswith(BASELINE_PORT_PREFIX):
                return int(line.removeprefix(BASELINE_PORT_PREFIX))

    def start_baselines(self, count: int) -> list[Baseline]:
        """Start ``count`` per-window backends at once; each has answered one health request."""
        procs = [self.spawn_baseline() for _ in range(count)]
        deadline = time.perf_counter() + START_DEADLINE
        started = [Baseline(proc, self.baseline_port(proc, deadline)) for proc in procs]
        for backend in started:
            wait_http_200(backend.port, "/api/v1/health", deadline=deadline)
        return started

    # Cleanup.

    def close(self) -> None:
        """Stop every tracked child and every daemon of this run's homes, by pid; remove temp.

        SIGINT is ignored meanwhile, so a second Ctrl-C cannot leave processes behind.
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in list(self._procs):
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    proc.wait(STOP_GRACE)
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            self._procs.clear()
            for home in self._homes:
                self.kill_home(home)
            for file in self._files:
                file.close()
            if not self.keep_temp:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so that ``finally`` blocks run."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


Measure = Callable[[Bench, int | None], FigureResult]


def add_worker_start(parser: Any) -> None:
    parser.add_argument(
        "--worker-start",
        choices=("spawn", "fork"),
        default="spawn",
        help="the daemons' worker_start setting (fork: the worker fork server, Linux)",
    )


def standalone(measure: Measure, description: str) -> None:
    """``python -m bench.<figure> [--quick] [--json] [--samples N]``: one figure alone."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--samples", type=int, default=None, help="override the sample count")
    add_worker_start(parser)
    args = parser.parse_args()
    with terminate_as_interrupt():
        try:
            baseline = ensure_baseline_venv(DEFAULT_VENV)
            with Bench(quick=args.quick, worker_start=args.worker_start) as bench:
                result = measure(bench, args.samples)
        except KeyboardInterrupt:
            progress("interrupted; every process started was stopped")
            sys.exit(130)
        except BenchError as exc:
            progress(f"error: {exc}")
            sys.exit(1)
    if args.json:
        document = {
            "machine": machine_info(),
            "baseline": baseline,
            "rows": [asdict(row) for row in result.rows],
            "data": result.data,
        }
        print(json.dumps(document, indent=2))
    else:
        print(format_table(result.rows))
