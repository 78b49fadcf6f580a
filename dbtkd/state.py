"""The state file ``dbtkd.json`` and the small port files, written atomically.

The state file tells clients where a running daemon is (never its token). It is written only
once the worker answers, with ``os.replace`` so a reader never sees half a file, and removed
on stop only by the daemon whose nonce it carries. Stdlib only: ``dbtkctl`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import os

TYPE_CHECKING = False  # typing costs dbtkctl status ~3 ms at start-up; annotations only
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1


def write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str) -> dict[str, Any] | None:
    """The state file's contents, or None if absent or unreadable (a half-dead daemon)."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_if(path: str, predicate: Any) -> bool:
    """Unlink ``path`` if ``predicate(contents)`` holds for its current text."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return False
    if not predicate(text):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def read_port(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as file:
            port = int(file.read().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None
