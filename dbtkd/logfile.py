"""The supervisor's log: one rotating file, written only by the supervisor.

The worker writes to stderr; the supervisor reads those lines and logs them here with a
``worker[pid]`` prefix, so there is exactly one writer and rotation never races. Followers
(``logs`` with ``follow`` on the control socket) are fed from the same handler instead of
polling the file. Every line passes through ``redact`` first: the token must never reach disk,
whatever a library decides to print. dbtkctl imports it (``tail``, for ``logs`` and start failures):
stdlib only.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ROOT = "dbtkd"

Follower = Callable[[str], None]


class _Redact(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self.secrets:
            if secret and secret in message:
                message = message.replace(secret, "<redacted>")
        record.msg, record.args = message, None
        return True


class _Broadcast(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.followers: set[Follower] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.followers:
            return
        line = self.format(record)
        for follower in list(self.followers):
            follower(line)


class _FileHandler(logging.handlers.RotatingFileHandler):
    """Rotating file handler that remembers why writing failed instead of printing it.

    A full disk must not take the daemon down, and the default ``handleError`` would write a
    traceback to stderr (``/dev/null`` for a detached daemon): nobody would know. ``error`` is
    reported by ``status`` and cleared by the next write that succeeds.
    """

    error: str | None = None
    _failed = False

    def emit(self, record: logging.LogRecord) -> None:
        failed_before = self.error
        self._failed = False
        super().emit(record)
        if failed_before is not None and not self._failed:
            self.error = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self._failed = True
        self.error = f"cannot write {self.baseFilename}: {sys.exc_info()[1]}"
        # Drop the stream: a half-written buffer would fail again on every flush. The next
        # emit reopens the file (FileHandler opens lazily when stream is None).
        with contextlib.suppress(Exception):
            if self.stream is not None:
                self.stream.close()
        self.stream = None


class LogFile:
    """Owns the handlers on the ``dbtkd`` logger for one supervisor run."""

    def __init__(
        self, path: str, level: str, max_bytes: int, backups: int, *, echo: bool = False
    ) -> None:
        self.path = path
        self.secrets: list[str] = []
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        formatter = logging.Formatter(FORMAT)
        self._file = _FileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=False
        )
        self._broadcast = _Broadcast()
        handlers: list[logging.Handler] = [self._file, self._broadcast]
        if echo:
            handlers.append(logging.StreamHandler(sys.stderr))
        self.logger = logging.getLogger(ROOT)
        self.logger.setLevel(level.upper())
        self.logger.propagate = False
        redact = _Redact(self.secrets)
        for handler in handlers:
            handler.setFormatter(formatter)
            handler.addFilter(redact)
            self.logger.addHandler(handler)
        self._handlers = handlers

    @property
    def error(self) -> str | None:
        """Why the log file cannot be written right now (e.g. a full disk), or None."""
        return self._file.error

    def follow(self, follower: Follower) -> None:
        self._broadcast.followers.add(follower)

    def unfollow(self, follower: Follower) -> None:
        self._broadcast.followers.discard(follower)

    def close(self) -> None:
        for handler in self._handlers:
            self.logger.removeHandler(handler)
            handler.close()


def detach_in_child() -> list[logging.Handler]:
    """In a process forked from the supervisor (the zygote): take the supervisor's handlers off
    the ``dbtkd`` logger and let its records reach the root logger again, as in a spawned
    process. The handlers are returned to be kept, never closed: their file descriptor numbers
    are not theirs any more."""
    logger = logging.getLogger(ROOT)
    handlers, logger.handlers = logger.handlers, []
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    return handlers


def tail(path: str, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (and of its rotated predecessors if needed)."""
    if lines <= 0:
        return []
    collected: list[str] = []
    for candidate in (path, path + ".1"):
        try:
            with open(candidate, "rb") as file:
                file.seek(0, os.SEEK_END)
                size = file.tell()
                # Lines are short; read a window generously sized for the request.
                file.seek(max(0, size - lines * 512))
                chunk = file.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            continue
        if size > lines * 512:
            chunk = chunk[1:]  # the first line may be cut
        collected = chunk + collected
        if len(collected) >= lines:
            break
    return collected[-lines:]
