"""Finding dump tools of the server's version: the parsers, the search order, the errors, and
``tool_paths`` in ``dbtkd.toml`` used by a real daemon."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dbtkd.app.tools import (
    Toolbox,
    ToolError,
    configured_tool_paths,
    mysql_flavor,
    pg_server_major,
    pg_tool_major,
)
from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import backup
from tests.support import ProcessReaper, env_for


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", "15"),
        ("pg_restore (PostgreSQL) 16.1", "16"),
        ("pg_dump (PostgreSQL) 9.6.24", "9.6"),
        ("pg_dump (PostgreSQL) 17beta1", "17"),
        ("mysqldump  Ver 8.0.36 for Linux", None),
        ("", None),
    ],
)
def test_pg_tool_versions(text: str, major: str | None) -> None:
    assert pg_tool_major(text) == major


def test_pg_server_versions() -> None:
    assert pg_server_major(150020) == "15"
    assert pg_server_major(170000) == "17"
    assert pg_server_major(90624) == "9.6"


@pytest.mark.parametrize(
    ("text", "flavor"),
    [
        ("10.11.19-MariaDB-0+deb12u1", ("MariaDB", "10")),
        (
            "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu",
            ("MariaDB", "10"),
        ),
        ("mariadb-dump from 11.4.2-MariaDB, client 10.19 for Linux (x86_64)", ("MariaDB", "11")),
        ("8.0.36", ("MySQL", "8")),
        ("5.7.44-log", ("MySQL", "5")),
        (
            "mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)",
            ("MySQL", "8"),
        ),
        ("mysql  Ver 8.4.0 for macos14 on arm64 (Homebrew)", ("MySQL", "8")),
        ("not a version", None),
    ],
)
def test_mysql_flavors(text: str, flavor: tuple[str, str] | None) -> None:
    assert mysql_flavor(text) == flavor


def fake_tool(directory: Path, name: str, version_line: str) -> Path:
    """A program that prints ``version_line`` for ``--version``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.anyio
async def test_a_pg_tool_of_another_major_version_is_a_clear_error(tmp_path: Path) -> None:
    fake_tool(tmp_path / "bin", "pg_dump", "pg_dump (PostgreSQL) 14.9")
    toolbox = Toolbox({}, path=str(tmp_path / "bin"))
    with pytest.raises(ToolError) as error:
        await toolbox.postgresql("pg_dump", "13")
    message = str(error.value)
    assert "pg_dump of PostgreSQL 13" in message
    assert f"{tmp_path / 'bin' / 'pg_dump'} is 14" in message
    assert "postgresql-client-13" in message
    assert "tool_paths.pg_dump" in message


@pytest.mark.anyio
async def test_tool_paths_come_first_as_a_file_or_a_directory(tmp_path: Path) -> None:
    on_path = fake_tool(tmp_path / "bin", "pg_dump", "pg_dump (PostgreSQL) 13.1")
    configured = fake_tool(tmp_path / "pg13", "pg_dump", "pg_dump (PostgreSQL) 13.9")
    for setting in (str(configured), str(configured.parent)):
        toolbox = Toolbox({"pg_dump": setting}, path=str(on_path.parent))
        found = await toolbox.postgresql("pg_dump", "13")
        assert (found.path, found.version) == (str(configured), "pg_dump (PostgreSQL) 13.9")
    toolbox = Toolbox({}, path=str(on_path.parent))
    assert (await toolbox.postgresql("pg_dump", "13")).path == str(on_path)


@pytest.mark.anyio
async def test_mysql_tools_must_match_the_servers_flavour_and_major(tmp_path: Path) -> None:
    fake_tool(tmp_path, "mariadb-dump", "mariadb-dump  Ver 10.19 Distrib 10.11.6-MariaDB, for x")
    fake_tool(tmp_path, "mysqldump", "mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL)")
    toolbox = Toolbox({}, path=str(tmp_path))
    assert (await toolbox.mysql("dump", "10.11.19-MariaDB-0+deb12u1")).name == "mariadb-dump"
    assert (await toolbox.mysql("dump", "8.0.40")).name == "mysqldump"
    with pytest.raises(ToolError) as error:
        await toolbox.mysql("dump", "11.4.2-MariaDB")
    assert "MariaDB 11" in str(error.value)
    assert "mariadb-client" in str(error.value)
    with pytest.raises(ToolError, match="mysql-client of MySQL 5"):
        await toolbox.mysql("dump", "5.7.44-log")


@pytest.mark.anyio
async def test_a_program_that_is_not_the_tool_is_skipped(tmp_path: Path) -> None:
    fake_tool(tmp_path, "pg_dump", "something else entirely")
    with pytest.raises(ToolError, match="is not a PostgreSQL tool"):
        await Toolbox({}, path=str(tmp_path)).postgresql("pg_dump", "12")


def test_tool_paths_are_read_from_the_daemons_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config" / "dbtkd.toml"
    config.parent.mkdir()
    config.write_text('[tool_paths]\npg_dump = "/opt/pg/bin/pg_dump"\n')

    class Config:
        config_file = str(config)

    assert configured_tool_paths(Config()) == {"pg_dump": "/opt/pg/bin/pg_dump"}
    config.write_text('tool_paths = "not a table"\n')
    with pytest.raises(ToolError, match="tool_paths"):
        configured_tool_paths(Config())


def test_a_daemon_runs_the_pg_dump_named_in_its_config(
    reaper: ProcessReaper, home: Path, postgres: DbServer
) -> None:
    real = f"/usr/lib/postgresql/{_server_major()}/bin/pg_dump"
    if not os.path.exists(real):
        pytest.skip(f"{real} is not installed")
    calls = home / "calls.txt"
    wrapper = home / "tools" / "pg_dump"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    (home / "config").mkdir()
    (home / "config" / "dbtkd.toml").write_text(f'[tool_paths]\npg_dump = "{wrapper}"\n')
    api = Api(reaper.start(home, env=env_for(home)))
    connection = api.create(postgres)
    api.run(connection, "CREATE TABLE t (n INTEGER)")
    assert backup(api, connection)["status"] == "completed"
    lines = calls.read_text().splitlines()
    assert lines[0] == "--version"
    assert any("--format=custom" in line for line in lines)


def _server_major() -> str:
    from tests.app.db.conftest import pg_admin

    admin = pg_admin()
    try:
        return pg_server_major(int(admin.fetch("SHOW server_version_num")[0][0]))
    finally:
        admin.close()
