"""Finding the database command-line tools, and checking that they match the server.

PostgreSQL backups use ``pg_dump`` and ``pg_restore``, which must have the server's major
version (an older one refuses a newer server; a newer one writes archives an older server's
tools cannot read). MariaDB and MySQL use ``mariadb-dump``/``mysqldump`` and the
``mariadb``/``mysql`` client of the server's flavour (MariaDB or MySQL) and major version.

A tool is looked for, in order: under ``tool_paths`` in ``dbtkd.toml`` (``pg_dump =
"/opt/pg15/bin/pg_dump"``, or the directory holding it); where packages install each major
version (Debian/Ubuntu ``/usr/lib/postgresql/N/bin``, RHEL ``/usr/pgsql-N/bin``, Homebrew,
Postgres.app, ``Program Files``); then on ``PATH``. The first whose ``--version`` matches
wins. None does → ``ToolError`` naming what was found and the package to install.

The version parsers are pure functions, tested without any tool installed.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from dbtkd.app.programs import child_environment, spawn
from dbtkd.units import SECONDS

# ``--version`` prints one line at once; a tool that takes longer is hung or is not the tool.
VERSION_TIMEOUT = 5 * SECONDS
WINDOWS = sys.platform == "win32"
PG_TOOLS = ("pg_dump", "pg_restore", "psql")
MYSQL_TOOLS = {"dump": ("mariadb-dump", "mysqldump"), "client": ("mariadb", "mysql")}
# MySQL's own packages ship only the old names; MariaDB's ship both.
MYSQL_ONLY_NAMES = {"dump": ("mysqldump",), "client": ("mysql",)}

_PG_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_MARIADB_VERSION = re.compile(r"(\d+)\.(\d+)\.\d+-MariaDB")
_MYSQL_VERSION = re.compile(r"(?:Ver|Distrib)\s+(\d+)\.(\d+)\.\d+")


class ToolError(Exception):
    """No usable tool: the message says what was found and what to install."""


@dataclass(frozen=True)
class Tool:
    name: str
    path: str
    version: str  # the first line of ``--version``


# -- versions (pure) ---------------------------------------------------------------------------


def pg_major(first: int, second: int | None) -> str:
    """PostgreSQL's major version: ``15`` for 15.x, ``9.6`` before version 10."""
    return str(first) if first >= 10 or second is None else f"{first}.{second}"


