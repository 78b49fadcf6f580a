"""JSON nested past any message of ours, on every socket that reads JSON (issue 11 item 7).

On bdb7a18, ``[[[[…]]]]`` 100,000 deep on /ws/migrator, /ws/terminal or /ws/analytics ended in
an unhandled ``RecursionError``: a 1011 close and a traceback in the log. Now the socket closes
with 1007 and a reason, nothing reaches the log, and the daemon serves on.
"""

from __future__ import annotations

import pytest

from tests.app.db.support import Api
from tests.app.jobs.support import close_of, connect_stream

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 50_000 + "1" + "}" * 50_000


@pytest.mark.parametrize("path", ["/ws/migrator", "/ws/terminal", "/ws/analytics"])
@pytest.mark.parametrize("frame", [DEEP, DEEP_OBJECT], ids=["arrays", "objects"])
def test_deeply_nested_json_closes_the_socket_1007_without_a_traceback(
    api: Api, path: str, frame: str
) -> None:
    log = api.daemon.home / "logs" / "dbtkd.log"
    before = log.stat().st_size if log.exists() else 0
    with connect_stream(api.daemon, path) as socket:
        socket.send(frame)
        closed = close_of(socket)  # /ws/migrator sends its snapshot first
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1007
    assert "nested" in closed.rcvd.reason
    assert api.ok("GET", "/api/v1/health")["status"] == "healthy"
    added = log.read_bytes()[before:] if log.exists() else b""
    assert b"Traceback" not in added
    assert b"RecursionError" not in added
