"""The analytics page's HTTP routes (UI-CONTRACT §8.1-§8.7), under
``/api/v1/analytics/connections/{id}/``: ``history``, ``slow-queries``, ``pool-stats`` (from the
samples ``/ws/analytics`` takes, kept in the worker's memory: 3 h of points, 24 h of slow
queries), ``table-stats``, ``kill``, ``query-plan`` (never ``ANALYZE``: the statements offered
are other sessions' running UPDATEs and DELETEs, D8) and ``export-pdf``. An unknown connection
id is 404 on every one (the UI then goes back to its connections page).
"""

from __future__ import annotations

import collections
import datetime
import json
import time
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.analytics import snapshot, ui_fields
from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError
from dbtkd.app.db.profiles import Profile
from dbtkd.app.endpoints import Database, JSONResponse, database_of, invalid, read_object
from dbtkd.app.pdf import Report, analytics_report
from dbtkd.app.schema import qualified

HOUR = 3600.0
HISTORY_WINDOW = 3 * HOUR  # the page's range selector goes up to 3 h
SLOW_WINDOW = 24 * HOUR
MAX_POINTS = 3600  # 3 h of samples every 3 s
TABLE_STATS_ROWS = 20


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="seconds")


class Samples:
    """What each connection's analytics samples showed, per connection id (memory only)."""

    def __init__(self) -> None:
        self.points: dict[str, collections.deque[dict[str, Any]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=MAX_POINTS)
        )
        # One entry per (pid, query): the longest duration seen (not one per sample).
        self.slow: dict[str, dict[tuple[Any, str], dict[str, Any]]] = collections.defaultdict(dict)

    def record(self, connection_id: str, fields: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.points[connection_id].append(
            {
                "at": now,
                "connections": fields.get("active_connections", 0),
                "idle_connections": fields.get("idle_connections", 0),
                "database_size": fields.get("database_size") or 0,
            }
        )
        slow = self.slow[connection_id]
        for query in fields.get("long_running_queries") or []:
            key = (query.get("pid"), str(query.get("query")))
            seen = slow.get(key)
            duration = float(query.get("duration") or 0)
            if seen is None or duration > seen["duration"]:
                slow[key] = {
                    "at": now,
                    "query": query.get("query"),
                    "duration": duration,
                    "user": query.get("usename") or "",
                }
        for key in [k for k, v in slow.items() if now - v["at"] > SLOW_WINDOW]:
            del slow[key]

    def history(self, connection_id: str, hours: float) -> list[dict[str, Any]]:
        since = time.time() - hours * HOUR
        return [
            {"timestamp": _iso(p["at"]), **{k: v for k, v in p.items() if k != "at"}}
            for p in self.points.get(connection_id, ())
            if p["at"] >= since
        ]

    def slow_queries(self, connection_id: str, hours: float) -> list[dict[str, Any]]:
        since = time.time() - hours * HOUR
        entries = [e for e in self.slow.get(connection_id, {}).values() if e["at"] >= since]
        return [
            {"timestamp": _iso(e["at"]), **{k: v for k, v in e.items() if k != "at"}}
            for e in sorted(entries, key=lambda e: -e["duration"])
        ]


def samples_of(request: Request) -> Samples:
    samples: Samples = request.app.state.analytics_samples
    return samples


def _hours(request: Request, low: int, high: int, default: int) -> float:
    raw = request.query_params.get("hours", str(default))
    try:
        hours = float(raw)
    except ValueError:
        hours = -1
    if not low <= hours <= high:
        raise invalid(f"expected hours {low}-{high}; got {raw!r:.20}")
    return hours


async def _profile(request: Request) -> Profile:
    profile: Profile = await database_of(request).profiles.get(request.path_params["id"])
    return profile


async def history(request: Request) -> Response:
    profile = await _profile(request)
    points = samples_of(request).history(profile.id, _hours(request, 1, 3, 1))
    return JSONResponse({"success": True, "history": points})


async def slow_queries(request: Request) -> Response:
    profile = await _profile(request)
    entries = samples_of(request).slow_queries(profile.id, _hours(request, 1, 24, 24))
    return JSONResponse({"success": True, "slow_queries": entries})


async def pool_stats(request: Request) -> Response:
    profile = await _profile(request)
    counts = [p["connections"] for p in samples_of(request).history(profile.id, 3)]
    stats = {
        "current_connections": counts[-1] if counts else 0,
        "avg_connections": sum(counts) / len(counts) if counts else 0,
        "max_connections": max(counts, default=0),
        "min_connections": min(counts, default=0),
    }
    return JSONResponse({"success": True, "pool_stats": stats})


TABLE_STATS_SQL = {
    "postgresql": f"""
SELECT s.relname, pg_total_relation_size(s.relid), s.n_live_tup,
       (SELECT count(*) FROM pg_indexes i
        WHERE i.schemaname = s.schemaname AND i.tablename = s.relname)
FROM pg_stat_user_tables s ORDER BY 2 DESC, 1 LIMIT {TABLE_STATS_ROWS}""",
    "mysql": f"""
SELECT t.TABLE_NAME, t.DATA_LENGTH + t.INDEX_LENGTH, t.TABLE_ROWS,
       (SELECT COUNT(DISTINCT s.INDEX_NAME) FROM information_schema.STATISTICS s
        WHERE s.TABLE_SCHEMA = t.TABLE_SCHEMA AND s.TABLE_NAME = t.TABLE_NAME)
FROM information_schema.TABLES t
WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE'
ORDER BY 2 DESC, 1 LIMIT {TABLE_STATS_ROWS}""",
    "sqlite": f"""
SELECT t.name, NULL, NULL,
       (SELECT count(*) FROM sqlite_master i WHERE i.type = 'index' AND i.tbl_name = t.name)
FROM sqlite_master t WHERE t.type = 'table' AND t.name NOT LIKE 'sqlite_%'
ORDER BY 1 LIMIT {TABLE_STATS_ROWS}""",
}


async def read_table_stats(database: Database, profile: Profile) -> list[dict[str, Any]]:
    """The biggest tables (up to ``TABLE_STATS_ROWS``): name, size, rows, indexes."""
    async with database.sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
        found = await engine.execute(
            TABLE_STATS_SQL[profile.db_type],
            None,
            limit=TABLE_STATS_ROWS,
            offset=0,
            time_limit=METADATA_TIMEOUT,
        )
        rows = [list(row) for row in found.rows]
        if profile.db_type == "sqlite":  # exact counts: SQLite keeps no estimate
            for row in rows:
                counted = await engine.execute(
                    f"SELECT count(*) FROM {qualified('sqlite', 'main', str(row[0]))}",
                    None,
                    limit=1,
                    offset=0,
                    time_limit=METADATA_TIMEOUT,
                )
                row[2] = counted.rows[0][0]
    return [
        {
            "table_name": name,
            "size_bytes": None if size is None else int(size),
            "row_count": None if count is None else int(count),
            "index_count": int(indexes or 0),
        }
        for name, size, count, indexes in rows
    ]


async def table_stats(request: Request) -> Response:
    profile = await _profile(request)
    try:
        stats = await read_table_stats(database_of(request), profile)
    except DatabaseError as error:
        return JSONResponse({"success": False, "table_stats": [], "error": error.message})
    return JSONResponse({"success": True, "table_stats": stats})


async def kill(request: Request) -> Response:
    profile = await _profile(request)
    pid = (await read_object(request)).get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise invalid(f"expected pid to be a session's number from the stats; got {pid!r:.20}")
    if profile.db_type == "sqlite":
        return JSONResponse({"success": False, "error": "Unsupported database type"})
    sql = "SELECT pg_terminate_backend($1)" if profile.db_type == "postgresql" else f"KILL {pid}"
    database = database_of(request)
    try:
        async with database.sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
            result = await engine.execute(
                sql,
                [pid] if profile.db_type == "postgresql" else None,
                limit=1,
                offset=0,
                time_limit=METADATA_TIMEOUT,
            )
    except DatabaseError as error:
        return JSONResponse({"success": False, "error": error.message})
    if profile.db_type == "postgresql" and not (result.rows and result.rows[0][0]):
        return JSONResponse({"success": False, "error": f"no session {pid} to terminate"})
    return JSONResponse({"success": True, "message": f"session {pid} terminated"})


def _one_statement(query: str) -> str | None:
    text = query.strip().rstrip(";").strip()
    return text if text and ";" not in text else None


async def query_plan(request: Request) -> Response:
    profile = await _profile(request)
    query = (await read_object(request)).get("query")
    if not isinstance(query, str):
        raise invalid("expected query to be the statement to explain")
    statement = _one_statement(query)
    if statement is None:  # EXPLAIN of a script would run its later statements
        return JSONResponse({"success": False, "error": "expected one statement to explain"})
    sql = {
        "postgresql": f"EXPLAIN (FORMAT JSON) {statement}",
        "mysql": f"EXPLAIN FORMAT=JSON {statement}",
        "sqlite": f"EXPLAIN QUERY PLAN {statement}",
    }[profile.db_type]
    database = database_of(request)
    try:
        async with database.sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
            result = await engine.execute(
                sql, None, limit=1000, offset=0, time_limit=METADATA_TIMEOUT
            )
    except DatabaseError as error:
        return JSONResponse({"success": False, "error": error.message})
    if profile.db_type == "sqlite":
        plan: Any = [{"id": r[0], "parent": r[1], "detail": r[-1]} for r in result.rows]
    else:
        raw = result.rows[0][0] if result.rows else None
        plan = json.loads(raw) if isinstance(raw, str) else raw
    return JSONResponse({"success": True, "plan": plan})


async def export_pdf(request: Request) -> Response:
    """The report: live figures read now, slow queries from the samples. A database that does
    not answer still gets its report, saying so, rather than a failed download."""
    profile = await _profile(request)
    database = database_of(request)
    now = datetime.datetime.now(datetime.UTC)
    live = await snapshot(database, profile)
    fields = ui_fields(profile.db_type, live["stats"]) if live["success"] else {}
    try:
        tables = await read_table_stats(database, profile)
    except DatabaseError:
        tables = []
    size = fields.get("database_size")
    metrics = [
        ("Active connections", str(fields.get("active_connections", "n/a"))),
        ("Idle connections", str(fields.get("idle_connections", "n/a"))),
        ("Database size", "n/a" if size is None else f"{size:,} bytes"),
    ]
    if not live["success"]:
        metrics.append(("Database", f"not answering: {live['error']}"))
    report = Report(
        connection=profile.name,
        db_type=profile.db_type,
        generated=f"{now:%Y-%m-%d %H:%M:%S} UTC",
        metrics=metrics,
        query_stats=fields.get("query_stats") or {},
        current_queries=fields.get("current_queries") or [],
        slow_queries=samples_of(request).slow_queries(profile.id, 24),
        tables=tables,
    )
    document = await anyio.to_thread.run_sync(analytics_report, report)
    return Response(
        document,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="analytics_{now:%Y%m%dT%H%M%SZ}.pdf"'
        },
    )
