"""Saved connections ("profiles"): validation, their public view, and the connections store.

A profile says how to reach one database: ``db_type`` (``sqlite``, ``postgresql``, ``mysql`` —
MariaDB included), ``host``, ``port``, ``database`` (for SQLite an absolute file path),
``username`` and ``password``. The password is write-only: ``public_view`` replaces it with
``has_password`` and nothing else ever returns or logs it. Profiles live in
``<data dir>/connections.json`` (0600, ``"format": 1``, atomic writes; see ``storefile``). A
fresh data dir gets one embedded SQLite connection, ``local``, whose file is inside the data
dir, so the app has something to open with nothing installed; deleting it sticks.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from dbtkd.app.db import storefile

CURRENT_FORMAT = 1
STORE_FILE = "connections.json"
DB_TYPES = ("sqlite", "postgresql", "mysql")
# Names users type for these engines; stored under the canonical name.
DB_TYPE_ALIASES = {"postgres": "postgresql", "mariadb": "mysql", "sqlite3": "sqlite"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
EMBEDDED_ID = "local"
EMBEDDED_NAME = "Local SQLite"
EMBEDDED_FILE = "local.sqlite3"
# Long enough for any sensible label or host name; short enough to keep the list readable.
MAX_NAME_CHARS = 200
MAX_FIELD_CHARS = 4096
# Fields a client may send; "id" and "has_password" come back from a GET the UI edits and
# resends, so they are accepted and ignored. "file_path" is the old UI's name for a SQLite file.
WRITABLE_FIELDS = frozenset(
    {"name", "db_type", "host", "port", "database", "username", "password", "file_path"}
)
IGNORED_FIELDS = frozenset({"id", "has_password"})


class InvalidProfileError(ValueError):
    """The client sent a profile that cannot be saved; the message names the field."""


class ProfileNotFoundError(LookupError):
    """No saved connection has this id."""


@dataclass(frozen=True)
class Profile:
    id: str
    name: str
    db_type: str
    host: str | None
    port: int | None
    database: str | None
    username: str | None
    # Secret: never in repr (so never in a log line or a traceback's message).
    password: str | None = field(default=None, repr=False)

    @property
    def has_password(self) -> bool:
        return bool(self.password)

    def public_view(self) -> dict[str, Any]:
        """What the API returns: everything but the password."""
        return {
            "id": self.id,
            "name": self.name,
            "db_type": self.db_type,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "username": self.username,
            "has_password": self.has_password,
        }

    def stored(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """``postgresql://user@host:port/db``: for error messages (no password)."""
        if self.db_type == "sqlite":
            return f"sqlite:{self.database}"
        user = f"{self.username}@" if self.username else ""
        return f"{self.db_type}://{user}{self.host}:{self.port}/{self.database or ''}"


def _text(body: Mapping[str, Any], name: str, *, required: bool, limit: int) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise InvalidProfileError(f"expected {name} to be a non-empty string; got none")
        return None
    if not isinstance(value, str):
        raise InvalidProfileError(
            f"expected {name} to be a string; got {type(value).__name__} {value!r:.40}"
        )
    if len(value) > limit or "\x00" in value:
        raise InvalidProfileError(
            f"expected {name} to be at most {limit} characters with no NUL; got {len(value)}"
        )
    return value


