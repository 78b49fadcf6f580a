"""A login item's changes as data: directories and files to write or remove, commands to run.

Deciding and doing are separate so that ``--dry-run`` prints the very steps ``install`` would
carry out, and tests compare plans without touching the system. ``apply`` runs the steps in
order: files are written atomically (a half-written unit file would be worse than none); a
command goes through ``oscmd.run`` (the one seam tests patch); a failed command stops the plan
with a ``ServiceError`` unless it is marked ``check=False`` (a warning) or has a ``fallback``
(run instead). ``then`` steps run only after their command succeeded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dbtkctl.service import oscmd
from dbtkd.errors import DbtkError, NotRunning
from dbtkd.paths import RuntimePaths
from dbtkd.procstats import pid_alive
from dbtkd.units import SECONDS

# A daemon asked to stop drains its jobs for up to 5 s (DESIGN §2), then needs a moment to
# remove its files; the same budget ``dbtkctl stop`` allows.
STOP_WAIT = 10 * SECONDS
STOP_POLL = 0.01 * SECONDS


class ServiceError(DbtkError):
    """A login-item step failed; the message names the step and what the OS said (exit 1)."""


@dataclass(frozen=True)
class MakeDir:
    path: str
    mode: int = 0o700


@dataclass(frozen=True)
class WriteFile:
    path: str
    content: bytes
    encoding: str = "utf-8"  # how to show the content in a dry run
    mode: int = 0o644


@dataclass(frozen=True)
class RemoveFile:
    path: str


@dataclass(frozen=True)
class RunCommand:
    argv: tuple[str, ...]
    check: bool = True  # False: a failure is reported as a warning and the plan goes on
    then: tuple[Step, ...] = ()  # only after this command succeeded
    fallback: tuple[Step, ...] = ()  # instead, when this command fails


@dataclass(frozen=True)
class StopDaemon:
    """Ask a daemon that is not the login item's to stop, so the login item can take over."""

    runtime: RuntimePaths
    pid: int


Step = MakeDir | WriteFile | RemoveFile | RunCommand | StopDaemon


@dataclass
class Outcome:
    """What ``apply`` did, as JSON-ready records, plus the warnings to show on stderr."""

    done: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fell_back: bool = False


def apply(steps: Sequence[Step], outcome: Outcome | None = None) -> Outcome:
    """Carry out ``steps`` in order; raise ``ServiceError`` at the first checked failure."""
    outcome = Outcome() if outcome is None else outcome
    for step in steps:
        if isinstance(step, MakeDir):
            os.makedirs(step.path, mode=step.mode, exist_ok=True)
        elif isinstance(step, WriteFile):
            _write_atomic(step.path, step.content, step.mode)
        elif isinstance(step, RemoveFile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(step.path)
        elif isinstance(step, StopDaemon):
            _stop_daemon(step)
        else:
            result = oscmd.run(step.argv)
            outcome.done.append(_record(step) | {"returncode": result.returncode})
            if result.ok:
                apply(step.then, outcome)
            elif step.fallback:
                outcome.fell_back = True
                outcome.warnings.append(f"{_shell(step.argv)} failed: {result.message()}")
                apply(step.fallback, outcome)
            elif step.check:
                raise ServiceError(f"{_shell(step.argv)} failed: {result.message()}")
            else:
                outcome.warnings.append(f"{_shell(step.argv)} failed: {result.message()}")
            continue
        outcome.done.append(_record(step))
    return outcome


def describe(steps: Sequence[Step], indent: str = "") -> list[str]:
    """The steps as lines of text for ``--dry-run``: every file in full, every command."""
    lines: list[str] = []
    for step in steps:
        if isinstance(step, MakeDir):
            lines.append(f"{indent}create directory {step.path} (mode {step.mode:04o})")
        elif isinstance(step, WriteFile):
            lines.append(f"{indent}write {step.path} (mode {step.mode:04o}, {step.encoding}):")
            text = step.content.decode(step.encoding).lstrip("\ufeff")
            lines += [f"{indent}  | {line}" for line in text.splitlines()]
        elif isinstance(step, RemoveFile):
            lines.append(f"{indent}remove {step.path}")
        elif isinstance(step, StopDaemon):
            lines.append(
                f"{indent}stop the running dbtkd (pid {step.pid}) so the login item can take over"
            )
        else:
            suffix = "" if step.check or step.fallback else "  (a failure is only a warning)"
            lines.append(f"{indent}run: {_shell(step.argv)}{suffix}")
            if step.then:
                lines.append(f"{indent}  then:")
                lines += describe(step.then, indent + "    ")
            if step.fallback:
                lines.append(f"{indent}  if that fails:")
                lines += describe(step.fallback, indent + "    ")
    return lines


def to_json(steps: Sequence[Step]) -> list[dict[str, Any]]:
    """The steps as JSON-ready records (files with their text, commands as argv lists)."""
    return [_record(step) for step in steps]


def _record(step: Step) -> dict[str, Any]:
    if isinstance(step, MakeDir):
        return {"op": "mkdir", "path": step.path, "mode": f"{step.mode:04o}"}
    if isinstance(step, WriteFile):
        return {
            "op": "write",
            "path": step.path,
            "mode": f"{step.mode:04o}",
            "encoding": step.encoding,
            "content": step.content.decode(step.encoding).lstrip("\ufeff"),
        }
    if isinstance(step, RemoveFile):
        return {"op": "remove", "path": step.path}
    if isinstance(step, StopDaemon):
        return {"op": "stop_daemon", "pid": step.pid}
    record: dict[str, Any] = {"op": "run", "argv": list(step.argv), "check": step.check}
    if step.then:
        record["then"] = to_json(step.then)
    if step.fallback:
        record["fallback"] = to_json(step.fallback)
    return record


def _shell(argv: Sequence[str]) -> str:
    import shlex

    return " ".join(shlex.quote(arg) for arg in argv)


def _write_atomic(path: str, content: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed os.open's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _stop_daemon(step: StopDaemon) -> None:
    from dbtkctl.client import Client

    client = Client(step.runtime)
    try:
        client.call("stop")
    except NotRunning:
        return
    deadline = time.monotonic() + STOP_WAIT
    while _still_serving(client, step.pid):
        if time.monotonic() > deadline:
            raise ServiceError(
                f"dbtkd (pid {step.pid}) did not stop within {STOP_WAIT:.0f} s; "
                "run dbtkctl stop, then install again"
            )
        time.sleep(STOP_POLL)


def _still_serving(client: Any, pid: int) -> bool:
    if os.name != "nt":
        return pid_alive(pid)
    try:
        client.call("hello")
    except (NotRunning, DbtkError):
        return False
    return True
