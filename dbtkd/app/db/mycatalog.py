"""MySQL/MariaDB's ``information_schema``, read for the schema tree and the live statistics.

In MySQL a "schema" is a database: the tree lists the connection's database when it names
one, else every database but the server's own (``mysql``, ``sys``, ...). One query per kind of
object for all listed databases at once. Blocking (PyMySQL cursor): runs in the engine's thread.
"""

from __future__ import annotations

from typing import Any

from dbtkd.app.db.engine import column_entry, table_entry

SYSTEM_SCHEMAS = ("information_schema", "mysql", "performance_schema", "sys")
# Below this many bytes a table gets an exact COUNT(*); above it, InnoDB's estimate.
EXACT_COUNT_MAX_BYTES = 64 * 1024 * 1024
_STATUS_NAMES = ("Threads_connected", "Threads_running", "Questions", "Slow_queries", "Uptime")


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


def _in(values: list[str]) -> str:
    return "(" + ", ".join(["%s"] * len(values)) + ")"


def _schema_names(cursor: Any, database: str | None, schema: str | None) -> list[str]:
    if schema is not None:
        cursor.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,)
        )
    elif database:
        return [database]
    else:
        cursor.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
            f"WHERE SCHEMA_NAME NOT IN {_in(list(SYSTEM_SCHEMAS))} ORDER BY 1",
            SYSTEM_SCHEMAS,
        )
    return [row[0] for row in cursor.fetchall()]


def describe_tables(
    cursor: Any, database: str | None, schema: str | None, table: str | None
) -> list[dict[str, Any]]:
    """The schema tree; with ``schema`` and ``table``, that one table (with its row count)."""
    schemas = _schema_names(cursor, database, schema)
    if not schemas:
        return []

    def where_for(prefix: str = "") -> str:
        name_filter = f" AND {prefix}TABLE_NAME = %s" if table else ""
        return f"{prefix}TABLE_SCHEMA IN {_in(schemas)}{name_filter}"

    where = where_for()
    args = (*schemas, table) if table else tuple(schemas)
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, TABLE_ROWS, "
        "COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0) "
        f"FROM information_schema.TABLES WHERE {where} ORDER BY 1, 2",
        args,
    )
    tables = cursor.fetchall()
    keyed: dict[tuple[str, str], dict[str, list[Any]]] = {
        (row[0], row[1]): {"columns": [], "primary_key": [], "indexes": [], "foreign_keys": []}
        for row in tables
    }
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME "
        f"FROM information_schema.STATISTICS WHERE {where} "
        "ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
        args,
    )
    indexes: dict[tuple[str, str, str], dict[str, Any]] = {}
    for schema_name, table_name, index_name, non_unique, column in cursor.fetchall():
        parts = keyed.get((schema_name, table_name))
        if parts is None:
            continue
        index = indexes.get((schema_name, table_name, index_name))
        if index is None:
            index = {
                "name": index_name,
                "columns": [],
                "unique": not non_unique,
                "primary": index_name == "PRIMARY",
            }
            indexes[(schema_name, table_name, index_name)] = index
            parts["indexes"].append(index)
        index["columns"].append(column)
        if index_name == "PRIMARY":
            parts["primary_key"].append(column)
    cursor.execute(
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT "
        f"FROM information_schema.COLUMNS WHERE {where} "
        "ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        args,
    )
    for schema_name, table_name, name, type_name, nullable, default in cursor.fetchall():
        parts = keyed.get((schema_name, table_name))
        if parts is None:
            continue
        # MariaDB spells "no default" as the text NULL (a string default is quoted: 'NULL').
        parts["columns"].append(
            column_entry(
                name,
                type_name,
                nullable=nullable == "YES",
                default=None if default in (None, "NULL") else str(default),
                primary_key=name in parts["primary_key"],
            )
        )
    cursor.execute(
        "SELECT k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, "
        "k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_TABLE_NAME, k.REFERENCED_COLUMN_NAME, "
        "r.UPDATE_RULE, r.DELETE_RULE "
        "FROM information_schema.KEY_COLUMN_USAGE k "
        "JOIN information_schema.REFERENTIAL_CONSTRAINTS r "
        "ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME "
        "AND r.TABLE_NAME = k.TABLE_NAME "
        f"WHERE k.REFERENCED_TABLE_NAME IS NOT NULL AND {where_for('k.')} "
        "ORDER BY k.TABLE_SCHEMA, k.TABLE_NAME, k.CONSTRAINT_NAME, k.ORDINAL_POSITION",
        args,
    )
    foreign_keys: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in cursor.fetchall():
        schema_name, table_name, name, column, target_schema, target, target_column = row[:7]
        parts = keyed.get((schema_name, table_name))
        if parts is None:
            continue
        key = foreign_keys.get((schema_name, table_name, name))
        if key is None:
            key = {
                "name": name,
                "columns": [],
                "referenced_schema": target_schema,
                "referenced_table": target,
                "referenced_columns": [],
                "on_update": row[7],
                "on_delete": row[8],
            }
            foreign_keys[(schema_name, table_name, name)] = key
            parts["foreign_keys"].append(key)
        key["columns"].append(column)
        key["referenced_columns"].append(target_column)
    by_schema: dict[str, list[dict[str, Any]]] = {name: [] for name in schemas}
    for schema_name, table_name, table_type, estimate, size in tables:
        parts = keyed[(schema_name, table_name)]
        entry = table_entry(
            table_name,
            "view" if table_type == "VIEW" else "table",
            parts["columns"],
            parts["primary_key"],
            parts["indexes"],
            parts["foreign_keys"],
        )
        if table is not None:
            if table_type != "VIEW" and size > EXACT_COUNT_MAX_BYTES and estimate is not None:
                entry.update(row_count=int(estimate), row_count_is_estimate=True)
            else:
                cursor.execute(f"SELECT COUNT(*) FROM {_quote(schema_name)}.{_quote(table_name)}")
                entry.update(row_count=cursor.fetchone()[0], row_count_is_estimate=False)
        by_schema.setdefault(schema_name, []).append(entry)
    return [{"name": name, "tables": tables} for name, tables in by_schema.items()]


