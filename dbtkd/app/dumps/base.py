"""What every engine's backup and restore share: the plan, the workspace, the sink, the
``Dumper`` base class (``dbtkd.app.dumps`` picks one per engine; the engines import this module,
never the package, so nothing imports in a circle).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio

from dbtkd.app.backupfiles import BackupDir
from dbtkd.app.db.profiles import Profile
from dbtkd.app.jobs import PROGRESS_INTERVAL, JobFailed, RunningJob
from dbtkd.app.tools import Toolbox

BACKUP_TYPES = ("full", "schema_only", "data_only", "tables")
# Big enough that a syscall per chunk costs nothing, small enough to stay cache-friendly.
CHUNK_BYTES = 1024 * 1024
# zlib's default: about the speed of ``gzip`` by hand, and the ratio users expect from .gz.
GZIP_LEVEL = 6
GZIP_WBITS = 31  # zlib with a gzip header and trailer
# Lines of a tool's stderr kept to explain a failure.
ERROR_LINES = 12


@dataclass(frozen=True)
class BackupPlan:
    """What the user asked to back up."""

    backup_type: str = "full"
    tables: tuple[str, ...] = ()
    gzip: bool = True


class Workspace:
    """The hidden files one backup, restore or verify works with; removed unless kept.

    ``output`` is the backup file being written (``.<id>.partial``), renamed into place by the
    caller once complete. Other files (``.<id>.<purpose>-<tag>``) are scratch copies.
    """

    def __init__(self, files: BackupDir, backup_id: str, tag: str, job: RunningJob | None) -> None:
        self.files = files
        self.backup_id = backup_id
        self.tag = tag
        self.job = job
        self.created: list[str] = []
        self.output_name = files.partial_name(backup_id)

    async def _new(self, name: str) -> tuple[int, str]:
        path = self.files.full_path(name)
        if self.job is not None:
            await self.job.add_partial(path)  # recorded before it exists: never left behind
        fd = self.files.create(name)
        self.created.append(name)
        return fd, path

    async def output(self) -> tuple[int, str]:
        """A new, empty backup file (fd open for writing, and its path)."""
        return await self._new(self.output_name)

    async def scratch(self, purpose: str) -> tuple[int, str]:
        return await self._new(self.files.partial_name(self.backup_id, f"{purpose}-{self.tag}"))

    def open_backup(self, record: dict[str, Any]) -> int:
        """The completed backup file of ``record``, for reading (never through a symlink)."""
        return self.files.open_read(str(record["file"]))

    def commit(self, final_name: str) -> None:
        self.files.commit(self.output_name, final_name)
        self.created.remove(self.output_name)
        if self.job is not None:
            self.job.forget_partial(self.files.full_path(self.output_name))

    def cleanup(self) -> None:
        for name in self.created:
            with contextlib.suppress(OSError):
                self.files.remove(name)
        self.created.clear()


class Sink:
    """Writes a backup file to ``fd``: counts and hashes the bytes as stored (compressed with
    gzip when asked), so the recorded sha256 is the file's own. Blocking: use in a thread."""

    def __init__(self, fd: int, *, gzip: bool) -> None:
        self.fd = fd
        self.size = 0
        self._hash = hashlib.sha256()
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS) if gzip else None

    def write(self, data: bytes) -> None:
        if self._compressor is not None:
            data = self._compressor.compress(data)
        self._out(data)

    def _out(self, data: bytes) -> None:
        if not data:
            return
        self._hash.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def finish(self) -> tuple[int, str]:
        """Flush, fsync (a completed backup survives a power cut); returns (size, sha256)."""
        if self._compressor is not None:
            self._out(self._compressor.flush())
        os.fsync(self.fd)
        return self.size, self._hash.hexdigest()


def hash_fd(fd: int, stop: Callable[[], bool] | None = None) -> tuple[int, str]:
    """(size, sha256) of the file open on ``fd``, read from its start. Blocking."""
    digest = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)  # not os.pread: Windows has none
    while chunk := os.read(fd, CHUNK_BYTES):
        if stop is not None and stop():
            raise JobFailed("cancelled")
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def is_gzip(name: str) -> bool:
    return name.endswith(".gz")


class ByteCounter:
    """Progress of work done in a thread: plain attributes, read by the event loop."""

    def __init__(self, total: int = 0) -> None:
        self.done = 0
        self.total = total

    def fraction(self) -> float:
        return self.done / self.total if self.total > 0 else 0.0


@contextlib.asynccontextmanager
async def progress_from(
    job: RunningJob | None, fraction: Callable[[], float]
) -> AsyncIterator[None]:
    """Report ``fraction()`` as the job's progress every ``PROGRESS_INTERVAL`` while inside."""
    if job is None:
        yield
        return
    async with anyio.create_task_group() as task_group:

        async def poll() -> None:
            while True:
                job.set_progress(min(fraction(), 0.99))
                await anyio.sleep(PROGRESS_INTERVAL)

        task_group.start_soon(poll)
        try:
            yield
        finally:
            task_group.cancel_scope.cancel()


class ToolOutput:
    """A tool's stderr, read line by line: some lines give progress, all are kept (the last
    ``ERROR_LINES``) to explain a failure in the tool's own words."""

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        self.on_line = on_line
        self.lines: list[str] = []

    async def read(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the stream's limit: take what there is
                raw = await stream.read(64 * 1024)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            if self.on_line is not None:
                self.on_line(line)
            self.lines.append(line)
            del self.lines[:-ERROR_LINES]

    def failure(self, tool: str, code: int | None, *, interesting: Callable[[str], bool]) -> str:
        """``pg_dump failed (exit status 1): <its error lines>``."""
        wanted = [line for line in self.lines if interesting(line)] or self.lines[-3:]
        status = (
            f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        )
        detail = "; ".join(wanted) or "it printed nothing"
        return f"{tool} failed ({status}): {detail}"


def fdinfo_position(pid: int, fd: int) -> int | None:
    """How far process ``pid`` has read the file on its descriptor ``fd`` (Linux), or None."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as file:
            for line in file:
                if line.startswith("pos:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Dumper(ABC):
    """Backup, restore and format check for one engine."""

    db_type: ClassVar[str]

    def __init__(self, toolbox: Toolbox, secrets_dir: str) -> None:
        self.toolbox = toolbox
        self.secrets_dir = secrets_dir

    @abstractmethod
    def extension(self, plan: BackupPlan) -> str:
        """The backup file's extension (``.dump``, ``.sql.gz``...)."""

    @abstractmethod
    async def backup(
        self, job: RunningJob, profile: Profile, plan: BackupPlan, workspace: Workspace
    ) -> dict[str, Any]:
        """Write ``workspace.output()``; returns the record's new fields (``size``,
        ``sha256``, ``server_version``...). Raises ``JobFailed`` with the tool's words."""

    @abstractmethod
    async def restore(
        self, job: RunningJob, profile: Profile, record: dict[str, Any], workspace: Workspace
    ) -> dict[str, Any]:
        """Load the backup of ``record`` into the database of ``profile``."""

    @abstractmethod
    async def check_format(self, record: dict[str, Any], workspace: Workspace) -> str | None:
        """None if the file is a readable backup of its format, else what is wrong."""
