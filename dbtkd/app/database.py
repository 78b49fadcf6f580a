"""The database API as one list of routes, for ``create_app`` to mount.

``database_routes`` builds the shared ``Database`` state (saved connections, open sessions,
query history) for one app and the routes over it: connections, queries, schema, analytics,
and the UI's settings.
Building them reads no file and imports no driver; the first request that needs one does.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from dbtkd.app.analytics import analytics_routes
from dbtkd.app.config import AppConfig
from dbtkd.app.connections import connection_routes
from dbtkd.app.endpoints import Database
from dbtkd.app.queries import query_routes
from dbtkd.app.schema import schema_routes
from dbtkd.app.streams import Streams
from dbtkd.app.uisettings import settings_routes


def database_routes(config: AppConfig, streams: Streams) -> list[BaseRoute]:
    database = Database(config.data_dir)
    return [
        *connection_routes(database),
        *query_routes(database),
        *schema_routes(database),
        *analytics_routes(database, streams),
        *settings_routes(config.data_dir),
    ]
