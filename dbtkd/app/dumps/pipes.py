"""Moving bytes between tools and backup files, in worker threads.

``pump`` copies a tool's stdout pipe into a ``Sink`` (hashing, maybe compressing); ``feed``
copies a backup file (decompressing a ``.gz``) into a tool's stdin pipe; ``read_all`` reads a
backup file through, checking a ``.gz`` file's CRC, and returns its last bytes. Each blocks
until its end of the pipe closes, which a killed process group guarantees; each counts bytes
in a ``ByteCounter`` for the job's progress, and checks the stop flag between chunks.
"""

from __future__ import annotations

import contextlib
import os
import threading
import zlib
from collections.abc import Iterator

from dbtkd.app.dumps.base import CHUNK_BYTES, GZIP_WBITS, ByteCounter, Sink
from dbtkd.app.jobs import JobFailed

TAIL_BYTES = 4096


def pump(read_fd: int, sink: Sink, counter: ByteCounter) -> None:
    """Copy the pipe into ``sink`` until the writer closes it (exits or is killed)."""
    while chunk := os.read(read_fd, CHUNK_BYTES):
        sink.write(chunk)
        counter.done += len(chunk)


def chunks(fd: int, gz: bool, counter: ByteCounter, stop: threading.Event) -> Iterator[bytes]:
    """The file's content (decompressed if ``gz``), chunk by chunk; counts raw bytes read."""
    try:
        yield from _raw_chunks(fd, gz, counter, stop)
    except zlib.error as error:
        raise JobFailed(f"the gzip data is damaged: {error}") from None


def _raw_chunks(fd: int, gz: bool, counter: ByteCounter, stop: threading.Event) -> Iterator[bytes]:
    decompressor = zlib.decompressobj(GZIP_WBITS) if gz else None
    while raw := os.read(fd, CHUNK_BYTES):
        if stop.is_set():
            raise JobFailed("cancelled")
        counter.done += len(raw)
        if decompressor is None:
            yield raw
            continue
        data = decompressor.decompress(raw)
        # A .gz may hold several members (gzip a b > c); go on with a fresh decompressor.
        while decompressor.eof and decompressor.unused_data:
            rest = decompressor.unused_data
            yield data
            decompressor = zlib.decompressobj(GZIP_WBITS)
            data = decompressor.decompress(rest)
        yield data
    if decompressor is not None and not decompressor.eof:
        raise JobFailed("the gzip file is truncated (its end is missing)")


def feed(fd: int, gz: bool, write_fd: int, counter: ByteCounter, stop: threading.Event) -> None:
    """Copy the backup file into a tool's stdin; closes ``write_fd`` at the end.

    A tool that exits early (an SQL error) closes its stdin: the copy stops there, and the
    tool's exit status and stderr say why.
    """
    try:
        for data in chunks(fd, gz, counter, stop):
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(write_fd)


def read_all(fd: int, gz: bool, stop: threading.Event) -> bytes:
    """Read the whole file (a ``.gz`` decompressed, its CRC checked); its last bytes.

    Raises ``JobFailed`` for a damaged gzip stream.
    """
    tail = b""
    for data in chunks(fd, gz, ByteCounter(), stop):
        tail = (tail + data)[-TAIL_BYTES:]
    return tail


def copy_out(fd: int, gz: bool, out_fd: int, stop: threading.Event, counter: ByteCounter) -> None:
    """Copy (decompressing) a backup file into a scratch file."""
    for data in chunks(fd, gz, counter, stop):
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view) :]
