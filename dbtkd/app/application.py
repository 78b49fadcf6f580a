"""``create_app``: the Starlette app the worker serves, with the security gate outermost.

Starlette puts its own ``ServerErrorMiddleware`` outside every user middleware; the gate must
be outside even that, so nothing (not even the 500 page) runs for a refused request and every
response to an allowed origin gets its CORS headers. ``GuardedStarlette`` therefore wraps the
stack Starlette builds instead of joining its middleware list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, ExceptionHandler

from dbtkd.app.config import AppConfig
from dbtkd.app.routes import EXCEPTION_HANDLERS, STREAM_NAMES, build_routes
from dbtkd.app.security import SecurityMiddleware
from dbtkd.app.streams import Streams


class GuardedStarlette(Starlette):
    """A Starlette app whose outermost layer is ``SecurityMiddleware``."""

    def __init__(
        self,
        config: AppConfig,
        routes: Sequence[BaseRoute],
        exception_handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        super().__init__(routes=routes, exception_handlers=exception_handlers)
        self._config = config

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityMiddleware(
            super().build_middleware_stack(),
            token=self._config.token,
            port=self._config.port,
            allowed_origins=self._config.allowed_origins,
        )


def create_app(config: AppConfig) -> Starlette:
    """The app for one worker: the route table of ``dbtkd.app.routes`` over this state:

    - ``app.state.streams``: the ``Streams`` registry; the worker calls ``await
      app.state.streams.close_all(code)`` on a stop order;
    - ``app.state.events``: the change feed routes publish each change to (``/ws/events``);
    - ``app.state.database``: saved connections, sessions and history;
    - ``app.state.ui_settings``: the UI's settings;
    - ``app.state.jobs``, ``backups``, ``schedules``, ``migrator``, ``terminal``
      (``dbtkd.app.jobapi.setup_jobs``, which also wraps the lifespan).

    Building it reads no file and imports no driver.
    """
    from dbtkd.app.analyticsapi import Samples
    from dbtkd.app.endpoints import Database
    from dbtkd.app.events import STREAM_NAME as EVENTS_STREAM
    from dbtkd.app.events import ChangeFeed
    from dbtkd.app.jobapi import STREAM_NAMES as JOB_STREAM_NAMES
    from dbtkd.app.jobapi import setup_jobs
    from dbtkd.app.uisettings import UiSettings

    streams = Streams((*STREAM_NAMES, *JOB_STREAM_NAMES, EVENTS_STREAM))
    app = GuardedStarlette(config, build_routes(config), EXCEPTION_HANDLERS)
    # A JSON API has no use for redirecting "/x/" to "/x": that would answer 307 where a
    # client made a mistake worth a 404.
    app.router.redirect_slashes = False
    app.state.config = config
    app.state.streams = streams
    app.state.events = ChangeFeed()
    app.state.database = Database(config.data_dir)
    app.state.events.listeners.append(app.state.database.tables.on_change)
    app.state.ui_settings = UiSettings(config.data_dir)
    app.state.analytics_samples = Samples()  # what /ws/analytics saw, for the HTTP routes
    setup_jobs(app, config, streams)  # app.state.jobs: the worker's stop cancels its jobs
    return app
