"""Fixtures for the jobs tests: the database API tests' daemon and per-test databases.

``api`` is one daemon per module; ``postgres``, ``mysql``, ``sqlite`` and ``server`` (each
engine in turn) make a fresh database per test and drop it afterwards (see
``tests/app/db/conftest.py``). Tests that stop or kill their daemon use ``daemon`` instead.
"""

from __future__ import annotations

from tests.app.db.conftest import (  # noqa: F401 - fixtures, shared with the database API tests
    api,
    mysql,
    postgres,
    server,
    sqlite,
)
