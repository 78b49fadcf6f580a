"""``LoadingApp``: what the worker serves while the app itself is still being imported.

Importing the app (Starlette, the route modules, the job system) is about a third of a
worker's start, and none of it is needed to say that the worker is alive. So the worker
starts serving with this in front and imports the app in a thread meanwhile (``_load``):

- ``GET``/``HEAD /health`` is answered at once, behind the same security gate as the app's,
  with the same answer;
- every other request and WebSocket waits until the app is built and its lifespan has started
  (the job system is up), then goes to it: nothing is refused for arriving early;
- the lifespan Hypercorn runs completes at once; the app's own runs once the app is built and
  ends when Hypercorn's does.

If the import or the app's start-up fails, the worker logs why and exits with
``EXIT_APP_LOAD``, which the supervisor counts as a failed start (backoff, then ``failed``), as
when such a failure came before the worker served; a failure at shutdown is only logged. In a
worker forked by the zygote everything is imported already and the thread has nothing to do.

Test faults: ``hold_app_load`` makes the loader wait until ``<data_dir>/release-app-load``
exists, so a test sees the worker serve /health (and hold the rest) with no app loaded;
``fail_app_load`` makes the import fail.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import Message, Receive, Scope, Send

from dbtkd.app.config import AppConfig
from dbtkd.app.security import SecurityMiddleware
from dbtkd.wire import EXIT_APP_LOAD

if TYPE_CHECKING:  # imported by the thread, not before the worker serves
    from starlette.applications import Starlette

log = logging.getLogger("dbtkd.app.loading")

# What building and starting the app imports, create_app's own function-level imports
# included, so that none of it is left for the event loop.
APP_MODULES = (
    "dbtkd.app.application",
    "dbtkd.app.analyticsapi",
    "dbtkd.app.endpoints",
    "dbtkd.app.events",
    "dbtkd.app.jobapi",
    "dbtkd.app.uisettings",
    # The app's lifespan starts with ``anyio.to_thread``, which loads anyio's asyncio backend.
    "anyio._backends._asyncio",
)
# The answer to GET /health, while loading and after (dbtkd.app.routes.health).
HEALTH_BODY = b'{"status":"ok"}'
RELEASE_FILE = "release-app-load"  # test fault hold_app_load


class LoadingApp:
    """The worker's ASGI app: answers /health until ``build()``'s app is ready, then is it."""

    def __init__(self, config: AppConfig, build: Callable[[], Starlette]) -> None:
        self.app: Starlette | None = None
        self.loaded_in: float | None = None  # seconds from lifespan start to ready
        self._config = config
        self._build = build
        self._health = SecurityMiddleware(
            _health,
            token=config.token,
            port=config.port,
            allowed_origins=config.allowed_origins,
        )
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        app = self.app
        if app is None:
            if _is_health(scope):
                await self._health(scope, receive, send)
                return
            await self._ready.wait()
            app = self.app
            assert app is not None
        await app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        loader = asyncio.create_task(self._load(scope))
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self._stopping.set()
        await loader
        await send({"type": "lifespan.shutdown.complete"})

    async def _load(self, scope: Scope) -> None:
        started = time.perf_counter()
        try:
            if not self._imported():  # a forked worker's is: no thread to start
                await asyncio.to_thread(self._import)
            app = self._build()
            inbox, running = await self._start(app, scope)
        except Exception:
            log.critical("could not load the app; the worker exits", exc_info=True)
            logging.shutdown()
            sys.stderr.flush()
            os._exit(EXIT_APP_LOAD)
        self.app = app
        self.loaded_in = time.perf_counter() - started
        self._ready.set()
        log.debug("app loaded in %.1f ms", self.loaded_in * 1000)
        await self._stopping.wait()
        inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            await running
        except Exception:  # the worker is stopping anyway: say so, and stop
            log.exception("the app's lifespan failed at shutdown")

    def _imported(self) -> bool:
        """Is the app imported already (a worker forked by the zygote), test faults aside?"""
        if self._config.test_faults & {"hold_app_load", "fail_app_load"}:
            return False
        return all(name in sys.modules for name in APP_MODULES)

    def _import(self) -> None:
        if "hold_app_load" in self._config.test_faults:
            release = os.path.join(self._config.data_dir, RELEASE_FILE)
            log.warning("test fault hold_app_load: waiting for %s", release)
            while not os.path.exists(release):
                time.sleep(0.01)
        if "fail_app_load" in self._config.test_faults:
            raise RuntimeError("test fault fail_app_load: the app's import fails on purpose")
        for name in APP_MODULES:
            importlib.import_module(name)

    async def _start(
        self, app: Starlette, scope: Scope
    ) -> tuple[asyncio.Queue[Message], asyncio.Future[None]]:
        """Start ``app``'s lifespan; its inbox (for the shutdown message) and its task."""
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        up: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def send(message: Message) -> None:
            if up.done():
                if message["type"] == "lifespan.shutdown.failed":
                    log.error("the app's shutdown failed: %s", message.get("message", ""))
            elif message["type"] == "lifespan.startup.complete":
                up.set_result(None)
            elif message["type"] == "lifespan.startup.failed":
                up.set_exception(RuntimeError(f"startup failed: {message.get('message', '')}"))

        inbox.put_nowait({"type": "lifespan.startup"})
        # Hypercorn's own scope: its "state" is the one every request's scope copies.
        running: asyncio.Future[None] = asyncio.ensure_future(app(scope, inbox.get, send))
        await asyncio.wait((up, running), return_when=asyncio.FIRST_COMPLETED)
        if not up.done():
            running.result()  # raises what ended it
            raise RuntimeError("the app's lifespan ended before its startup completed")
        up.result()
        return inbox, running


def _is_health(scope: Scope) -> bool:
    if scope["type"] != "http":
        return False
    return scope["path"] == "/health" and scope["method"] in ("GET", "HEAD")


async def _health(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [
        (b"content-length", str(len(HEALTH_BODY)).encode()),
        (b"content-type", b"application/json"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    body = b"" if scope["method"] == "HEAD" else HEALTH_BODY
    await send({"type": "http.response.body", "body": body})
