"""Kernel-held file locks: the daemon's instance lock and the clients' spawn lock.

``flock`` (POSIX) and ``msvcrt.locking`` (Windows) are released by the kernel when the holder
dies, so a crashed daemon never leaves a lock that needs manual cleanup. The instance lock file
also records the holder's pid, for error messages only: the lock, not the pid, is the truth.
Stdlib only: ``dbtkctl`` takes the spawn lock.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from dbtkd.errors import AlreadyRunning, StartFailed
from dbtkd.paths import ensure_private_dir

# Windows locks are mandatory: a locked byte cannot be read by anyone else. The lock sits well
# past the pid text, so a second daemon can still read who holds it.
WINDOWS_LOCK_OFFSET = 4096

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _open(path: str) -> int:
    ensure_private_dir(os.path.dirname(path))
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def acquire_instance_lock(path: str) -> int:
    """Take the instance lock or raise ``AlreadyRunning``; the caller owns the returned fd."""
    fd = _open(path)
    if not _try_lock(fd):
        try:
            os.lseek(fd, 0, os.SEEK_SET)  # not pread: Windows has none
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise AlreadyRunning(f"another dbtkd (pid {holder}) already serves this profile")
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:  # a full disk: say which file (fd writes name none)
        os.close(fd)
        raise OSError(exc.errno, exc.strerror, path) from None
    return fd


def acquire_data_lock(path: str, live_file: str) -> int:
    """Take the data dir's lock or raise ``AlreadyRunning`` naming the daemon that holds it.

    The runtime lock alone let two daemons share one data dir when their callers saw different
    runtime dirs (a login item, an ssh session, ``sudo -u``): each rewrote the stores from its
    own memory. This lock sits next to the data, so only one can ever own it. It is held
    through a read-only descriptor, so the data dir's file system can still be remounted
    read-only under a running daemon (which then answers saves with 503); the holder's pid is
    in ``live_file``, which the daemon writes once its control socket listens.
    """
    ensure_private_dir(os.path.dirname(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise StartFailed(f"cannot open {path}: {exc.strerror or exc}") from exc
        # A read-only or full disk is temporary (saves answer 507/503 meanwhile): lock the
        # file as it is, or the directory itself when the file cannot be made.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            fd = os.open(os.path.dirname(path), os.O_RDONLY)
    if _try_lock(fd):
        return fd
    os.close(fd)
    from dbtkd.state import read_json

    live = read_json(live_file) or {}
    where = live.get("control_socket") or "its control socket is not recorded yet"
    raise AlreadyRunning(
        f"another dbtkd (pid {live.get('pid') or 'unknown'}, control socket {where}) already "
        f"owns the data directory {os.path.dirname(path)}; use that one (dbtkctl finds it), or "
        "stop it first (dbtkctl stop)"
    )


def acquire_blocking(path: str, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds for the lock; return its fd, or None on timeout."""
    fd = _open(path)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(delay)  # flock has no timeout; short polls keep waiters responsive
        delay = min(delay * 2, 0.05)
    return fd


def release(fd: int) -> None:
    os.close(fd)  # closing the last descriptor releases the flock
