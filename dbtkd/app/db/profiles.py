"""Saved connections ("profiles"): validation, their public view, and the connections store.

A profile says how to reach one database: ``db_type`` (``sqlite``, ``postgresql``, ``mysql`` —
MariaDB included), ``host``, ``port``, ``database`` (for SQLite an absolute file path),
``username`` and ``password``. The password is write-only: ``public_view`` replaces it with
``has_password`` and nothing else ever returns or logs it. Profiles live in
``<data dir>/connections.json`` (0600, ``"format": 1``, changed only through
``dbtkd.app.store``: read the freshest copy, change it, write it atomically, under one lock). A
fresh data dir gets one embedded SQLite connection, ``local``, whose file is inside the data
dir, so the app has something to open with nothing installed; deleting it sticks.

Passwords go to the OS keyring when one is reachable (``dbtkd.passwords``): the file then
holds ``"keyring": "<ref>"`` and ``"password": null``; every change of the store moves passwords
still in the file to the keyring, and a reference is forgotten only once the file no longer
names it. A list reads no password; ``get`` fetches the one it returns.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from dbtkd.app.store import Document, Store
from dbtkd.passwords import CONNECTIONS_FILE, PasswordVault

log = logging.getLogger("dbtkd.app.db")

CURRENT_FORMAT = 1
STORE_FILE = CONNECTIONS_FILE
DB_TYPES = ("sqlite", "postgresql", "mysql")
# Names users type for these engines; stored under the canonical name.
DB_TYPE_ALIASES = {"postgres": "postgresql", "mariadb": "mysql", "sqlite3": "sqlite"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
DB_TYPE_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}
# Engines the old backend offered and this one does not (UI-CONTRACT §15, D12).
UNSUPPORTED_TYPES = {"mongodb": "MongoDB"}
EMBEDDED_ID = "local"
EMBEDDED_NAME = "Local SQLite"
EMBEDDED_FILE = "local.sqlite3"
T = TypeVar("T")
# Long enough for any sensible label or host name; short enough to keep the list readable.
MAX_NAME_CHARS = 200
MAX_FIELD_CHARS = 4096
# Fields a client may send; "id" and "has_password" come back from a GET the UI edits and
# resends, so they are accepted and ignored. "file_path" is the old UI's name for a SQLite file.
WRITABLE_FIELDS = frozenset(
    {"name", "db_type", "host", "port", "database", "username", "password", "file_path"}
)
IGNORED_FIELDS = frozenset({"id", "has_password"})
# While passwords wait in the file for a keyring, a read tries to move them at most this often
# (a keyring that appears is used within this long; one that is absent costs one try per period).
KEYRING_RETRY = 30.0  # seconds


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
    # The keyring item holding the password (None: in the file, or none); ``password`` is None
    # until ``ProfileStore.get`` fetches it.
    keyring_ref: str | None = field(default=None, repr=False)

    @property
    def has_password(self) -> bool:
        return bool(self.password) or bool(self.keyring_ref)

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
        """The entry in ``connections.json``: the password itself, or its keyring reference."""
        entry = dataclasses.asdict(self)
        ref = entry.pop("keyring_ref")
        if ref:
            entry["password"] = None
            entry["keyring"] = ref
        return entry

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

    On PUT, a field left out keeps its saved value. The password is never shown, so the UI's
    edit form sends back ``""`` for it: on PUT a missing or ``""`` password keeps the saved one
    and only ``"password": null`` clears it (UI-CONTRACT §1, "The password rule").
    """
    unknown = sorted(set(body) - WRITABLE_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise InvalidProfileError(
            f"expected only the fields {', '.join(sorted(WRITABLE_FIELDS))}; got {unknown}"
        )
    merged: dict[str, Any] = dataclasses.asdict(existing) if existing else {}
    merged.update({key: value for key, value in body.items() if key in WRITABLE_FIELDS})
    keep_password = existing is not None and body.get("password", "") == ""
    if keep_password:
        assert existing is not None
        merged["password"] = existing.password  # the form's empty field: unchanged
    if "file_path" in merged:
        file_path = merged.pop("file_path")
        if file_path and not body.get("database"):
            merged["database"] = file_path

    raw_type = merged.get("db_type")
    if not isinstance(raw_type, str):
        raise InvalidProfileError(f"expected db_type one of {', '.join(DB_TYPES)}; got none")
    db_type = DB_TYPE_ALIASES.get(raw_type.lower(), raw_type.lower())
    if db_type in UNSUPPORTED_TYPES:
        raise InvalidProfileError(
            f"{UNSUPPORTED_TYPES[db_type]} is not supported by this version of DB Toolkit; it "
            f"connects to {', '.join(DB_TYPE_NAMES.values())}"
        )
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
                " (give the absolute path of the SQLite file)"
            )
        host = username = password = None
        port = None
    else:
        host = _text(merged, "host", required=True, limit=MAX_FIELD_CHARS)
        username = _text(merged, "username", required=True, limit=MAX_FIELD_CHARS)
        database = _text(merged, "database", required=False, limit=MAX_FIELD_CHARS)
        port = merged.get("port")
        if port is None or port == "" or port == 0:  # the form's cleared or SQLite-ish port
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
        # An unchanged password stays where it is; a new one is placed when it is saved.
        keyring_ref=existing.keyring_ref if existing and keep_password and username else None,
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
        keyring_ref=entry["keyring"] if isinstance(entry.get("keyring"), str) else None,
    )


