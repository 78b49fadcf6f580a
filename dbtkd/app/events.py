"""The change feed: every window hears of every change any client made through the daemon.

One daemon serves every window, so windows can agree: a connection saved, renamed or deleted
in one, a table created from another's query editor, a schedule edited, a backup finished.
``ChangeFeed.publish`` numbers each change (``seq``, 1, 2, ...) within the worker's ``epoch``
(a random id per worker) and keeps the last ``REPLAY_EVENTS`` of them. ``/ws/events`` sends:

- first ``{"type": "hello", "epoch", "seq"}`` (the number of the latest change);
- when the client asked ``?since=<epoch>:<seq>``, the changes after that one, or a single
  ``{"type": "resync", ...}`` when they cannot be replayed (another worker's epoch: a restart
  or a handoff came between; or more changes than the buffer holds): reload everything;
- then each change as it happens: ``{"type": "change", "epoch", "seq", "kind", "time", ...}``
  with ``kind`` one of ``connection_created``, ``connection_updated``, ``connection_deleted``
  (``id``; never a password), ``settings_changed``, ``backup_changed`` (``id``, ``status``),
  ``schedule_changed`` (``id``, ``deleted``), ``schema_changed`` (``connection_id``).

A client never sees a gap without being told: a replay is complete or it is a ``resync``. The
feed's state is the worker's memory; a new worker starts a new epoch, which the ``since`` of
every client reconnecting from the old one fails to match. ``ChangeFeed`` does no I/O and is
tested without sockets; ``events_stream`` is the endpoint.
"""

from __future__ import annotations

import collections
import datetime
import re
import secrets
from collections.abc import Callable
from typing import Any

import anyio
from starlette.websockets import WebSocket

from dbtkd.app.streams import Streams

# A minute of heavy use (a script creating tables one by one) fits; past it, a resync costs a
# window one reload, which is cheaper than memory held for clients that may never return.
REPLAY_EVENTS = 1000
STREAM_NAME = "events"
KINDS = frozenset(
    {
        "connection_created",
        "connection_updated",
        "connection_deleted",
        "settings_changed",
        "backup_changed",
        "schedule_changed",
        "schema_changed",
    }
)
_SINCE = re.compile(r"^([0-9A-Za-z]{1,64}):(\d{1,18})$")

Event = dict[str, Any]


class ChangeFeed:
    """Numbered changes of one worker, the last ``capacity`` of them kept for replay."""

    def __init__(self, capacity: int = REPLAY_EVENTS, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(8)
        self.seq = 0
        self._buffer: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._published = anyio.Event()
        # Called with each change as it is published (caches that a change makes stale).
        self.listeners: list[Callable[[Event], None]] = []

    def publish(self, kind: str, **fields: Any) -> Event:
        """Number and keep one change, and wake every subscriber."""
        if kind not in KINDS:
            raise ValueError(f"expected a change kind ({', '.join(sorted(KINDS))}); got {kind!r}")
        self.seq += 1
        event = {
            "type": "change",
            "epoch": self.epoch,
            "seq": self.seq,
            "kind": kind,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            **fields,
        }
        self._buffer.append(event)
        for listener in self.listeners:
            listener(event)
        woken, self._published = self._published, anyio.Event()
        woken.set()
        return event

    def hello(self) -> Event:
        return {"type": "hello", "epoch": self.epoch, "seq": self.seq}

    def resync(self, reason: str) -> Event:
        return {"type": "resync", "epoch": self.epoch, "seq": self.seq, "reason": reason}

    def after(self, seq: int) -> list[Event] | None:
        """The changes after ``seq`` of this epoch, or None when some are no longer kept."""
        if seq > self.seq:
            return None  # a number this worker never gave out
        if seq == self.seq:
            return []
        if not self._buffer or self._buffer[0]["seq"] > seq + 1:
            return None
        return [event for event in self._buffer if event["seq"] > seq]

    def replay(self, since: str | None) -> list[Event]:
        """What a client that last saw ``since`` (``"<epoch>:<seq>"``) must get first."""
        if since is None:
            return []
        matched = _SINCE.match(since)
        if matched is None:
            return [self.resync(f"expected since=<epoch>:<seq>; got {since[:80]!r}")]
        epoch, seq = matched.group(1), int(matched.group(2))
        if epoch != self.epoch:
            return [self.resync("the daemon's worker changed (a restart or an upgrade)")]
        missed = self.after(seq)
        if missed is None:
            return [self.resync(f"more than {self._buffer.maxlen} changes since {seq}")]
        return missed

    async def wait_after(self, seq: int) -> list[Event]:
        """The changes after ``seq``, waiting for the next one when there is none yet."""
        while True:
            published = self._published
            missed = self.after(seq)
            if missed is None:
                return [self.resync(f"more than {self._buffer.maxlen} changes since {seq}")]
            if missed:
                return missed
            await published.wait()


# Statements that change what a schema tree shows. Matched anywhere outside literals and
# comments, so a script counts; a false positive costs a window one reload of its tree.
_SCHEMA_WORDS = re.compile(r"\b(?:CREATE|ALTER|DROP|RENAME|ATTACH|DETACH)\b", re.IGNORECASE)
_NOT_CODE = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|--[^\n]*|/\*.*?\*/|\$\$.*?\$\$", re.DOTALL
)


def may_change_schema(sql: str) -> bool:
    """Whether ``sql`` may create, alter or drop something a schema tree shows."""
    return _SCHEMA_WORDS.search(_NOT_CODE.sub(" ", sql)) is not None


def job_listener(feed: ChangeFeed) -> Any:
    """A ``Jobs`` listener: a backup's status changes, and finished migrations, as changes."""
    statuses: dict[str, str] = {}

    def listen(record: dict[str, Any]) -> None:
        job_id, status = str(record.get("id")), str(record.get("status"))
        if statuses.get(job_id) == status:
            return  # progress only: /ws/backups carries it
        statuses[job_id] = status
        if status in ("completed", "failed"):
            statuses.pop(job_id)
        if record.get("kind") == "backup":
            feed.publish("backup_changed", id=job_id, status=status)
        elif record.get("kind") == "migration" and status in ("completed", "failed"):
            connection_id = record.get("connection_id")
            if isinstance(connection_id, str):
                feed.publish("schema_changed", connection_id=connection_id)

    return listen


def publish(app: Any, kind: str, **fields: Any) -> None:
    """Publish on ``app``'s feed (a no-op for apps built without one, e.g. in unit tests)."""
    feed = getattr(app.state, "events", None)
    if feed is not None:
        feed.publish(kind, **fields)


async def events_stream(websocket: WebSocket) -> None:
    """``/ws/events``: hello, what the client missed (or resync), then each change."""
    feed: ChangeFeed = websocket.app.state.events
    streams: Streams = websocket.app.state.streams
    since = websocket.query_params.get("since")

    async def body(socket: WebSocket) -> None:
        # Taken together, before any await: a change published while hello is being sent
        # is then sent live, not skipped.
        hello, missed = feed.hello(), feed.replay(since)
        seq = hello["seq"]
        await socket.send_json(hello)
        for event in missed:
            await socket.send_json(event)
        while True:
            for event in await feed.wait_after(seq):
                await socket.send_json(event)
                seq = event["seq"]

    await streams.serve(STREAM_NAME, websocket, body)
