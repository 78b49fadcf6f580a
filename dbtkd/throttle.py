"""How much of the worker's output reaches the log: floods are counted, not written.

The supervisor writes everything the worker prints into ``dbtkd.log``, which keeps 25 MiB of
history (5 files of 5 MiB). A worker printing a traceback per connection once wrote 27 MiB in
30 s and rotated every older line away (issue 11 item 7). ``LineThrottle`` decides, per line,
whether it is written: per window of ``WINDOW`` seconds, at most ``SIMILAR_LINES_PER_WINDOW``
lines of one shape (the line with its numbers blanked, so "fd=5" and "fd=6" are alike) and at
most ``BYTES_PER_WINDOW`` bytes in all. What is held back is summed up in one line when the
window closes: "N similar lines suppressed", with the commonest examples. Pure: no I/O, the
clock is a parameter, so it is tested without processes.
"""

from __future__ import annotations

import collections
import re

from dbtkd.units import SECONDS

WINDOW = 10 * SECONDS
# A stack dump or a few tracebacks in a row pass whole; the thousandth copy of one does not.
SIMILAR_LINES_PER_WINDOW = 20
# 64 KiB per 10 s: a flood of distinct lines fills a 5 MiB log file in no less than 13
# minutes and the whole 25 MiB history in no less than an hour, while normal output (a few
# lines per request at most; the access log only at debug level) stays far below it.
BYTES_PER_WINDOW = 64 * 1024
# Longer lines are cut: one line must not spend the window's budget alone.
MAX_LINE_CHARS = 8 * 1024
EXAMPLES_IN_SUMMARY = 3
EXAMPLE_CHARS = 160
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|[0-9]+")


def shape(line: str) -> str:
    """What makes lines "similar": equal once their numbers (ports, fds, ids) are blanked."""
    return _NUMBERS.sub("#", line[: EXAMPLE_CHARS * 2])


class LineThrottle:
    """Per-window budgets for one stream of lines; ``feed`` says what to write now."""

    def __init__(
        self, now: float, similar_per_window: int | None = SIMILAR_LINES_PER_WINDOW
    ) -> None:
        """``similar_per_window`` None: only the byte budget applies (at log level debug,
        where the access log makes every request a line of the same shape, and all are
        wanted)."""
        self._similar = similar_per_window
        self._window_start = now
        self._bytes = 0
        self._per_shape: collections.Counter[str] = collections.Counter()
        self._suppressed: collections.Counter[str] = collections.Counter()
        self._examples: dict[str, str] = {}

    def feed(self, line: str, now: float) -> tuple[list[str], str | None]:
        """For ``line`` arriving at ``now``: the summary of the window that just closed, if
        any, and ``line`` to write (cut if very long), or None if it is held back."""
        summaries = self.flush(now)
        if len(line) > MAX_LINE_CHARS:
            line = f"{line[:MAX_LINE_CHARS]}... (cut: {len(line) - MAX_LINE_CHARS} more characters)"
        key = shape(line)
        self._per_shape[key] += 1
        size = len(line.encode("utf-8", "replace")) + 1
        alike_ok = self._similar is None or self._per_shape[key] <= self._similar
        if alike_ok and self._bytes + size <= BYTES_PER_WINDOW:
            self._bytes += size
            return summaries, line
        self._suppressed[key] += 1
        self._examples.setdefault(key, line)
        return summaries, None

    def flush(self, now: float, *, force: bool = False) -> list[str]:
        """The summary line if the window has closed (or ``force``), and a fresh window."""
        elapsed = now - self._window_start
        if elapsed < WINDOW and not force:
            return []
        summary = self._summary(elapsed)
        self._window_start = now
        self._bytes = 0
        self._per_shape.clear()
        self._suppressed.clear()
        self._examples.clear()
        return [summary] if summary else []

    def seconds_to_flush(self, now: float) -> float | None:
        """When a summary is due (0 if now), or None if nothing is held back."""
        if not self._suppressed:
            return None
        return max(0.0, self._window_start + WINDOW - now)

    def _summary(self, elapsed: float) -> str | None:
        total = sum(self._suppressed.values())
        if not total:
            return None
        commonest = self._suppressed.most_common(EXAMPLES_IN_SUMMARY)
        examples = "; ".join(
            f"{count} like {self._examples[key][:EXAMPLE_CHARS]!r}" for key, count in commonest
        )
        kinds = len(self._suppressed)
        more = f"; {kinds - len(commonest)} other kinds" if kinds > len(commonest) else ""
        alike = f"{self._similar} alike or " if self._similar is not None else ""
        return (
            f"{total} similar lines suppressed in the last {elapsed:.0f} s "
            f"(over {alike}{BYTES_PER_WINDOW // 1024} KiB per {WINDOW:.0f} s): {examples}{more}"
        )
