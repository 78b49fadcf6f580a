"""PostgreSQL's catalogue, read for the schema tree and the live statistics.

Everything comes from ``pg_catalog`` (not ``information_schema``, which hides objects the user
does not own and is slow): one query per kind of object for all tables at once, so a database
with a thousand tables costs five round trips, not five thousand.
"""

from __future__ import annotations

from typing import Any

from dbtkd.app.db.engine import column_entry, table_entry

# Tables smaller than this on disk get an exact count(*); bigger ones report the planner's
# estimate (pg_class.reltuples) rather than scanning gigabytes to fill in a detail pane.
EXACT_COUNT_MAX_BYTES = 64 * 1024 * 1024
LONGEST_QUERIES = 5
# Enough of a statement to recognise it in a monitoring panel.
QUERY_TEXT_CHARS = 500

_SYSTEM_SCHEMA_FILTER = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
)
_KINDS = {"r": "table", "p": "table", "f": "table", "v": "view", "m": "view"}
_ACTIONS = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}

SCHEMAS_SQL = f"""
SELECT n.nspname FROM pg_namespace n
WHERE {_SYSTEM_SCHEMA_FILTER} AND ($1::text IS NULL OR n.nspname = $1)
ORDER BY 1
"""
TABLES_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.reltuples::float8,
       CASE WHEN c.relkind IN ('r', 'p', 'm') THEN pg_total_relation_size(c.oid) END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND {_SYSTEM_SCHEMA_FILTER}
  AND ($1::text IS NULL OR n.nspname = $1) AND ($2::text IS NULL OR c.relname = $2)
ORDER BY 2, 3
"""
COLUMNS_SQL = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_KEY_COLUMNS = """array(
    SELECT a.attname FROM unnest({keys}) WITH ORDINALITY k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = {relation} AND a.attnum = k.attnum ORDER BY k.ord)"""
PRIMARY_KEYS_SQL = f"""
SELECT con.conrelid, {_KEY_COLUMNS.format(keys="con.conkey", relation="con.conrelid")}
FROM pg_constraint con WHERE con.contype = 'p' AND con.conrelid = ANY($1::oid[])
"""
INDEXES_SQL = """
SELECT i.indrelid, ic.relname, i.indisunique, i.indisprimary,
       array(SELECT pg_get_indexdef(i.indexrelid, k, true)
             FROM generate_series(1, i.indnkeyatts) k ORDER BY k)
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY($1::oid[])
ORDER BY ic.relname
"""
FOREIGN_KEYS_SQL = f"""
SELECT con.conrelid, con.conname, rn.nspname, rc.relname,
       {_KEY_COLUMNS.format(keys="con.conkey", relation="con.conrelid")},
       {_KEY_COLUMNS.format(keys="con.confkey", relation="con.confrelid")},
       con.confupdtype::text, con.confdeltype::text
