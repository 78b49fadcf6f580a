"""Following the supervisor's log file for ``/ws/logs``: a backlog, then new lines as written.

``LogFollower`` is plain blocking file code (run in a worker thread) that remembers which file
it reads, by device and inode, and how far. Each poll reopens the path, so the follower never
holds the log open (on Windows an open handle would stop the supervisor's rotation). When the
path names another file, the log was rotated: the rest of the old file is read from
``dbtkd.log.1`` first, then the new file from its start. A file shorter than the offset was
truncated and is read again from its start. Only complete lines are sent; a line still being
written waits for its newline. ``follow_log`` sends the backlog, then polls every 0.2 s for
as long as its client is connected, so the worker reads no file when nobody is watching.
"""

from __future__ import annotations

import json
import os
from typing import BinaryIO

import anyio
import anyio.to_thread
from starlette.websockets import WebSocket

from dbtkd.units import SECONDS

# Fast enough to feel live in the UI, slow enough that a watching client costs ~5 stat()s/s.
POLL_INTERVAL = 0.2 * SECONDS
DEFAULT_BACKLOG_LINES = 200
# A screenful many times over; beyond this, `dbtkctl logs` or the file itself is the tool.
MAX_BACKLOG_LINES = 5000
# The hard cap on any one WebSocket message (DESIGN §5); also the longest line kept whole.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_LINE_BYTES = MAX_MESSAGE_BYTES
# Room for the JSON envelope around a truncated line ({"type":"line",...,"truncated":true}).
_ENVELOPE_BYTES = 64
# Enough for 5000 ordinary lines; bounds what a backlog request reads when lines are huge or
# the log was configured to grow past its usual 5 MiB.
MAX_BACKLOG_BYTES = 16 * 1024 * 1024
# Reading backwards for the backlog, and forwards per poll: big enough to need few calls,
# small enough that one poll never holds much in memory.
READ_BLOCK_BYTES = 64 * 1024
READ_CHUNK_BYTES = 1024 * 1024

_Identity = tuple[int, int]


def _identity(stat: os.stat_result) -> _Identity:
    return (stat.st_dev, stat.st_ino)


def _decode(raw: bytes) -> str:
    # The supervisor writes UTF-8; a line cut by MAX_LINE_BYTES may end mid-character.
    return raw.removesuffix(b"\r").decode("utf-8", "replace")


def _read_backwards(file: BinaryIO, end: int, lines_wanted: int) -> tuple[list[bytes], bytes]:
    """Up to ``lines_wanted`` complete lines ending before ``end``, and the bytes after the last
    newline (a line not finished yet, or b"")."""
    start = end
    data = b""
    # One newline more than the lines wanted: the text before the first newline read may be
    # the tail of an older line.
    while start > 0 and end - start < MAX_BACKLOG_BYTES and data.count(b"\n") <= lines_wanted:
        step = min(READ_BLOCK_BYTES, start, MAX_BACKLOG_BYTES - (end - start))
        start -= step
        file.seek(start)
        data = file.read(step) + data
    complete, newline, unfinished = data.rpartition(b"\n")
    if not newline:
        return [], data
    lines = complete.split(b"\n")
    if start > 0:
        lines = lines[1:]
    return (lines[-lines_wanted:] if lines_wanted else []), unfinished


