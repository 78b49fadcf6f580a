"""``/ws/terminal`` as the DB Toolkit UI speaks it (UI-CONTRACT §13, D10), against a real daemon:
``{"session_id"}`` first, then raw keystrokes and ``RESIZE:r:c`` as text, raw PTY bytes back as
binary frames, never a JSON envelope. On bdb7a18 the UI's frames were answered with JSON error
envelopes, which xterm printed verbatim.

Also issue 11 item 7: a first frame of another shape, or JSON nested thousands deep, closes the
socket with a reason (1008 / 1007), with no traceback in the log, and the daemon carries on.
"""

from __future__ import annotations

import json
import re

import pytest
from websockets.exceptions import ConnectionClosed

from tests.app.db.support import Api
from tests.app.jobs.support import connect_stream, gone
from tests.support import wait_until


def read_raw(socket: object, pattern: str, timeout: float = 20) -> re.Match[bytes]:
    """Binary frames until their bytes match ``pattern``; a text frame fails the test. What
    came after the match in the last frame is dropped: one call per command's output."""
    seen = b""
    while True:
        try:
            frame = socket.recv(timeout=timeout)  # type: ignore[attr-defined]
        except TimeoutError:
            raise AssertionError(
                f"no {pattern!r} in {timeout} s; the terminal showed {seen!r}"
            ) from None
        assert isinstance(frame, bytes), f"expected raw PTY bytes, got a text frame {frame!r:.80}"
        seen += frame
        found = re.search(pattern.encode(), seen)
        if found:
            return found


def close_code_after_raw_bytes(socket: object) -> int | None:
    """Read binary frames until the server closes; its close code (a text frame fails)."""
    try:
        while True:
            frame = socket.recv(timeout=10)  # type: ignore[attr-defined]
            assert isinstance(frame, bytes), f"expected raw bytes, got text {frame!r:.80}"
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code


def test_the_uis_terminal_types_resizes_and_reads_raw_bytes(api: Api) -> None:
    with connect_stream(api.daemon, "/ws/terminal") as socket:
        socket.send(json.dumps({"session_id": "tab-1"}))  # TerminalPanel.js:149
        socket.send("echo ui-$((6*7))\r")  # term.onData: keystrokes, Enter is \r
        read_raw(socket, r"ui-42")
        socket.send("RESIZE:33:101")  # TerminalPanel.js:189-193
        socket.send("stty size\r")
        read_raw(socket, r"33 101")
        socket.send("RESIZE:0:99999")  # clamped to 1-1000, never an error frame
        socket.send("stty size; echo $TERM $COLORTERM\r")
        # One read for both lines: they may come in one frame, and read_raw keeps nothing.
        read_raw(socket, r"1 1000\r\nxterm-256color truecolor")
        socket.send("RESIZE:24:80")  # a one-row terminal makes the line editor repaint oddly
        socket.send(b"echo bytes-$((2+3))\r")  # binary frames are keystrokes too
        read_raw(socket, r"bytes-5")
        socket.send("echo pid=$$\r")
        pid = int(read_raw(socket, r"pid=(\d+)")[1])
        socket.send("exit 0\r")
        # When the shell exits, the socket closes with 1000 and nothing else is sent.
        assert close_code_after_raw_bytes(socket) == 1000
    wait_until(lambda: gone(pid), 5, what="the shell to be reaped")


def test_closing_the_uis_terminal_kills_the_shell_and_its_jobs(api: Api) -> None:
    with connect_stream(api.daemon, "/ws/terminal") as socket:
        socket.send(json.dumps({"session_id": "tab-2"}))
        socket.send("sleep 1000 & echo bg=$! sh=$$\r")
        found = read_raw(socket, r"bg=(\d+) sh=(\d+)")
        background, shell = int(found[1]), int(found[2])
    wait_until(lambda: gone(background) and gone(shell), 5, what="the session to die")


@pytest.mark.parametrize(
    ("first", "code", "reason"),
    [
        ('{"hello": 1}', 1008, 'expected {"session_id": ...} or {"type": "start"} first'),
        ("not json", 1007, "expected a JSON text frame first"),
        ("[" * 100_000 + "]" * 100_000, 1007, "expected JSON nested at most 32 deep"),
    ],
    ids=["wrong-shape", "not-json", "nested-100000-deep"],
)
def test_a_first_frame_of_no_known_shape_closes_with_a_reason_and_no_traceback(
    api: Api, first: str, code: int, reason: str
) -> None:
    log = api.daemon.home / "logs" / "dbtkd.log"
    before = log.stat().st_size if log.exists() else 0
    with connect_stream(api.daemon, "/ws/terminal") as socket:
        socket.send(first)
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, reason)
    assert api.ok("GET", "/api/v1/health")["status"] == "healthy"
    if log.exists():
        added = log.read_bytes()[before:]
        assert b"Traceback" not in added
        assert b"RecursionError" not in added
