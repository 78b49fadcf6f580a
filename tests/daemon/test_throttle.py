"""The relay throttle as a pure policy: which worker lines reach the log, and the summary."""

from __future__ import annotations

from dbtkd import throttle
from dbtkd.throttle import LineThrottle


def feed_all(t: LineThrottle, lines: list[str], now: float) -> list[str]:
    written: list[str] = []
    for line in lines:
        summaries, passed = t.feed(line, now)
        written += summaries
        if passed is not None:
            written.append(passed)
    return written


def test_normal_output_passes_whole() -> None:
    t = LineThrottle(0.0)
    lines = [f"INFO dbtkd.app: request {i} took {i} ms on /api/v1/x{i % 7}" for i in range(15)]
    assert feed_all(t, lines, 1.0) == lines
    assert t.seconds_to_flush(1.0) is None
    assert t.flush(100.0) == []


def test_a_thousand_similar_lines_become_twenty_and_one_summary() -> None:
    t = LineThrottle(0.0)
    flood = [f"OSError: [Errno 24] Too many open files (fd={i})" for i in range(1000)]
    written = feed_all(t, flood, 1.0)
    assert written == flood[: throttle.SIMILAR_LINES_PER_WINDOW]
    assert t.seconds_to_flush(1.0) == throttle.WINDOW - 1.0
    [summary] = t.flush(throttle.WINDOW)
    assert summary.startswith("980 similar lines suppressed in the last 10 s")
    assert "980 like 'OSError: [Errno 24] Too many open files (fd=20)'" in summary
    # A new window: the same line passes again.
    assert feed_all(t, flood[:1], throttle.WINDOW + 1) == flood[:1]


def test_the_summary_comes_before_the_first_line_of_the_next_window() -> None:
    t = LineThrottle(0.0)
    feed_all(t, ["same"] * 25, 0.0)
    summaries, passed = t.feed("later", throttle.WINDOW + 5)
    assert passed == "later"
    assert len(summaries) == 1
    assert summaries[0].startswith("5 similar lines suppressed in the last 15 s")


def test_distinct_lines_are_bounded_by_bytes_per_window() -> None:
    t = LineThrottle(0.0)
    lines = [f"line {'x' * 100} {chr(65 + i % 26)}{chr(65 + i // 26 % 26)}" for i in range(5000)]
    written = feed_all(t, lines, 0.0)
    assert sum(len(line) + 1 for line in written) <= throttle.BYTES_PER_WINDOW
    assert len(written) < len(lines)
    [summary] = t.flush(0.0, force=True)
    assert summary.startswith(f"{len(lines) - len(written)} similar lines suppressed")
    assert "other kinds" in summary


def test_a_huge_line_is_cut_not_dropped() -> None:
    t = LineThrottle(0.0)
    _, passed = t.feed("y" * 100_000, 0.0)
    assert passed is not None
    assert len(passed) < throttle.MAX_LINE_CHARS + 100
    assert passed.endswith(f"(cut: {100_000 - throttle.MAX_LINE_CHARS} more characters)")


def test_numbers_do_not_make_lines_different() -> None:
    assert throttle.shape("fd=5 port 8000 at 0x7f3a") == throttle.shape("fd=6 port 8001 at 0x1")
    assert throttle.shape("GET /a") != throttle.shape("GET /b")


def test_at_debug_level_only_the_byte_budget_applies() -> None:
    t = LineThrottle(0.0, similar_per_window=None)
    access = [f'127.0.0.1:{50000 + i} "GET /api/v1/health HTTP/1.1" 200 15 9us' for i in range(400)]
    assert feed_all(t, access, 0.0) == access
    flood = ["x" * 1000] * 100
    written = feed_all(t, flood, 0.0)
    assert 0 < len(written) < len(flood)
    [summary] = t.flush(0.0, force=True)
    assert "(over 64 KiB per 10 s)" in summary
