"""The worker's stdin: the handshake, then orders, read in chunks and nothing lost between them.

The supervisor writes the token line and the settings line, and orders may follow at once (a
``ping`` in the same write, or before the worker reads). The worker reads its stdin in chunks:
whatever came with the handshake goes to the orders thread first. Each case runs real
``dbtkd.worker`` code in a subprocess (it reads descriptor 0) fed through a real pipe.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from dbtkd.wire import line

SETTINGS = {"port": 1, "version": "test"}
HANDSHAKE = b"the-token\n" + json.dumps(SETTINGS).encode() + b"\n"


def run(code: str, stdin: bytes) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], input=stdin, capture_output=True, timeout=60
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


READ_HANDSHAKE = """
    import json
    from dbtkd import worker
    token, settings, rest = worker._read_handshake()
    print(json.dumps([token, settings, rest.decode()]))
"""


def test_the_handshake_alone() -> None:
    done = run(READ_HANDSHAKE, HANDSHAKE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["the-token", SETTINGS, ""]


def test_what_follows_the_handshake_is_kept_for_the_orders_thread() -> None:
    ping = line("ping", seq=7).decode()
    done = run(READ_HANDSHAKE, HANDSHAKE + (ping + '{"op": "st').encode())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["the-token", SETTINGS, ping + '{"op": "st']


def test_a_pipe_closed_during_the_handshake_is_a_clear_exit() -> None:
    done = run(READ_HANDSHAKE, b"the-token\n" + json.dumps(SETTINGS).encode()[:5])
    assert done.returncode == 1
    assert "the supervisor closed the pipe during the handshake" in done.stderr
    assert done.stdout == ""


def test_an_order_that_came_with_the_handshake_is_answered() -> None:
    # Orders gets the bytes read with the handshake: a ping among them is answered with a
    # pong on the reply pipe. Our end of the pipe stays open until then: at end of file the
    # orders thread ends the process.
    ping = line("ping", seq=7, view={"restarts": 2})
    code = """
        import asyncio, json, os
        from dbtkd import worker

        token, settings, rest = worker._read_handshake()
        assert rest, "the ping should have come with the handshake"
        reply_r, reply_w = os.pipe()

        async def main():
            view = {}
            orders = worker.Orders(
                asyncio.get_running_loop(), reply_w, lambda: {"idle": 1.5}, view, rest
            )
            orders.start()
            reply = b""
            while not reply.endswith(b"\\n"):
                reply += await asyncio.to_thread(os.read, reply_r, 4096)
            print(json.dumps([json.loads(reply), view]), flush=True)

        asyncio.run(main())
        os.read(0, 1)  # the orders thread exits the process at end of file
    """
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            proc.stdin.write(HANDSHAKE + ping)  # one write: one read takes both
            proc.stdin.flush()
            answer = proc.stdout.readline()
            proc.stdin.close()
            code_at_exit = proc.wait(timeout=60)
        finally:
            proc.kill()
        errors = proc.stderr.read().decode()
    assert answer, errors
    assert code_at_exit == 0, errors
    pong, view = json.loads(answer)
    assert pong == {"op": "pong", "seq": 7, "idle": 1.5}
    assert view == {"restarts": 2}
