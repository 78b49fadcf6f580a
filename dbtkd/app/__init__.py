"""The DB Toolkit API served by the worker: Starlette routes and streams behind one gate.

The worker builds it with ``create_app(AppConfig(...))``, serves it with Hypercorn (behind
``dbtkd.app.loading.LoadingApp``, which answers /health while the app is still being
imported), and on a stop order calls ``await app.state.streams.close_all(code)``. See
``docs/security.md`` for the checks every request and WebSocket upgrade goes through.

Both names are looked up on first use (PEP 562): importing one module of the package (the
jobs import ``dbtkd.app.programs``) then never imports the whole app, and no module of the app
imports itself in a circle through this file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbtkd.app.application import create_app
    from dbtkd.app.config import AppConfig

__all__ = ["AppConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from dbtkd.app.application import create_app

        return create_app
    if name == "AppConfig":
        from dbtkd.app.config import AppConfig

        return AppConfig
    raise AttributeError(f"module 'dbtkd.app' has no attribute {name!r}")