class ProfileStore:
    """The saved connections, in ``connections.json`` (a ``Store``: every change is made to
    the freshest copy on disk, under its lock, and is on disk before it returns).

    Nothing is cached: every read is of the file as it is now, so the other worker of a version
    handoff, or a second ``ProfileStore`` of the same data dir, never sees a stale list.
    """

    def __init__(self, data_dir: str, vault: PasswordVault | None = None) -> None:
        self.data_dir = data_dir
        self.vault = vault or PasswordVault.shared()
        self.store = Store(
            data_dir, STORE_FILE, migrations=MIGRATIONS, initial=self._fresh_data_dir
        )
        self.path = self.store.path

    def _fresh_data_dir(self) -> Document:
        embedded = Profile(
            id=EMBEDDED_ID,
            name=EMBEDDED_NAME,
            db_type="sqlite",
            host=None,
            port=None,
            database=os.path.join(self.data_dir, EMBEDDED_FILE),
            username=None,
        )
        return {"connections": [embedded.stored()]}

    async def all(self) -> list[Profile]:
        profiles = _profiles(await self.store.read())
        await self._move_to_keyring(profiles.values())
        return list(profiles.values())

    async def get(self, profile_id: str) -> Profile:
        """The profile, with its password (fetched from the keyring if it is there)."""
        profiles = _profiles(await self.store.read())
        profile = profiles.get(profile_id)
        if profile is None:
            raise ProfileNotFoundError(profile_id)
        await self._move_to_keyring(profiles.values())
        if profile.keyring_ref and not profile.password:
            password = await anyio.to_thread.run_sync(self.vault.fetch, profile.keyring_ref)
            profile = dataclasses.replace(profile, password=password)
        return profile

    async def _move_to_keyring(self, profiles: Any) -> None:
        """Passwords still in the file go to the keyring if one has appeared (at most one try
        every ``KEYRING_RETRY`` seconds; every change of the store tries too)."""
        if self.vault.backend is None or not any(
            p.password and not p.keyring_ref for p in profiles
        ):
            return
        now = time.monotonic()
        if now - self.vault.last_move_try < KEYRING_RETRY:
            return
        self.vault.last_move_try = now
        try:
            await self._change(lambda profiles: None)
        except Exception as error:
            # A read must not fail because a write it chose to make did (a full or read-only
            # data dir, a file of a newer daemon): the passwords stay in the file meanwhile.
            log.warning("could not move passwords to the OS keyring: %s", error)

    async def save(self, profile: Profile) -> None:
        """Add ``profile`` (or replace the one with its id); returns once it is on disk."""
        await self._change(lambda profiles: profiles.__setitem__(profile.id, profile))

    async def edit(self, profile_id: str, body: Mapping[str, Any]) -> Profile:
        """Merge a PUT ``body`` over the saved profile as it is now; returns the result."""

        def change(profiles: dict[str, Profile]) -> Profile:
            existing = profiles.get(profile_id)
            if existing is None:
                raise ProfileNotFoundError(profile_id)
            profile = profiles[profile_id] = build_profile(body, existing)
            return profile

        return await self._change(change)

    async def delete(self, profile_id: str) -> None:
        def change(profiles: dict[str, Profile]) -> None:
            if profiles.pop(profile_id, None) is None:
                raise ProfileNotFoundError(profile_id)

        await self._change(change)

    async def _change(self, change: Callable[[dict[str, Profile]], T]) -> T:
        named_before: set[str] = set()
        placed: set[str] = set()

        def apply(document: Document) -> T:
            profiles = _profiles(document)
            named_before.update(p.keyring_ref for p in profiles.values() if p.keyring_ref)
            result = change(profiles)
            placed.update(self._place_passwords(profiles))
            document["connections"] = [profile.stored() for profile in profiles.values()]
            return result

        try:
            result = await self.store.update(apply)
        except BaseException:
            # The write failed: items made for it are stray unless it got as far as the rename
            # (a failed fsync after it), so only those the file on disk does not name go.
            if placed:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._discard_unnamed, placed)
            raise
        # Only now that the file no longer names them: items of changed, cleared or deleted
        # passwords. (A crash before this leaves stray items, never a missing password.)
        if named_before:
            await anyio.to_thread.run_sync(self._discard_unnamed, named_before)
        return result

    def _discard_unnamed(self, refs: set[str]) -> None:
        try:
            document = self.store.read_sync()
            # Every entry, the ones this version cannot use included: their items stay too.
            entries = [*(document.get("connections") or []), *(document.get("unsupported") or [])]
            named = {e.get("keyring") for e in entries if isinstance(e, dict)}
        except Exception:
            return  # cannot tell: a stray item is better than a lost password
        self.vault.discard(refs - named)

    def _place_passwords(self, profiles: dict[str, Profile]) -> list[str]:
        """Under the store's lock, before the file is written: each password that would be
        written to the file goes to the keyring first, if one takes it. Returns the new refs."""
        placed: list[str] = []
        for profile_id, profile in profiles.items():
            if not profile.password or profile.keyring_ref:
                continue
            ref = self.vault.store(profile_id, profile.name, profile.password)
            if ref is None:
                break  # no keyring now: this and the rest stay in the file
            profiles[profile_id] = dataclasses.replace(profile, keyring_ref=ref)
            placed.append(ref)
        return placed


def _profiles(document: Document) -> dict[str, Profile]:
    """The usable profiles of a document, by id. Entries this version cannot use (hand-edited,
    or from a future version) move to ``unsupported``: kept in the file, not offered."""
    profiles: dict[str, Profile] = {}
    for entry in document.get("connections") or []:
        if isinstance(entry, dict) and entry.get("id") and entry.get("db_type") in DB_TYPES:
            profile = _profile_from_stored(entry)
            profiles[profile.id] = profile
        else:
            document.setdefault("unsupported", []).append(entry)
    return profiles