class LogFollower:
    """Reads a log file's last lines, then what is appended, across rotation and truncation.

    Blocking: call from a worker thread. Not shared between clients.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.rotated_path = path + ".1"  # where RotatingFileHandler moves the current file
        self._identity: _Identity | None = None  # None: the file does not exist yet
        self._offset = 0
        self._unfinished = b""  # read, but its newline has not been written yet

    def backlog(self, lines_wanted: int) -> list[str]:
        """The last ``lines_wanted`` complete lines (reaching into ``.1`` if the current file
        is short of them); ``poll`` then continues right after them."""
        lines: list[bytes] = []
        try:
            with open(self.path, "rb") as file:
                stat = os.fstat(file.fileno())
                lines, unfinished = _read_backwards(file, stat.st_size, lines_wanted)
                self._identity = _identity(stat)
                # The unfinished line is read again by poll, once it has its newline.
                self._offset = stat.st_size - len(unfinished)
        except FileNotFoundError:
            pass  # not written yet: poll reads it from the start when it appears
        if len(lines) < lines_wanted:
            lines = self._rotated_tail(lines_wanted - len(lines)) + lines
        return [_decode(line) for line in lines]

    def _rotated_tail(self, lines_wanted: int) -> list[bytes]:
        try:
            with open(self.rotated_path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                lines, unfinished = _read_backwards(file, size, lines_wanted)
        except FileNotFoundError:
            return []
        if unfinished:  # a rotated file is complete: its last line will get no newline
            lines.append(unfinished)
        return lines[-lines_wanted:]

    def poll(self) -> list[str]:
        """Complete lines appended since the last call (at most ``READ_CHUNK_BYTES`` worth)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            current: _Identity | None = None
            size = 0
        else:
            current, size = _identity(stat), stat.st_size
        if self._identity is None:
            if current is None:
                return []
            self._identity, self._offset = current, 0
        lines: list[bytes] = []
        if current != self._identity:
            # Rotated (or removed): finish the old file wherever it went, then switch.
            old_lines, exhausted = self._read_old_file()
            lines += old_lines
            if not exhausted:
                return [_decode(line) for line in lines]
            lines += self._flush_unfinished()
            self._identity, self._offset = current, 0
            if current is None:
                return [_decode(line) for line in lines]
        elif size < self._offset:
            # Truncated in place (copytruncate): what it holds now is all new.
            lines += self._flush_unfinished()
            self._offset = 0
        lines += self._read(self.path)[0]
        return [_decode(line) for line in lines]

    def _read_old_file(self) -> tuple[list[bytes], bool]:
        try:
            rotated = _identity(os.stat(self.rotated_path))
        except FileNotFoundError:
            return [], True
        if rotated != self._identity:
            return [], True  # rotated twice since the last poll: that part is lost
        return self._read(self.rotated_path)

    def _read(self, path: str) -> tuple[list[bytes], bool]:
        """Lines from ``path`` at the offset, if it still is our file; and whether at EOF."""
        try:
            with open(path, "rb") as file:
                if _identity(os.fstat(file.fileno())) != self._identity:
                    return [], True  # replaced between stat and open: the next poll sees it
                file.seek(self._offset)
                data = file.read(READ_CHUNK_BYTES)
        except FileNotFoundError:
            return [], True
        self._offset += len(data)
        return self._split(data), len(data) < READ_CHUNK_BYTES

    def _split(self, data: bytes) -> list[bytes]:
        *lines, self._unfinished = (self._unfinished + data).split(b"\n")
        # A line that never ends must not grow without bound: send it in pieces.
        while len(self._unfinished) > MAX_LINE_BYTES:
            lines.append(self._unfinished[:MAX_LINE_BYTES])
            self._unfinished = self._unfinished[MAX_LINE_BYTES:]
        return lines

    def _flush_unfinished(self) -> list[bytes]:
        unfinished, self._unfinished = self._unfinished, b""
        return [unfinished] if unfinished else []


def line_message(line: str) -> str:
    """``{"type": "line", "line": ...}``, cut (and marked ``truncated``) to fit 1 MiB."""
    message = json.dumps({"type": "line", "line": line}, ensure_ascii=False)
    size = len(message.encode("utf-8"))
    while size > MAX_MESSAGE_BYTES:
        # Cut in proportion; escapes make the ratio uneven, so repeat until it fits.
        keep = len(line) * (MAX_MESSAGE_BYTES - _ENVELOPE_BYTES) // size
        line = line[:keep]
        message = json.dumps({"type": "line", "line": line, "truncated": True}, ensure_ascii=False)
        size = len(message.encode("utf-8"))
    return message


def parse_backlog(raw: str | None) -> int:
    """The ``backlog`` query parameter: default 200, 0 allowed, capped at 5000."""
    if raw is None:
        return DEFAULT_BACKLOG_LINES
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(
            f"expected backlog to be a whole number 0-{MAX_BACKLOG_LINES}; got {raw[:40]!r}"
        )
    return min(int(raw), MAX_BACKLOG_LINES)


async def follow_log(websocket: WebSocket, path: str, backlog: int) -> None:
    """Send the last ``backlog`` lines of ``path``, then every line appended, until cancelled."""
    follower = LogFollower(path)
    for line in await anyio.to_thread.run_sync(follower.backlog, backlog):
        await websocket.send_text(line_message(line))
    while True:
        lines = await anyio.to_thread.run_sync(follower.poll)
        for line in lines:
            await websocket.send_text(line_message(line))
        if not lines:
            await anyio.sleep(POLL_INTERVAL)