FROM pg_constraint con
JOIN pg_class rc ON rc.oid = con.confrelid
JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE con.contype = 'f' AND con.conrelid = ANY($1::oid[])
ORDER BY con.conname
"""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def describe_tables(
    connection: Any, schema: str | None, table: str | None
) -> list[dict[str, Any]]:
    """The schema tree; with ``schema`` and ``table``, that one table (with its row count)."""
    schema_names = [row[0] for row in await connection.fetch(SCHEMAS_SQL, schema)]
    tables = await connection.fetch(TABLES_SQL, schema, table)
    oids = [row[0] for row in tables]
    columns: dict[int, list[Any]] = {oid: [] for oid in oids}
    primary_keys: dict[int, list[str]] = {}
    indexes: dict[int, list[dict[str, Any]]] = {oid: [] for oid in oids}
    foreign_keys: dict[int, list[dict[str, Any]]] = {oid: [] for oid in oids}
    if oids:
        for oid, key in await connection.fetch(PRIMARY_KEYS_SQL, oids):
            primary_keys[oid] = list(key)
        for oid, name, type_name, nullable, default in await connection.fetch(COLUMNS_SQL, oids):
            columns[oid].append(
                column_entry(
                    name,
                    type_name,
                    nullable=nullable,
                    default=default,
                    primary_key=name in primary_keys.get(oid, ()),
                )
            )
        for oid, name, unique, primary, index_columns in await connection.fetch(INDEXES_SQL, oids):
            indexes[oid].append(
                {"name": name, "columns": list(index_columns), "unique": unique, "primary": primary}
            )
        for row in await connection.fetch(FOREIGN_KEYS_SQL, oids):
            oid, name, target_schema, target, source_columns, target_columns, upd, dele = row
            foreign_keys[oid].append(
                {
                    "name": name,
                    "columns": list(source_columns),
                    "referenced_schema": target_schema,
                    "referenced_table": target,
                    "referenced_columns": list(target_columns),
                    "on_update": _ACTIONS.get(upd, upd),
                    "on_delete": _ACTIONS.get(dele, dele),
                }
            )
    by_schema: dict[str, list[dict[str, Any]]] = {name: [] for name in schema_names}
    for oid, schema_name, name, kind, estimate, size in tables:
        entry = table_entry(
            name,
            _KINDS[kind],
            columns[oid],
            primary_keys.get(oid, []),
            indexes[oid],
            foreign_keys[oid],
        )
        if table is not None:
            entry.update(await _row_count(connection, schema_name, name, estimate, size))
        by_schema.setdefault(schema_name, []).append(entry)
    return [{"name": name, "tables": tables} for name, tables in by_schema.items()]


async def _row_count(
    connection: Any, schema: str, table: str, estimate: float, size: int | None
) -> dict[str, Any]:
    if size is not None and size > EXACT_COUNT_MAX_BYTES and estimate >= 0:
        return {"row_count": int(estimate), "row_count_is_estimate": True}
    count = await connection.fetchval(f"SELECT count(*) FROM {_quote(schema)}.{_quote(table)}")
    return {"row_count": count, "row_count_is_estimate": False}


STATES_SQL = """
SELECT coalesce(state, 'unknown'), count(*)::int FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
GROUP BY 1 ORDER BY 1
"""
DATABASE_SQL = """
SELECT pg_database_size(current_database()), d.blks_hit, d.blks_read
FROM pg_stat_database d WHERE d.datname = current_database()
"""
LONGEST_SQL = f"""
SELECT pid, usename, state, extract(epoch FROM clock_timestamp() - query_start)::float8,
       left(query, {QUERY_TEXT_CHARS})
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND state IS DISTINCT FROM 'idle' AND pid <> pg_backend_pid() AND query_start IS NOT NULL
ORDER BY query_start LIMIT {LONGEST_QUERIES}
"""
# The analytics page's "current queries": every other non-idle session, newest first.
SESSIONS = 50
SESSIONS_SQL = f"""
SELECT pid, usename, coalesce(state, 'unknown'),
       extract(epoch FROM clock_timestamp() - query_start)::float8, left(query, {QUERY_TEXT_CHARS})
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'
ORDER BY query_start DESC NULLS LAST LIMIT {SESSIONS}
"""
LOCK_WAITS_SQL = f"""
SELECT pid, pg_blocking_pids(pid), extract(epoch FROM clock_timestamp() - query_start)::float8,
       left(query, {QUERY_TEXT_CHARS})
FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
ORDER BY query_start
"""


async def read_stats(connection: Any) -> dict[str, Any]:
    states = {state: count for state, count in await connection.fetch(STATES_SQL)}
    size, hits, reads = await connection.fetchrow(DATABASE_SQL) or (None, 0, 0)
    lookups = (hits or 0) + (reads or 0)
    waits = await connection.fetch(LOCK_WAITS_SQL)
    return {
        "connections": {"total": sum(states.values()), "by_state": states},
        "database_size_bytes": size,
        # None until the database has read a block: 0/0 is no ratio at all.
        "cache_hit_ratio": round(hits / lookups, 6) if lookups else None,
        "longest_queries": [
            {
                "pid": pid,
                "username": user,
                "state": state,
                "duration_seconds": round(seconds, 3),
                "query": query,
            }
            for pid, user, state, seconds, query in await connection.fetch(LONGEST_SQL)
        ],
        "sessions": [
            {
                "pid": pid,
                "username": user,
                "state": state,
                "duration_seconds": None if seconds is None else round(seconds, 3),
                "query": query,
            }
            for pid, user, state, seconds, query in await connection.fetch(SESSIONS_SQL)
        ],
        "lock_waits": {
            "count": len(waits),
            "waiting": [
                {
                    "pid": pid,
                    "blocked_by": list(blockers),
                    "wait_seconds": None if seconds is None else round(seconds, 3),
                    "query": query,
                }
                for pid, blockers, seconds, query in waits
            ],
        },
    }
