"""The UI contract suite: every call, field and frame of ``../shared/UI-CONTRACT.md`` as the real
DB Toolkit UI makes it, against a real daemon, on SQLite, PostgreSQL and MariaDB.

The fixtures are the database API tests' (``tests/app/db/conftest.py``): ``api`` is one daemon
per module; ``sqlite``, ``postgres``, ``mysql``, ``server`` (each engine in turn) and
``remote_server`` (the two servers) make a fresh database per test and drop it afterwards.
"""

from __future__ import annotations

from tests.app.db.conftest import (  # noqa: F401 - fixtures, shared with the database API tests
    anyio_backend,
    api,
    mysql,
    postgres,
    remote_server,
    server,
    sqlite,
)