def build_profile(body: Mapping[str, Any], existing: Profile | None = None) -> Profile:
    """A profile from a POST body (``existing`` None) or a PUT body merged over ``existing``.

    On PUT, a field left out keeps its saved value; ``"password": null`` or ``""`` clears the
    password, and leaving ``password`` out keeps it (the UI never has it to send back).
    """
    unknown = sorted(set(body) - WRITABLE_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise InvalidProfileError(
            f"expected only the fields {', '.join(sorted(WRITABLE_FIELDS))}; got {unknown}"
        )
    merged: dict[str, Any] = existing.stored() if existing else {}
    merged.update({key: value for key, value in body.items() if key in WRITABLE_FIELDS})
    if "file_path" in merged:
        file_path = merged.pop("file_path")
        if file_path and not body.get("database"):
            merged["database"] = file_path

    raw_type = merged.get("db_type")
    if not isinstance(raw_type, str):
        raise InvalidProfileError(f"expected db_type one of {', '.join(DB_TYPES)}; got none")
    db_type = DB_TYPE_ALIASES.get(raw_type.lower(), raw_type.lower())
    if db_type not in DB_TYPES:
        raise InvalidProfileError(
            f"expected db_type one of {', '.join(DB_TYPES)}; got {raw_type!r:.40}"
        )
    name = _text(merged, "name", required=True, limit=MAX_NAME_CHARS)
    password = merged.get("password")
    if password is not None and not isinstance(password, str):
        raise InvalidProfileError(
            f"expected password to be a string or null; got {type(password).__name__}"
        )

    if db_type == "sqlite":
        database = _text(merged, "database", required=True, limit=MAX_FIELD_CHARS)
        assert database is not None
        if not os.path.isabs(database):
            raise InvalidProfileError(
                f"expected database to be an absolute path to a SQLite file; got {database!r:.80}"
            )
        host = username = password = None
        port = None
    else:
        host = _text(merged, "host", required=True, limit=MAX_FIELD_CHARS)
        username = _text(merged, "username", required=True, limit=MAX_FIELD_CHARS)
        database = _text(merged, "database", required=False, limit=MAX_FIELD_CHARS)
        port = merged.get("port")
        if port is None or port == "":
            port = DEFAULT_PORTS[db_type]
        if isinstance(port, str) and port.isdigit():
            port = int(port)  # forms send numbers as text
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidProfileError(f"expected port to be an integer 1-65535; got {port!r:.40}")
    return Profile(
        id=existing.id if existing else str(uuid.uuid4()),
        name=name or "",
        db_type=db_type,
        host=host,
        port=port,
        database=database,
        username=username,
        password=password or None,
    )


def migrate_0_to_1(document: Any) -> dict[str, Any]:
    """The old per-window backend's ``{"connections": [...]}`` (no format key) → format 1.

    It kept SQLite files in ``file_path`` and also allowed MongoDB; connections this daemon
    cannot open are kept verbatim under ``unsupported`` rather than dropped.
    """
    connections = document if isinstance(document, list) else document.get("connections", [])
    supported: list[dict[str, Any]] = []
    unsupported: list[Any] = []
    for entry in connections:
        if not isinstance(entry, dict):
            unsupported.append(entry)
            continue
        db_type = DB_TYPE_ALIASES.get(str(entry.get("db_type")), str(entry.get("db_type")))
        if db_type not in DB_TYPES or not entry.get("id"):
            unsupported.append(entry)
            continue
        sqlite = db_type == "sqlite"
        supported.append(
            {
                "id": str(entry["id"]),
                "name": str(entry.get("name") or entry["id"]),
                "db_type": db_type,
                "host": None if sqlite else entry.get("host"),
                "port": None if sqlite else entry.get("port"),
                "database": (entry.get("file_path") or entry.get("database"))
                if sqlite
                else entry.get("database"),
                "username": None if sqlite else entry.get("username"),
                "password": None if sqlite else (entry.get("password") or None),
            }
        )
    return {"format": 1, "connections": supported, "unsupported": unsupported}


MIGRATIONS: dict[int, Any] = {0: migrate_0_to_1}


def _profile_from_stored(entry: Mapping[str, Any]) -> Profile:
    return Profile(
        id=str(entry["id"]),
        name=str(entry.get("name") or ""),
        db_type=str(entry["db_type"]),
        host=entry.get("host"),
        port=entry.get("port"),
        database=entry.get("database"),
        username=entry.get("username"),
        password=entry.get("password"),
    )


class ProfileStore:
    """The saved connections, cached in memory, written through to the data dir.

    One instance per worker; the instance lock guarantees one worker per data dir, so the
    in-memory copy is authoritative. Mutations are serialised by an ``anyio.Lock`` and return
    only once the file is on disk, so a saved connection survives a worker crash.
    """

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, STORE_FILE)
        self._lock = anyio.Lock()
        self._profiles: dict[str, Profile] | None = None
        self._extra: dict[str, Any] = {}  # keys this version does not use, kept on write
        self._format_on_disk = CURRENT_FORMAT

    async def _loaded(self) -> dict[str, Profile]:
        if self._profiles is None:
            async with self._lock:
                if self._profiles is None:
                    await anyio.to_thread.run_sync(self._load)
        assert self._profiles is not None
        return self._profiles

    def _load(self) -> None:
        storefile.ensure_private_dir(self.data_dir)
        loaded = storefile.load(self.path, CURRENT_FORMAT, MIGRATIONS)
        if loaded is None:
            embedded = Profile(
                id=EMBEDDED_ID,
                name=EMBEDDED_NAME,
                db_type="sqlite",
                host=None,
                port=None,
                database=os.path.join(self.data_dir, EMBEDDED_FILE),
                username=None,
            )
            self._profiles = {embedded.id: embedded}
            self._write()
            return
        document = loaded.document
        self._format_on_disk = loaded.format_on_disk
        self._extra = {k: v for k, v in document.items() if k not in ("format", "connections")}
        self._profiles = {}
        for entry in document.get("connections", []):
            if isinstance(entry, dict) and entry.get("id") and entry.get("db_type") in DB_TYPES:
                profile = _profile_from_stored(entry)
                self._profiles[profile.id] = profile
            else:
                # Hand-edited or from a future version: kept in the file, not offered.
                self._extra.setdefault("unsupported", []).append(entry)
        if loaded.format_on_disk < CURRENT_FORMAT:
            self._write()  # the migration is done once, not at every start

    def _write(self, profiles: dict[str, Profile] | None = None) -> None:
        profiles = self._profiles if profiles is None else profiles
        assert profiles is not None
        document = {**self._extra, "connections": [p.stored() for p in profiles.values()]}
        storefile.write(
            self.path,
            document,
            format_on_disk=self._format_on_disk,
            current_format=CURRENT_FORMAT,
        )
        self._format_on_disk = CURRENT_FORMAT

    async def all(self) -> list[Profile]:
        return list((await self._loaded()).values())

    async def get(self, profile_id: str) -> Profile:
        profile = (await self._loaded()).get(profile_id)
        if profile is None:
            raise ProfileNotFoundError(profile_id)
        return profile

    async def save(self, profile: Profile) -> None:
        """Add or replace ``profile``; returns once it is on disk."""
        await self._mutate(lambda profiles: profiles.__setitem__(profile.id, profile))

    async def delete(self, profile_id: str) -> None:
        profiles = await self._loaded()
        if profile_id not in profiles:
            raise ProfileNotFoundError(profile_id)
        await self._mutate(lambda profiles: profiles.pop(profile_id, None))

    async def _mutate(self, change: Any) -> None:
        current = await self._loaded()
        async with self._lock:
            updated = dict(current)
            change(updated)
            # Written before the in-memory copy changes: a refused or failed write (newer
            # format, full disk) leaves both as they were.
            await anyio.to_thread.run_sync(self._write, updated)
            self._profiles = updated
