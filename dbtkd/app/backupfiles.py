"""The backup directory: files under names the daemon derives, never reached through a symlink.

Backups live in ``<data dir>/backups`` (0700) as ``<backup id><extension>``: the id is the
daemon's (32 hex digits), the extension the format's (``.dump``, ``.sql``, ``.sql.gz``,
``.sqlite3``, ``.sqlite3.gz``). The user's ``name`` is only a label; ``check_label`` still
refuses one that looks like a path (a separator, ``..``, NUL) so nobody believes it picks a
file. A file being written is ``.<id>.<purpose>`` (hidden), removed unless its job completes.

Every open goes through a descriptor of the directory, itself opened with ``O_NOFOLLOW |
O_DIRECTORY``, with names relative to it (``dir_fd``) and ``O_NOFOLLOW``: a symlink planted in
place of the directory or of a file is refused, never followed. New files are created with
``O_EXCL``. ``unlink`` and ``rename`` act on a link itself, never on its target. (Windows has
no ``dir_fd``: there each name is ``lstat``-checked before it is opened.)
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator

BACKUP_DIR = "backups"
MAX_LABEL_CHARS = 200
FILE_MODE = 0o600
_NAME = re.compile(r"^\.?[0-9a-f]{32}(\.[a-z0-9-]+)+$")
_HAVE_DIR_FD = os.open in os.supports_dir_fd and os.rename in os.supports_dir_fd
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_BINARY = getattr(os, "O_BINARY", 0)


class BackupFileError(Exception):
    """A backup file (or the directory) is missing, or is not what the daemon wrote there."""


class LabelError(ValueError):
    """A backup name that looks like a path; the client's mistake (400)."""


def check_label(name: object) -> str:
    """The user's label for a backup, checked: a string without separators, ``..`` or NUL."""
    if not isinstance(name, str) or not name.strip():
        raise LabelError(f"expected name to be a non-empty string; got {name!r:.60}")
    if len(name) > MAX_LABEL_CHARS:
        raise LabelError(f"expected name to be at most {MAX_LABEL_CHARS} characters")
    for bad, what in (("/", "'/'"), ("\\", "'\\'"), ("\x00", "NUL"), ("..", "'..'")):
        if bad in name:
            raise LabelError(
                f"expected name to be a label without path separators, '..' or NUL (the daemon "
                f"names backup files itself); got {what} in {name!r:.80}"
            )
    return name.strip()


def download_name(label: str, extension: str) -> str:
    """A file name for ``Content-Disposition``, from the label: ASCII letters, digits, ``-_.``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "backup"
    return stem[:100] + extension


class BackupDir:
    """``<data dir>/backups`` and the files in it."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, BACKUP_DIR)

    @staticmethod
    def final_name(backup_id: str, extension: str) -> str:
        return _checked(f"{backup_id}{extension}")

    @staticmethod
    def partial_name(backup_id: str, purpose: str = "partial") -> str:
        return _checked(f".{backup_id}.{purpose}")

    def full_path(self, name: str) -> str:
        return os.path.join(self.path, _checked(name))

    @contextlib.contextmanager
    def _directory(self) -> Iterator[int | None]:
        """A descriptor of the directory (created 0700 if missing); never a symlink's target."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        if not _HAVE_DIR_FD:
            info = os.lstat(self.path)
            if not stat.S_ISDIR(info.st_mode):
                raise BackupFileError(_not_directory(self.path))
            yield None
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        except OSError as error:
            raise BackupFileError(_not_directory(self.path, error)) from None
        try:
            info = os.fstat(fd)
            if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
                raise BackupFileError(
                    f"{self.path} belongs to uid {info.st_uid}, not to this user; "
                    "refusing to keep backups there"
                )
            yield fd
        finally:
            os.close(fd)

    def _open(self, name: str, flags: int, mode: int = FILE_MODE) -> int:
        name = _checked(name)
        with self._directory() as directory:
            try:
                if directory is not None:
                    return os.open(
                        name, flags | O_NOFOLLOW | O_CLOEXEC | O_BINARY, mode, dir_fd=directory
                    )
                path = os.path.join(self.path, name)
                if not flags & os.O_CREAT and os.path.islink(path):
                    raise BackupFileError(_symlink(path))
                return os.open(path, flags | O_BINARY, mode)
            except OSError as error:
                raise BackupFileError(_open_error(os.path.join(self.path, name), error)) from None

    def create(self, name: str) -> int:
        """A new, empty file (0600), open for writing and reading back (the hash); fails if
        anything, a symlink included, already has that name."""
        return self._open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL)

    def open_read(self, name: str) -> int:
        """The file for reading; refuses a symlink or anything but a regular file."""
        fd = self._open(name, os.O_RDONLY)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BackupFileError(
                f"{os.path.join(self.path, name)} is not a regular file; refusing to read it"
            )
        return fd

    def commit(self, partial: str, final: str) -> None:
        """Rename a finished partial file into place."""
        with self._directory() as directory:
            if directory is not None:
                os.rename(
                    _checked(partial), _checked(final), src_dir_fd=directory, dst_dir_fd=directory
                )
            else:
                os.replace(self.full_path(partial), self.full_path(final))

    def remove(self, name: str) -> None:
        """Remove a file (or a link planted in its place); a missing one is not an error."""
        with self._directory() as directory, contextlib.suppress(FileNotFoundError):
            if directory is not None:
                os.unlink(_checked(name), dir_fd=directory)
            else:
                os.unlink(self.full_path(name))

    def sweep(self, keep: set[str]) -> list[str]:
        """Remove hidden work files (``.<id>.*``) not in ``keep``; returns what was removed."""
        removed = []
        with contextlib.suppress(OSError), os.scandir(self.path) as entries:
            for entry in entries:
                if (
                    entry.name.startswith(".")
                    and _NAME.match(entry.name)
                    and entry.name not in keep
                ):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed.append(entry.name)
        return removed


def _checked(name: str) -> str:
    # Derived names only: an id and an extension, nothing that could leave the directory.
    if not _NAME.match(name):
        raise ValueError(f"expected a derived backup file name; got {name!r:.80}")
    return name


def _not_directory(path: str, error: OSError | None = None) -> str:
    if os.path.islink(path):
        return _symlink(path)
    reason = f": {error.strerror}" if error is not None and error.strerror else ""
    return f"{path} is not a directory{reason}; move it away so the daemon can create one"


def _symlink(path: str) -> str:
    return f"{path} is a symbolic link; the daemon never follows links in the backup directory"


def _open_error(path: str, error: OSError) -> str:
    if os.path.islink(path):
        return _symlink(path)
    if isinstance(error, FileNotFoundError):
        return f"{path} is missing (removed outside the daemon?)"
    return f"cannot open {path}: {error.strerror or error}"
