"""Open connections per saved connection: the user's SQL, metadata, and the daemon's own edits.

A ``Session`` holds up to three engines for one profile. The ``query`` connection runs what the
user types, one statement at a time, and keeps its session state between requests (``BEGIN`` in
one request, ``COMMIT`` in the next; temporary tables; ``SET``). The ``metadata`` connection
reads the schema and the statistics, so a long query does not freeze the schema tree or the
monitoring panel. The ``edit`` connection runs the changes the daemon makes in its own
transactions (row edits, CSV imports): on the ``query`` connection their ``COMMIT`` would
commit, and their ``ROLLBACK`` undo, a transaction the user has open in the editor. Each is
opened on first use (or by ``connect``), checked before every use and
reopened if the server dropped it, and closed by ``disconnect``, by editing or deleting the
saved connection, or when the worker stops.

Engines are imported here by name, on first use, so a worker that never opens a PostgreSQL
connection never imports asyncpg.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from dbtkd.app.db.engine import DatabaseError, Engine
from dbtkd.app.db.profiles import Profile

ENGINE_CLASSES = {
    "sqlite": ("dbtkd.app.db.sqlite", "SqliteEngine"),
    "postgresql": ("dbtkd.app.db.postgresql", "PostgresEngine"),
    "mysql": ("dbtkd.app.db.mysql", "MysqlEngine"),
}
PURPOSES = ("query", "metadata", "edit")


def engine_class(db_type: str) -> type[Engine]:
    module_name, class_name = ENGINE_CLASSES[db_type]
    engine: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return engine


class _Slot:
    """One connection of a session and the lock that gives it to one caller at a time."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self.lock = anyio.Lock()
        self.engine: Engine | None = None
        # Set when the session is retired while a caller holds the slot: that caller closes
        # the engine on release, instead of the retiring code waiting for a long query.
        self.retired = False

    async def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.close()


class Session:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.slots = {purpose: _Slot(purpose) for purpose in PURPOSES}

    def is_open(self) -> bool:
        return any(slot.engine is not None for slot in self.slots.values())


class Sessions:
    """Every open session, by profile id. One instance per worker."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def is_connected(self, profile_id: str) -> bool:
        session = self._sessions.get(profile_id)
        return session is not None and session.is_open()

    async def _session(self, profile: Profile) -> Session:
        session = self._sessions.get(profile.id)
        if session is None or session.profile != profile:
            # The saved connection was edited: its old connections must not serve it.
            self._sessions[profile.id] = Session(profile)
            if session is not None:
                await self._close(session)
        return self._sessions[profile.id]

    @asynccontextmanager
    async def use(self, profile: Profile, purpose: str, wait: float) -> AsyncIterator[Engine]:
        """The session's ``purpose`` connection, opened if needed, for this caller alone.

        Waits up to ``wait`` seconds for a caller already using it (raises ``DatabaseError``).
        """
        slot = (await self._session(profile)).slots[purpose]
        try:
            with anyio.fail_after(wait):
                await slot.lock.acquire()
        except TimeoutError:
            raise DatabaseError(
                f"connection busy: the previous statement on this connection was still running "
                f"after {wait:g} s; wait for it or pass a larger timeout"
            ) from None
        try:
            if slot.engine is not None and not slot.engine.is_usable():
                await slot.close()  # dropped by the server while idle: reconnect below
            if slot.engine is None:
                slot.engine = await engine_class(profile.db_type).open(profile, purpose)
            yield slot.engine
        finally:
            try:
                if slot.retired or (slot.engine is not None and not slot.engine.is_usable()):
                    with anyio.CancelScope(shield=True):
                        await slot.close()
            finally:
                slot.lock.release()

    async def connect(self, profile: Profile, wait: float) -> str:
        """Open (or check) the query connection; returns the server's version."""
        async with self.use(profile, "query", wait) as engine:
            return await engine.server_version()

    async def disconnect(self, profile_id: str) -> bool:
        """Close the profile's connections; False if none was open."""
        session = self._sessions.pop(profile_id, None)
        if session is None:
            return False
        was_open = session.is_open()
        await self._close(session)
        return was_open

    @staticmethod
    async def _close(session: Session) -> None:
        """Close idle connections now; one in use is closed by its holder on release."""
        for slot in session.slots.values():
            slot.retired = True
            if not slot.lock.locked():
                await slot.close()

    async def close_all(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await self._close(session)
