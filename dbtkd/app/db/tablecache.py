"""Table descriptions the data explorer read lately, so paging through a table does not read
the catalog (and, on SQLite, count the rows) again for every page.

An entry is kept per (saved connection, schema, table) for ``TTL`` seconds at most, which bounds
how long a change made by another client goes unseen. It is dropped sooner when this daemon
sees the schema may have changed (a ``schema_changed`` or a connection edited or deleted on the
change feed) and when a statement built from it is refused (a column gone since).
"""

from __future__ import annotations

import time
from typing import Any

from dbtkd.units import SECONDS

TTL = 10 * SECONDS


class TableDescriptions:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}

    def get(self, connection_id: str, schema: str, table: str) -> dict[str, Any] | None:
        found = self._entries.get((connection_id, schema, table))
        if found is None or time.monotonic() - found[0] > TTL:
            return None
        return found[1]

    def put(self, connection_id: str, schema: str, table: str, entry: dict[str, Any]) -> None:
        if len(self._entries) > 1000:  # a sweep now and then keeps the dict small
            now = time.monotonic()
            self._entries = {k: v for k, v in self._entries.items() if now - v[0] <= TTL}
        self._entries[(connection_id, schema, table)] = (time.monotonic(), entry)

    def forget(self, connection_id: str) -> None:
        self._entries = {k: v for k, v in self._entries.items() if k[0] != connection_id}

    def on_change(self, event: dict[str, Any]) -> None:
        """A change feed listener: forget what a change may have made stale."""
        if event.get("kind") == "schema_changed":
            self.forget(str(event.get("connection_id")))
        elif event.get("kind") in ("connection_updated", "connection_deleted"):
            self.forget(str(event.get("id")))
