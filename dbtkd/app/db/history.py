"""The query history: what ran on each saved connection, newest first, in the data dir.

``<data dir>/query-history.json`` (0600, ``"format": 1``) keeps the last
``MAX_ENTRIES_PER_CONNECTION`` statements per connection: the SQL text (cut at
``MAX_QUERY_CHARS``), when it ran, how long it took, whether it succeeded, its row counts and
the error. Parameters are not kept (they are data, not the query). It is a ``Store``
(``dbtkd.app.store``): each change is made to the freshest copy on disk under the store's lock
and written atomically. ``add`` returns once the entry is in the file, so a query that was
answered is in the history even if the worker dies next; entries added while a write is under
way go together into the next one, so a burst of queries costs a few writes, not one each. The
file is not flushed to disk (``durable=False``): it is written on every query, and a power cut
may lose the last entries, but the rename keeps the file whole.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio

from dbtkd.app.store import Document, Store

CURRENT_FORMAT = 1
STORE_FILE = "query-history.json"
# A few days of work per connection; the whole file stays well under a megabyte per connection.
MAX_ENTRIES_PER_CONNECTION = 200
MAX_QUERY_CHARS = 10_000
DEFAULT_LIST_LIMIT = 50

Entry = dict[str, Any]


@dataclass
class _Batch:
    """Entries waiting for one write, and how that write went (for every ``add`` in it)."""

    entries: list[tuple[str, Entry]] = field(default_factory=list)
    written: bool = False
    error: BaseException | None = None


def _connections(document: Document) -> dict[str, list[Entry]]:
    connections = document.get("connections")
    if not isinstance(connections, dict):
        connections = document["connections"] = {}
    return connections


def _append(document: Document, entries: list[tuple[str, Entry]]) -> None:
    connections = _connections(document)
    for connection_id, entry in entries:
        kept = connections.get(connection_id)
        kept = connections[connection_id] = [*(kept if isinstance(kept, list) else []), entry]
        del kept[:-MAX_ENTRIES_PER_CONNECTION]


class QueryHistory:
    """History per connection id, in ``query-history.json``."""

    def __init__(self, data_dir: str) -> None:
        self.store = Store(
            data_dir,
            STORE_FILE,
            current_format=CURRENT_FORMAT,
            initial=lambda: {"connections": {}},
            durable=False,
            indent=None,
        )
        self.path = self.store.path
        self._batch = _Batch()
        self._writing = anyio.Lock()

    async def add(
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
        """Note a statement; returns once it is in the file (raises what the write raised)."""
        batch = self._batch
        batch.entries.append(
            (
                connection_id,
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
                },
            )
        )
        async with self._writing:
            if not batch.written and batch.error is None:
                # The first of the batch to get here writes it; entries added from now on wait
                # for the next write. (A writer cancelled before its change ran leaves the
                # batch to the next one of it.)
                if self._batch is batch:
                    self._batch = _Batch()

                def change(document: Document) -> None:
                    _append(document, batch.entries)
                    batch.written = True

                try:
                    await self.store.update(change)
                except Exception as failure:
                    batch.error = failure
        if batch.error is not None:
            raise batch.error

    async def list(self, connection_id: str, limit: int = DEFAULT_LIST_LIMIT) -> list[Entry]:
        entries = _connections(await self.store.read()).get(connection_id)
        if not isinstance(entries, list) or limit <= 0:
            return []
        return list(reversed(entries[-limit:]))

    async def clear(self, connection_id: str) -> bool:
        """Forget the connection's history; False if it had none."""
        removed: bool = await self.store.update(
            lambda document: bool(_connections(document).pop(connection_id, None))
        )
        return removed
