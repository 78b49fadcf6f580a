"""Fixtures for the database API tests: a daemon per module, a fresh database per test.

PostgreSQL (127.0.0.1:5432, trust auth, user postgres or root) and MariaDB (127.0.0.1:3306, root
without password) are real local servers. Each test gets a database of its own, created before
and dropped after it. A server that is not there skips its tests, except with ``CI=true``,
where it fails them: CI must not go green by testing nothing.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.db.support import Api, DbServer, PgAdmin
from tests.support import reaping

PG_USERS = ("postgres", "root")


def _missing(what: str, error: BaseException) -> None:
    message = f"{what} is not reachable on this machine: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing database server is a failure)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    """One daemon for a whole module (starting one per test would dominate the run time)."""
    with tempfile.TemporaryDirectory(prefix="dbtk-") as path, reaping() as reaper:
        yield Api(reaper.start(Path(path)))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pg_admin(database: str = "postgres") -> PgAdmin:
    """A superuser connection (user postgres, else root), or skip/fail if there is none."""
    errors = []
    for user in PG_USERS:
        admin = PgAdmin(user)
        try:
            admin.connect(database)
        except Exception as error:  # refused, unknown role, timeout: try the next user
            admin.close()
            errors.append(f"{user}: {error}")
            continue
        return admin
    _missing("PostgreSQL at 127.0.0.1:5432", RuntimeError("; ".join(errors)))
    raise AssertionError("unreachable")


@pytest.fixture
def postgres() -> Iterator[DbServer]:
    """A fresh PostgreSQL database, dropped (with its sessions) after the test."""
    admin = pg_admin()
    name = f"dbtk_test_{secrets.token_hex(6)}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield DbServer("postgresql", "127.0.0.1", 5432, admin.user, name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def mysql_admin(database: str | None = None) -> Any:
    import pymysql  # type: ignore[import-untyped]

    try:
        return pymysql.connect(
            host="127.0.0.1",
            port=3306,
            user="root",
            password="",
            database=database,
            connect_timeout=5,
            autocommit=True,
        )
    except pymysql.err.MySQLError as error:
        _missing("MariaDB/MySQL at 127.0.0.1:3306", error)
        raise AssertionError("unreachable") from None


@pytest.fixture
def mysql() -> Iterator[DbServer]:
    """A fresh MariaDB database, dropped after the test."""
    admin = mysql_admin()
    name = f"dbtk_test_{secrets.token_hex(6)}"
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        yield DbServer("mysql", "127.0.0.1", 3306, "root", name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def sqlite(tmp_path: Path) -> DbServer:
    return DbServer("sqlite", None, None, None, str(tmp_path / f"test-{secrets.token_hex(4)}.db"))


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def server(request: pytest.FixtureRequest) -> DbServer:
    """Each engine in turn (the fixture of the same name makes and drops its database)."""
    fixture = {"sqlite": "sqlite", "postgresql": "postgres", "mysql": "mysql"}[request.param]
    found: DbServer = request.getfixturevalue(fixture)
    return found


@pytest.fixture(params=["postgresql", "mysql"])
def remote_server(request: pytest.FixtureRequest) -> DbServer:
    """The engines that are servers (a network to cut, a process list to read)."""
    found: DbServer = request.getfixturevalue(
        "postgres" if request.param == "postgresql" else "mysql"
    )
    return found