def pg_server_major(server_version_num: int) -> str:
    """``150020`` → ``15``; ``90624`` → ``9.6`` (``SHOW server_version_num``)."""
    if server_version_num >= 100000:
        return str(server_version_num // 10000)
    return f"{server_version_num // 10000}.{server_version_num // 100 % 100}"


def pg_tool_major(version_text: str) -> str | None:
    """``pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`` → ``15``."""
    found = _PG_VERSION.search(version_text)
    if found is None:
        return None
    return pg_major(int(found[1]), int(found[2]) if found[2] else None)


def mysql_flavor(version_text: str) -> tuple[str, str] | None:
    """(``MariaDB`` | ``MySQL``, major) from a server's ``VERSION()`` or a tool's ``--version``.

    ``10.11.19-MariaDB-0+deb12u1`` and ``mariadb-dump Ver 10.19 Distrib 10.11.19-MariaDB``
    are MariaDB 10; ``8.0.36`` and ``mysqldump Ver 8.0.36 for Linux`` are MySQL 8.
    """
    found = _MARIADB_VERSION.search(version_text)
    if found is not None:
        return "MariaDB", found[1]
    found = _MYSQL_VERSION.search(version_text) or re.match(r"\s*(\d+)\.(\d+)", version_text)
    if found is not None:
        return "MySQL", found[1]
    return None


def pg_package_hint(major: str) -> str:
    return (
        f"postgresql-client-{major} (Debian/Ubuntu; postgresql{major.replace('.', '')} on "
        f"RHEL/Fedora; postgresql@{major} with Homebrew)"
    )


def mysql_package_hint(flavor: str, major: str) -> str:
    if flavor == "MariaDB":
        return (
            f"mariadb-client of MariaDB {major} (Debian/Ubuntu; MariaDB-client on RHEL; "
            "mariadb with Homebrew)"
        )
    return (
        f"mysql-client of MySQL {major} (Debian/Ubuntu; mysql on RHEL/Fedora; "
        "mysql-client with Homebrew)"
    )


# -- where to look -----------------------------------------------------------------------------


def _executable(directory: str, name: str) -> str:
    return os.path.join(directory, name + (".exe" if WINDOWS else ""))


def pg_install_dirs(major: str) -> list[str]:
    """Where packages put one major version's client programs."""
    program_files = os.environ.get("PROGRAMFILES", r"C:\Program Files")
    return [
        f"/usr/lib/postgresql/{major}/bin",  # Debian, Ubuntu
        f"/usr/pgsql-{major}/bin",  # RHEL, Fedora (PGDG)
        f"/opt/homebrew/opt/postgresql@{major}/bin",  # Homebrew, Apple silicon
        f"/usr/local/opt/postgresql@{major}/bin",  # Homebrew, Intel
        f"/Applications/Postgres.app/Contents/Versions/{major}/bin",
        os.path.join(program_files, "PostgreSQL", major, "bin"),
    ]


def mysql_install_dirs() -> list[str]:
    program_files = os.environ.get("PROGRAMFILES", r"C:\Program Files")
    return [
        "/opt/homebrew/opt/mysql-client/bin",
        "/usr/local/opt/mysql-client/bin",
        "/opt/homebrew/opt/mariadb/bin",
        "/usr/local/opt/mariadb/bin",
        "/usr/local/mysql/bin",  # MySQL's macOS installer
        *sorted(glob.glob(os.path.join(program_files, "MariaDB *", "bin")), reverse=True),
        *sorted(glob.glob(os.path.join(program_files, "MySQL", "MySQL Server *", "bin"))),
    ]


def _configured(tool_paths: Mapping[str, str], name: str) -> str | None:
    value = tool_paths.get(name)
    if not value:
        return None
    value = os.path.expanduser(value)
    return _executable(value, name) if os.path.isdir(value) else value


def _candidates(
    names: tuple[str, ...], dirs: list[str], tool_paths: Mapping[str, str], path: str | None
) -> Iterator[tuple[str, str]]:
    """(name, path) in search order, each path once."""
    seen: set[str] = set()

    def once(name: str, candidate: str | None) -> Iterator[tuple[str, str]]:
        if candidate and os.path.realpath(candidate) not in seen:
            seen.add(os.path.realpath(candidate))
            yield name, candidate

    for name in names:
        yield from once(name, _configured(tool_paths, name))
    for directory in dirs:
        for name in names:
            candidate = _executable(directory, name)
            if os.path.isfile(candidate):
                yield from once(name, candidate)
    for name in names:
        yield from once(name, shutil.which(name, path=path))


# -- the finder --------------------------------------------------------------------------------


class Toolbox:
    """Finds tools for one daemon's ``tool_paths``; remembers each binary's version."""

    def __init__(self, tool_paths: Mapping[str, str], *, path: str | None = None) -> None:
        self.tool_paths = dict(tool_paths)
        self.path = path
        self._versions: dict[tuple[str, int, int], str] = {}

    async def version_of(self, path: str) -> str:
        """The first line ``path --version`` prints ('' if it does not run)."""
        key = _identity(path)
        if key is None:
            return ""
        if key not in self._versions:
            self._versions[key] = await _run_version(path)
        return self._versions[key]

    async def postgresql(self, name: str, server_major: str) -> Tool:
        """``pg_dump``, ``pg_restore`` or ``psql`` of PostgreSQL ``server_major``."""
        assert name in PG_TOOLS, name
        found: list[str] = []
        for _, candidate in _candidates(
            (name,), pg_install_dirs(server_major), self.tool_paths, self.path
        ):
            text = await self.version_of(candidate)
            major = pg_tool_major(text)
            if major == server_major:
                return Tool(name, candidate, text)
            found.append(f"{candidate} is {major or 'not a PostgreSQL tool'}")
        raise ToolError(
            f"{name} of PostgreSQL {server_major} (the server's major version) was not found"
            f"{_found_text(found)}; install {pg_package_hint(server_major)}, or set "
            f'tool_paths.{name} = "/path/to/{name}" in dbtkd.toml'
        )

    async def mysql(self, role: str, server_version: str) -> Tool:
        """The ``dump`` tool or the ``client`` for a server whose ``VERSION()`` is given."""
        flavor_major = mysql_flavor(server_version)
        if flavor_major is None:
            raise ToolError(f"cannot tell MariaDB from MySQL by the version {server_version!r}")
        flavor, major = flavor_major
        names = MYSQL_TOOLS[role] if flavor == "MariaDB" else MYSQL_ONLY_NAMES[role]
        found: list[str] = []
        for name, candidate in _candidates(names, mysql_install_dirs(), self.tool_paths, self.path):
            text = await self.version_of(candidate)
            tool_flavor = mysql_flavor(text)
            if tool_flavor == (flavor, major):
                return Tool(name, candidate, text)
            what = " ".join(tool_flavor) if tool_flavor else "not a MariaDB/MySQL tool"
            found.append(f"{candidate} is {what}")
        raise ToolError(
            f"{' or '.join(names)} of {flavor} {major} (the server's flavour and major "
            f"version) was not found{_found_text(found)}; install "
            f'{mysql_package_hint(flavor, major)}, or set tool_paths.{names[0]} = "/path/to/'
            f'{names[0]}" in dbtkd.toml'
        )


def _identity(path: str) -> tuple[str, int, int] | None:
    """What tells one binary from another (a package upgrade replaces the file)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return os.path.realpath(path), info.st_mtime_ns, info.st_size


def _found_text(found: list[str]) -> str:
    return f" (found: {'; '.join(found)})" if found else " (none on PATH)"


async def _run_version(path: str) -> str:
    try:
        child = await spawn(
            [path, "--version"],
            env=child_environment(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError:
        return ""
    output = b""
    try:
        assert child.process.stdout is not None
        with anyio.move_on_after(VERSION_TIMEOUT):
            output = await child.process.stdout.read(4096)
            await child.wait()
    finally:
        await child.kill_and_reap()
    lines = output.decode("utf-8", "replace").strip().splitlines()
    return lines[0].strip() if lines else ""


# -- tool_paths from the daemon's settings -----------------------------------------------------


def configured_tool_paths(config: Any) -> dict[str, str]:
    """``tool_paths`` from the daemon's ``dbtkd.toml`` (``AppConfig.config_file``), read again
    for each job so that an edit needs no restart."""
    config_file = getattr(config, "config_file", "")
    if not config_file:
        return {}
    from dbtkd.errors import ConfigError
    from dbtkd.settings import PARSERS, read_config_file

    try:
        table = read_config_file(config_file)
        if "tool_paths" not in table:
            return {}
        parsed: dict[str, str] = PARSERS["tool_paths"](
            table["tool_paths"], f"{config_file}: tool_paths"
        )
    except ConfigError as error:
        raise ToolError(str(error)) from None
    return parsed
