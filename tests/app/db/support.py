"""Helpers for the database API tests: the API over HTTP, admin access, a cuttable TCP proxy.

``Api`` speaks JSON to a real daemon. ``PgAdmin`` runs asyncpg on a private event loop in a
thread, so sync tests and fixtures can read ``pg_stat_activity`` without an event loop of their
own. ``TcpProxy`` stands between the daemon and a database server on a loopback port; stopping it
cuts every connection and refuses new ones, which is what a dead server looks like from the
daemon, and starting it again on the same port brings the server back. It counts the bytes the
server sent (``from_server``), which is what a page cost on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from tests.support import Daemon

T = TypeVar("T")


@dataclass(frozen=True)
class DbServer:
    """Where a test's database is: enough to build a saved connection."""

    db_type: str
    host: str | None
    port: int | None
    username: str | None
    database: str

    def profile(self, name: str = "test", **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "db_type": self.db_type, "database": self.database}
        if self.db_type != "sqlite":
            body.update(host=self.host, port=self.port, username=self.username)
        body.update(changes)
        return body


class Api:
    """JSON over HTTP to one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 30
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        status, _, raw = self.daemon.http(method, path, body=data, headers=headers, timeout=timeout)
        return status, (json.loads(raw) if raw else None)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, document = self.call(method, path, body)
        assert got == status, (got, document)
        return document

    def create(self, server: DbServer, name: str = "test", **changes: Any) -> str:
        document = self.ok("POST", "/api/v1/connections", server.profile(name, **changes), 201)
        return str(document["id"])

    def query(self, connection_id: str, sql: str, **options: Any) -> dict[str, Any]:
        document: dict[str, Any] = self.ok(
            "POST", f"/api/v1/connections/{connection_id}/query", {"query": sql, **options}
        )
        return document

    def run(self, connection_id: str, sql: str, **options: Any) -> dict[str, Any]:
        """``query`` that must succeed."""
        document = self.query(connection_id, sql, **options)
        assert document["success"], document["error"]
        return document


class PgAdmin:
    """A superuser connection to PostgreSQL on its own event loop thread."""

    def __init__(self, user: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.user = user
        self._connection: Any = None

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def connect(self, database: str = "postgres") -> None:
        import asyncpg  # type: ignore[import-untyped]

        self._connection = self._run(
            asyncpg.connect(
                host="127.0.0.1", port=5432, user=self.user, database=database, timeout=5
            )
        )

    def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(self._run(self._connection.fetch(sql, *args)))

    def execute(self, sql: str) -> None:
        self._run(self._connection.execute(sql))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._connection is not None:
                self._run(self._connection.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


class TcpProxy:
    """Forwards a loopback port to a database server until stopped."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.from_server = 0  # bytes forwarded from the server to the daemon

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Close the listener and every forwarded connection, both sides."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, source is upstream), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if count:
                    with self._lock:
                        self.from_server += len(data)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
