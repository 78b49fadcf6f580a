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
    """The app for one worker. ``app.state.streams`` is its ``Streams`` registry: the worker
    calls ``await app.state.streams.close_all(code)`` on a stop order. ``app.state.events``
    is its change feed: routes publish each change a client made there."""
    from dbtkd.app.events import STREAM_NAME as EVENTS_STREAM
    from dbtkd.app.events import ChangeFeed, event_routes
    from dbtkd.app.jobapi import STREAM_NAMES as JOB_STREAM_NAMES
    from dbtkd.app.jobapi import mount_jobs  # backups, schedules, jobs, migrator, terminal

    streams = Streams((*STREAM_NAMES, *JOB_STREAM_NAMES, EVENTS_STREAM))
    from dbtkd.app.database import database_routes  # the DB API: connections, queries, ...

    events = ChangeFeed()
    routes = [
        *build_routes(config, streams),
        *database_routes(config, streams),
        *event_routes(events, streams),
    ]
    app = GuardedStarlette(config, routes, EXCEPTION_HANDLERS)
    # A JSON API has no use for redirecting "/x/" to "/x": that would answer 307 where a
    # client made a mistake worth a 404.
    app.router.redirect_slashes = False
    app.state.config = config
    app.state.streams = streams
    app.state.events = events  # the change feed of /ws/events (dbtkd.app.events)
    mount_jobs(app, config, streams)  # app.state.jobs: the worker's stop cancels its jobs
    return app
