"""The query history: what ran on each saved connection, newest first, in the data dir.

``<data dir>/query-history.json`` (0600, ``"format": 1``, atomic writes) keeps the last
``MAX_ENTRIES_PER_CONNECTION`` statements per connection: the SQL text (cut at
``MAX_QUERY_CHARS``), when it ran, how long it took, whether it succeeded, its row counts and
the error. Parameters are not kept (they are data, not the query). Entries are added in memory
and the file is written after the response has gone out (coalescing bursts), without flushing
to disk: a crash or power cut may lose the last entries, but the rename keeps the file whole.
"""

from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

import anyio
import anyio.to_thread

from dbtkd.app.db import storefile

CURRENT_FORMAT = 1
STORE_FILE = "query-history.json"
# A few days of work per connection; the whole file stays well under a megabyte per connection.
MAX_ENTRIES_PER_CONNECTION = 200
MAX_QUERY_CHARS = 10_000
DEFAULT_LIST_LIMIT = 50

MIGRATIONS: dict[int, Any] = {}  # format 1 is the first; add N: migrate_N_to_N+1 here


class QueryHistory:
    """History per connection id, cached in memory and written through."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, STORE_FILE)
        self._lock = anyio.Lock()
        self._entries: dict[str, list[dict[str, Any]]] | None = None
        self._format_on_disk = CURRENT_FORMAT
        self._dirty = False

    def _load(self) -> None:
        storefile.ensure_private_dir(self.data_dir)
        loaded = storefile.load(self.path, CURRENT_FORMAT, MIGRATIONS)
        connections = loaded.document.get("connections", {}) if loaded else {}
        self._format_on_disk = loaded.format_on_disk if loaded else CURRENT_FORMAT
        self._entries = {
            key: list(value)
            for key, value in (connections.items() if isinstance(connections, dict) else ())
            if isinstance(value, list)
        }

    async def _loaded(self) -> dict[str, list[dict[str, Any]]]:
        await self.load()
        assert self._entries is not None
        return self._entries

    async def load(self) -> None:
        """Read the file (once per worker) so that ``add`` can run without waiting."""
        if self._entries is None:
            async with self._lock:
                if self._entries is None:
                    await anyio.to_thread.run_sync(self._load)

    async def save(self) -> None:
        """Write what changed since the last save; concurrent saves coalesce into one."""
        async with self._lock:
            if not self._dirty or self._entries is None:
                return
            self._dirty = False
            # A copy taken on the event loop: ``add`` may run while the thread writes.
            document = {"connections": {key: list(value) for key, value in self._entries.items()}}
            await anyio.to_thread.run_sync(
                lambda: storefile.write(
                    self.path,
                    document,
                    format_on_disk=self._format_on_disk,
                    current_format=CURRENT_FORMAT,
                    durable=False,
                )
            )

    def add(
        self,
        connection_id: str,
        *,
        query: str,
        success: bool,
        execution_time: float,
        total_rows: int,
        rows_affected: int | None,
        error: str | None,
    ) -> None:
        """Note a statement in memory (after ``load``); ``save`` writes it."""
        assert self._entries is not None, "call load() first"
        entries = self._entries.setdefault(connection_id, [])
        entries.append(
            {
                "id": uuid.uuid4().hex,
                "query": query[:MAX_QUERY_CHARS],
                "query_truncated": len(query) > MAX_QUERY_CHARS,
                "executed_at": datetime.datetime.now(datetime.UTC).isoformat(),
                "execution_time": execution_time,
                "success": success,
                "total_rows": total_rows,
                "rows_affected": rows_affected,
                "error": error,
            }
        )
        del entries[:-MAX_ENTRIES_PER_CONNECTION]
        self._dirty = True

    async def list(
        self, connection_id: str, limit: int = DEFAULT_LIST_LIMIT
    ) -> list[dict[str, Any]]:
        entries = (await self._loaded()).get(connection_id, [])
        return list(reversed(entries[-limit:])) if limit > 0 else []

    async def clear(self, connection_id: str) -> bool:
        removed = (await self._loaded()).pop(connection_id, None)
        if removed is not None:
            self._dirty = True
            await self.save()
        return bool(removed)
