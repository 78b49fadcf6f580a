"""A list of records in one JSON file of the data dir, safe to share between two workers.

``jobs.json`` and ``schedules.json`` are ``{"format": 1, "<key>": [{"id": ...}, ...]}``, written
by ``storefile`` (0600, atomic replace, fsync). One worker normally owns the data dir, but
during a version handoff the old and the new daemon's workers run side by side for a few
seconds, each with jobs of its own. So every change is a read-modify-write of what is on disk,
under an ``flock`` of ``<file>.lock``, never a write of a copy in memory the other worker may
have made stale. Reads are plain reads: the file is only ever replaced whole.

A file whose ``format`` is newer than this daemon's is read but never written
(``StoreTooNewError``, see ``storefile``). Blocking work runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from dbtkd.app.db import storefile

CURRENT_FORMAT = 1
T = TypeVar("T")
Record = dict[str, Any]
# Records by id, in file order; a change adds, replaces or pops entries.
Records = dict[str, Record]


def _add_format(document: Any) -> dict[str, Any]:
    """A hand-written file without ``format`` is taken as it is (format 1 is the first)."""
    return document if isinstance(document, dict) else {}


class RecordStore:
    """The records of one file (``key`` names the list inside the document)."""

    def __init__(self, data_dir: str, file_name: str, key: str) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, file_name)
        self.key = key
        self._lock = anyio.Lock()

    def read_sync(self) -> Records:
        return self._load()[0]

    async def read(self) -> Records:
        return await anyio.to_thread.run_sync(self.read_sync)

    async def update(self, change: Callable[[Records], T]) -> T:
        """Apply ``change`` to the records on disk and write them back; returns its result.

        ``change`` runs in a worker thread under the file lock: it must not await or block.
        """
        async with self._lock:
            return await anyio.to_thread.run_sync(self.update_sync, change)

    def update_sync(self, change: Callable[[Records], T]) -> T:
        with self._file_lock():
            records, format_on_disk, extra = self._load()
            result = change(records)
            storefile.write(
                self.path,
                {**extra, self.key: list(records.values())},
                format_on_disk=format_on_disk,
                current_format=CURRENT_FORMAT,
            )
        return result

    def _load(self) -> tuple[Records, int, dict[str, Any]]:
        storefile.ensure_private_dir(self.data_dir)
        loaded = storefile.load(self.path, CURRENT_FORMAT, {0: _add_format})
        if loaded is None:
            return {}, CURRENT_FORMAT, {}
        document = loaded.document
        records: Records = {}
        for entry in document.get(self.key) or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                records[entry["id"]] = entry
        extra = {k: v for k, v in document.items() if k not in ("format", self.key)}
        return records, loaded.format_on_disk, extra

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # Windows: no handoff there, so one worker at a time
            yield
            return
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path + ".lock", flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock
