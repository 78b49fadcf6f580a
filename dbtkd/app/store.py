"""One JSON document in the data dir, and the one way to change it: read, change, write.

Every store of the data dir (connections, query history, jobs, schedules, and any later one) is
a ``Store``: a file ``{"format": N, ...}`` with mode 0600 in the 0700 data dir, and
``update(change)`` is the only code that writes one. Under one lock (an ``anyio.Lock`` for the
tasks of this worker, a ``threading.Lock`` per file for the threads of this process, and an
``flock`` of ``<file>.lock`` for the other worker of a version handoff) it reads the file as it
is on disk now, lets ``change`` edit that fresh copy, and replaces the file atomically: a
temporary file in the same directory, fsync, rename, fsync of the directory. So ``change``
always sees every write acknowledged before it, a crash at any moment leaves the old or the new
document whole, and ``update`` returns only once the new one is on disk. If ``change`` raises,
nothing is written; if it changed nothing, nothing is written either. ``read`` takes no lock:
the file is only ever replaced whole, so a read sees one document or the next.

Formats: a file of an older format is migrated when read (one tested function per step, format
0 meaning "no format key"); the migrated document is written by the next change. A file of a
newer format (written by a newer daemon) is read but never written, because this daemon would
drop what it does not know: a change to it raises ``StoreTooNewError`` saying what to do. A file
that is not JSON reads as the store's initial document; the next change moves it aside
(``<name>.corrupt-<time>``, so the user keeps it) under the lock, and starts afresh.

Temporary files are named ``.<file>.<random>.tmp``. A crash between creating one and renaming
it leaves it behind, perhaps with passwords in it: ``remove_interrupted_writes`` deletes them
when a worker starts, each under its store's lock so that a write under way in the other worker
of a handoff is left alone.

Blocking code runs in a worker thread (``read``/``update``); ``read_sync``/``update_sync`` are
for code already in one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any, TypeVar

import anyio
import anyio.to_thread

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no version handoff there, so one worker per data dir at a time
    fcntl = None

log = logging.getLogger("dbtkd.app.store")

T = TypeVar("T")
# A store's content without its "format" key (the store adds it on every write).
Document = dict[str, Any]
# Migration from format N to N + 1, keyed by N; step 0 gets what the file held (a dict or list).
Migrations = Mapping[int, Callable[[Any], Document]]

# Only the owner may read a store: the connections store holds database passwords.
DIR_MODE = 0o700
TEMPORARY_SUFFIX = ".tmp"
# ".connections.json.k3j_x9a2.tmp": a write of connections.json that never reached its rename.
TEMPORARY_NAME = re.compile(r"\.(?P<store>.+)\.[a-z0-9_]+\.tmp")
# ".k3j_x9a2.tmp": a temporary file of a daemon before this one, which did not say whose it
# was nor lock its writes; a write takes milliseconds, so one this old was interrupted.
UNNAMED_TEMPORARY_NAME = re.compile(r"\.[a-z0-9_]+\.tmp")
UNNAMED_TEMPORARY_AGE = 60.0  # seconds

# One lock per file for the threads of this process: two Store objects of one file (a route and
# a helper each making their own) still take turns, also where there is no flock.
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class StoreTooNewError(Exception):
    """The file on disk was written by a newer daemon; writing it would lose data."""


# errno values that mean "the disk cannot take writes right now": a temporary condition the
# user fixes outside DB Toolkit (free space, remount), after which the daemon goes on by itself.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
READ_ONLY_ERRNOS = frozenset({errno.EROFS})


class StoreUnwritable(OSError):
    """The data dir is full (507) or read-only (503): nothing was saved; reads go on.

    An ``OSError`` with the original errno, so code that already shrugs off a failed
    housekeeping write (the query history, a job's last record) goes on shrugging; the
    message names the directory, the cause and the fix.
    """

    def __init__(self, data_dir: str, error: OSError) -> None:
        self.full = error.errno in FULL_ERRNOS
        self.status = 507 if self.full else 503
        self.code = "storage_full" if self.full else "storage_read_only"
        cause = "the disk is full" if self.full else "the disk is read-only"
        self.detail = (
            f"cannot save to {data_dir}: {cause} ({error.strerror or error}); nothing was "
            f"saved. {'Free some space' if self.full else 'Make it writable again'} and try "
            "again: DB Toolkit goes on by itself"
        )
        super().__init__(error.errno, self.detail)

    def __str__(self) -> str:
        return self.detail

    @staticmethod
    def wraps(error: OSError) -> bool:
        return error.errno in FULL_ERRNOS or error.errno in READ_ONLY_ERRNOS


def _as_is(document: Any) -> Document:
    """A file without ``format`` of a store that never had a format 0: taken as format 1 when
    it is an object (hand-made, or written by a daemon before formats)."""
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object; got a {type(document).__name__}")
    return document


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (mode 0700) if missing; an existing directory is left as it is."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)


class Store:
    """The document in ``<data_dir>/<file_name>``.

    ``initial`` makes the document of a store that has no file yet (or an unreadable one).
    ``durable=False`` skips the two fsyncs: the rename still keeps the file whole, but a power
    cut may lose the last writes (for the query history, which is written on every query).
    ``indent=None`` writes the file on one line: ``json``'s C encoder does not indent, and is
    about four times faster than its indenting one (for files written often, and seldom read
    by people).
    """

    def __init__(
        self,
        data_dir: str,
        file_name: str,
        *,
        current_format: int = 1,
        migrations: Migrations | None = None,
        initial: Callable[[], Document] = dict,
        durable: bool = True,
        indent: int | None = 1,
    ) -> None:
        self.data_dir = data_dir
        self.file_name = file_name
        self.path = os.path.join(data_dir, file_name)
        self.current_format = current_format
        self.migrations = migrations or {}
        self.initial = initial
        self.durable = durable
        self.indent = indent
        self._lock = anyio.Lock()

    # -- reading -----------------------------------------------------------------------------

    async def read(self) -> Document:
        """The document as it is on disk now (a copy of the caller's own)."""
        return await anyio.to_thread.run_sync(self.read_sync)

    def read_sync(self) -> Document:
        raw = self._read_raw()
        decoded = None if raw is None else self._decode(raw)
        return self.initial() if decoded is None else decoded[0]

    def _read_raw(self) -> bytes | None:
        try:
            with open(self.path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def _decode(self, raw: bytes) -> tuple[Document, int] | None:
        """The document (migrated to the current format when older) and the format on disk;
        None if the file is not a store at all."""
        try:
            document = json.loads(raw)
            if not isinstance(document, (dict, list)):
                raise ValueError(f"expected a JSON object; got a {type(document).__name__}")
            found = document.get("format", 0) if isinstance(document, dict) else 0
            if not isinstance(found, int) or isinstance(found, bool) or found < 0:
                raise ValueError(f"expected format to be a whole number; got {found!r:.40}")
            if found == 0 and 0 not in self.migrations:
                document = _as_is(document)
                found = 1
        except ValueError:
            return None  # not JSON, or not a store at all (update moves it aside)
        for step in range(found, self.current_format):
            document = self.migrations[step](document)
        document.pop("format", None)
        return document, found

    # -- changing ----------------------------------------------------------------------------

    async def update(self, change: Callable[[Document], T]) -> T:
        """Apply ``change`` to the freshest document and write it back; returns its result.

        ``change`` runs in a worker thread under the store's lock: it edits the document in
        place and must not block on anything but the CPU. What it raises comes out of here,
        with nothing written; a full or read-only disk is ``StoreUnwritable``.
        """
        async with self._lock:
            try:
                return await anyio.to_thread.run_sync(self.update_sync, change)
            except OSError as error:
                if StoreUnwritable.wraps(error):
                    raise StoreUnwritable(self.data_dir, error) from error
                raise

    def update_sync(self, change: Callable[[Document], T]) -> T:
        ensure_private_dir(self.data_dir)
        with self._locked():
            raw = self._read_raw()
            decoded = None if raw is None else self._decode(raw)
            if raw is not None and decoded is None:
                self._move_aside()
            document, found = decoded or (self.initial(), self.current_format)
            result = change(document)
            # A second decode is cheaper than a deep copy, and tells "changed" from "not": an
            # unchanged store is not written (a no-op works on a read-only disk, and on a
            # newer format).
            before = self._decode(raw) if decoded is not None and raw is not None else None
            if document == (self.initial() if before is None else before[0]):
                return result
            if found > self.current_format:
                raise StoreTooNewError(
                    f"{self.file_name} has format {found} but this dbtkd writes format "
                    f"{self.current_format}: it was written by a newer DB Toolkit; upgrade dbtkd "
                    "(or restore an older copy of the file) to change it"
                )
            self._write(document)
        return result

    def _write(self, document: Document) -> None:
        data = json.dumps({**document, "format": self.current_format}, indent=self.indent).encode(
            "utf-8"
        )
        # mkstemp creates the file 0600 (never readable by others, not even briefly) in the
        # same directory, so the rename stays within one file system.
        fd, temporary = tempfile.mkstemp(
            prefix=f".{self.file_name}.", suffix=TEMPORARY_SUFFIX, dir=self.data_dir
        )
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                if self.durable:
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        if self.durable:
            _fsync_directory(self.data_dir)

    def _move_aside(self) -> None:
        aside = f"{self.path}.corrupt-{int(time.time())}"
        os.replace(self.path, aside)
        log.warning(
            "%s was not a readable store; moved it to %s and started afresh", self.path, aside
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with _thread_lock(self.path), _file_lock(self.path):
            yield


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An ``flock`` of ``<path>.lock``: the other worker of a handoff waits for it."""
    if fcntl is None:
        yield
        return
    flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path + ".lock", flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _thread_lock(path: str) -> threading.Lock:
    key = os.path.abspath(path)
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.Lock())


def _fsync_directory(directory: str) -> None:
    # The rename itself must reach the disk for the new file to survive a power cut.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open directories; NTFS journals the rename
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_interrupted_writes(data_dir: str) -> list[str]:
    """Delete the temporary files of store writes a crash interrupted; returns their names."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = os.path.join(data_dir, name)
        named = TEMPORARY_NAME.fullmatch(name)
        if named:
            # Under the store's lock, no write of it is under way: what is there is left over.
            store = os.path.join(data_dir, named["store"])
            with _thread_lock(store), _file_lock(store), contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(name)
        elif UNNAMED_TEMPORARY_NAME.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.lstat(path).st_mtime > UNNAMED_TEMPORARY_AGE:
                    os.unlink(path)
                    removed.append(name)
    if removed:
        log.warning(
            "removed %d temporary file(s) of interrupted writes from %s", len(removed), data_dir
        )
    return removed
