"""Test helper: serve ``create_app`` with Hypercorn on an inherited listening socket.

``test_real_hypercorn`` starts it with ``sys.executable serve_app.py FD PORT LOG_FILE`` and
``pass_fds=[FD]``, the way the supervisor hands the worker its socket. The token is the first
line on stdin (never argv). The next line is a WebSocket close code: the app's streams are
closed with it (as the worker does on a stop order) and Hypercorn shuts down.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from hypercorn.asyncio import serve
from hypercorn.config import Config

from dbtkd.app import AppConfig, create_app

# Mirrors what the worker configures (DESIGN §2, §5).
GRACEFUL_TIMEOUT_SECONDS = 2.0
WEBSOCKET_MAX_MESSAGE_BYTES = 1024 * 1024
GOING_AWAY = 1001


async def run(fd: int, port: int, log_file: str, token: str) -> None:
    now = time.time()
    app = create_app(
        AppConfig(
            token=token,
            port=port,
            allowed_origins=("app://dbtk",),
            version="0.0.0-test",
            daemon_pid=os.getppid(),
            daemon_started_at=now,
            worker_started_at=now,
            worker_restarts=0,
            log_file=log_file,
            data_dir=os.path.dirname(log_file),
        )
    )
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    config.accesslog = None
    loop = asyncio.get_running_loop()

    async def shutdown_trigger() -> None:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        await app.state.streams.close_all(int(line) if line.strip() else GOING_AWAY)

    await serve(app, config, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    fd, port, log_file = int(argv[0]), int(argv[1]), argv[2]
    token = sys.stdin.readline().strip()
    asyncio.run(run(fd, port, log_file, token))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
