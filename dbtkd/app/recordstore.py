"""A store that is a list of records with ids: ``{"format": 1, "<key>": [{"id": ...}, ...]}``.

``jobs.json`` and ``schedules.json`` are such lists. ``RecordStore`` is a ``Store`` (see
``dbtkd.app.store``: read the freshest copy, change it, write it atomically, all under one lock)
seen as records by id, in file order, so that a change adds, replaces or pops entries by id.
An entry without a string id is dropped at the next write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dbtkd.app.store import Document, Store

T = TypeVar("T")
Record = dict[str, Any]
# Records by id, in file order; a change adds, replaces or pops entries.
Records = dict[str, Record]


class RecordStore:
    """The records of one file (``key`` names the list inside the document)."""

    def __init__(self, data_dir: str, file_name: str, key: str, *, indent: int | None = 1) -> None:
        self.key = key
        self.store = Store(data_dir, file_name, initial=lambda: {key: []}, indent=indent)
        self.path = self.store.path

    def _records(self, document: Document) -> Records:
        records: Records = {}
        for entry in document.get(self.key) or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                records[entry["id"]] = entry
        return records

    def read_sync(self) -> Records:
        return self._records(self.store.read_sync())

    async def read(self) -> Records:
        return self._records(await self.store.read())

    async def update(self, change: Callable[[Records], T]) -> T:
        """Apply ``change`` to the freshest records and write them back; returns its result.

        ``change`` runs in a worker thread under the store's lock: it must not await or block.
        """
        return await self.store.update(self._applying(change))

    def update_sync(self, change: Callable[[Records], T]) -> T:
        return self.store.update_sync(self._applying(change))

    def _applying(self, change: Callable[[Records], T]) -> Callable[[Document], T]:
        def apply(document: Document) -> T:
            records = self._records(document)
            result = change(records)
            document[self.key] = list(records.values())
            return result

        return apply
