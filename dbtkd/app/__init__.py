"""The DB Toolkit API served by the worker: Starlette routes and streams behind one gate.

The worker builds it with ``create_app(AppConfig(...))``, serves it with Hypercorn, and on a
stop order calls ``await app.state.streams.close_all(code)``. See ``docs/security.md`` for the
checks every request and WebSocket upgrade goes through.
"""

from dbtkd.app.application import create_app
from dbtkd.app.config import AppConfig

__all__ = ["AppConfig", "create_app"]
