"""The dump tools as processes: argv without the password, a group of their own, and
passwords only in a 0600 file made for that one child (removed when it exits).

Each test holds a table locked so the tool waits, alive, while ``/proc/<pid>`` is read.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator

import pytest

from tests.app.db.conftest import mysql_admin
from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import (
    cmdline,
    dump_child,
    environ,
    hold_table,
    proc_stat,
    wait_job,
)

# Characters that break naive quoting in a passfile, an option file or a shell.
AWKWARD = "p:a\\ss\"w'o rd#;$(x)"


def _held_backup_child(api: Api, server: DbServer, connection: str, tool: str) -> tuple[str, int]:
    started = api.ok("POST", "/api/v1/backups", {"connection_id": connection}, 202)
    return started["id"], dump_child(api.daemon.worker_pid, tool)


def test_pg_dump_gets_its_password_from_a_private_passfile_never_argv(
    api: Api, postgres: DbServer
) -> None:
    password = f"{AWKWARD}-{secrets.token_hex(4)}"  # trust auth ignores it; the tool still gets it
    connection = api.create(postgres, password=password)
    api.run(connection, "CREATE TABLE held (n INTEGER)")
    with hold_table(postgres, "held"):
        backup_id, pid = _held_backup_child(api, postgres, connection, "pg_dump")
        argv = cmdline(pid)
        assert not any(password in arg for arg in argv)
        assert any(arg.startswith("--dbname=") and "password" not in arg for arg in argv), argv
        env = environ(pid)
        assert not any(password in value for value in env.values())
        assert "PGPASSWORD" not in env
        assert not any(k.startswith("DBTK_") for k in env)
        passfile = env["PGPASSFILE"]
        assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o600
        assert passfile.startswith(str(api.daemon.home / "data"))
        with open(passfile, encoding="utf-8") as file:
            line = file.read()
        assert line.startswith("*:*:*:*:")
        assert "\\:" in line  # ':' escaped
        fields = proc_stat(pid)
        assert fields is not None
        assert fields[2] == str(pid)  # leads its own process group
    assert wait_job(api, backup_id)["status"] == "completed"
    assert not os.path.exists(passfile)


@pytest.fixture
def mysql_user(mysql: DbServer) -> Iterator[tuple[str, str]]:
    """A MariaDB user with an awkward password and every right on the test database."""
    user, password = f"dbtk_{secrets.token_hex(4)}", f"{AWKWARD}-{secrets.token_hex(4)}"
    admin = mysql_admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cursor.execute(f"GRANT ALL ON `{mysql.database}`.* TO %s@'%%'", (user,))
        yield user, password
    finally:
        with admin.cursor() as cursor:
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        admin.close()


def test_mariadb_dump_reads_the_password_from_a_defaults_file_never_argv(
    api: Api, mysql: DbServer, mysql_user: tuple[str, str]
) -> None:
    user, password = mysql_user
    connection = api.create(mysql, username=user, password=password)
    api.run(connection, "CREATE TABLE held (n INTEGER)")
    api.run(connection, "INSERT INTO held VALUES (7)")
    with hold_table(mysql, "held"):
        backup_id, pid = _held_backup_child(api, mysql, connection, "mariadb-dump")
        argv = cmdline(pid)
        assert not any(password in arg for arg in argv)
        assert argv[1].startswith("--defaults-extra-file=")  # it must come first
        option_file = argv[1].split("=", 1)[1]
        assert stat.S_IMODE(os.stat(option_file).st_mode) == 0o600
        env = environ(pid)
        assert "MYSQL_PWD" not in env
        assert not any(password in value for value in env.values())
    record = wait_job(api, backup_id)
    assert record["status"] == "completed", record["error"]  # the escaped password worked
    assert not os.path.exists(option_file)
    api.run(connection, "DROP TABLE held")
    started = api.ok("POST", f"/api/v1/backups/{backup_id}/restore?wait=false", {}, 202)
    assert wait_job(api, started["id"])["status"] == "completed"
    assert api.run(connection, "SELECT n FROM held")["rows"] == [[7]]


def test_a_wrong_password_fails_the_backup_with_the_servers_words(
    api: Api, mysql: DbServer, mysql_user: tuple[str, str]
) -> None:
    user, _ = mysql_user
    connection = api.create(mysql, username=user, password="not-the-password")
    started = api.ok("POST", "/api/v1/backups", {"connection_id": connection}, 202)
    record = wait_job(api, started["id"])
    assert record["status"] == "failed"
    assert "Access denied" in record["error"]
