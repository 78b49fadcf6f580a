"""One JSON document in the data dir, versioned, private, and replaced atomically.

Every store (connections, query history) is a file ``{"format": N, ...}`` with mode 0600 in
the 0700 data dir. Writes go to a temporary file in the same directory, are flushed to disk and
then ``os.replace``d over the old file, so a crash or a full disk leaves either the old or the
new document, never half of one. Reading a file of an older format runs its migrations, one
tested function per step; a file of a newer format (written by a newer daemon) is read but never
written, because this daemon would drop what it does not know: writing it raises
``StoreTooNewError`` with a message saying what to do. A file that is not JSON at all is moved
aside (``<name>.corrupt-<time>``) so the user keeps it and the store starts empty.

Blocking file code: call it from a worker thread (``anyio.to_thread``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("dbtkd.app.db")

Document = dict[str, Any]
# Migration from format N to N + 1, keyed by N. Format 0 means "no format key".
Migrations = Mapping[int, Callable[[Document], Document]]

# Only the owner may read a store: the connections store holds database passwords.
FILE_MODE = 0o600
DIR_MODE = 0o700


class StoreTooNewError(Exception):
    """The file on disk was written by a newer daemon; writing it would lose data."""


@dataclass
class Loaded:
    """A document as read, already migrated to the current format when it was older."""

    document: Document
    # The format the file on disk has; above the current one the store is read-only.
    format_on_disk: int
    existed: bool


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (mode 0700) if missing; an existing directory is left as it is."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)


def load(path: str, current_format: int, migrations: Migrations) -> Loaded | None:
    """Read ``path``; None if it does not exist (or was unreadable and moved aside)."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw) if raw.strip() else None
    except ValueError:
        document = None
    if document is None or not isinstance(document, (dict, list)):
        _move_aside(path)
        return None
    found = document.get("format", 0) if isinstance(document, dict) else 0
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        _move_aside(path)
        return None
    if found > current_format:
        assert isinstance(document, dict)
        return Loaded(document, found, True)
    for step in range(found, current_format):
        document = migrations[step](document)  # type: ignore[arg-type]
    assert isinstance(document, dict)
    document["format"] = current_format
    return Loaded(document, found, True)


def _move_aside(path: str) -> None:
    aside = f"{path}.corrupt-{int(time.time())}"
    os.replace(path, aside)
    log.warning("%s was not a readable store; moved it to %s and started afresh", path, aside)


def write(
    path: str,
    document: Document,
    *,
    format_on_disk: int,
    current_format: int,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``document`` atomically (0600). ``durable`` also flushes the file
    and the rename to disk before returning (a saved connection must survive a power cut).

    Refuses when the file on disk has a newer format than this daemon writes.
    """
    if format_on_disk > current_format:
        raise StoreTooNewError(
            f"{os.path.basename(path)} has format {format_on_disk} but this dbtkd writes "
            f"format {current_format}: it was written by a newer DB Toolkit; upgrade dbtkd "
            "(or restore an older copy of the file) to change it"
        )
    directory = os.path.dirname(path)
    ensure_private_dir(directory)
    data = json.dumps({**document, "format": current_format}, indent=1).encode("utf-8")
    # mkstemp creates the file 0600 (never briefly readable by others) in the same
    # directory, so os.replace is a rename within one file system.
    fd, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        _fsync_directory(directory)


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