def read_stats(cursor: Any) -> dict[str, Any]:
    """Server status counters and the current database's size (all user databases if none).

    ``questions_total`` is the raw counter; the engine turns it into queries per second.
    """
    cursor.execute(
        f"SHOW GLOBAL STATUS WHERE Variable_name IN {_in(list(_STATUS_NAMES))}", _STATUS_NAMES
    )
    status = {name: int(value) for name, value in cursor.fetchall()}
    cursor.execute("SELECT DATABASE()")
    (database,) = cursor.fetchone()
    if database:
        cursor.execute(
            "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s",
            (database,),
        )
    else:
        cursor.execute(
            "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA NOT IN {_in(list(SYSTEM_SCHEMAS))}",
            SYSTEM_SCHEMAS,
        )
    (size,) = cursor.fetchone()
    # Client threads other than this one (the analytics page's sessions); Sleep = idle.
    cursor.execute(
        "SELECT ID, USER, COMMAND, TIME, LEFT(INFO, 500) FROM information_schema.PROCESSLIST "
        "WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Daemon', 'Binlog Dump') "
        "ORDER BY TIME LIMIT 200"
    )
    sessions = [
        {
            "pid": int(thread),
            "username": user,
            "state": "Sleep" if command == "Sleep" else "active",
            "duration_seconds": float(seconds) if seconds is not None else None,
            "query": info,
        }
        for thread, user, command, seconds, info in cursor.fetchall()
    ]
    return {
        "database": database,
        "sessions": sessions,
        "threads_connected": status.get("Threads_connected"),
        "threads_running": status.get("Threads_running"),
        "slow_queries": status.get("Slow_queries"),
        "uptime_seconds": status.get("Uptime", 0),
        "database_size_bytes": int(size),
        "questions_total": status.get("Questions", 0),
    }
