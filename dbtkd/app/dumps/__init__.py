"""Backup and restore per engine: what they share, and how to pick one.

A ``Dumper`` turns a saved connection into a backup file and back: ``sqlite`` through SQLite's
online backup API (or an SQL script for partial backups), ``postgresql`` through ``pg_dump`` /
``pg_restore``, ``mysql`` through ``mariadb-dump`` / ``mysqldump`` and the ``mariadb`` /
``mysql`` client. Each writes into a ``Workspace``: hidden files of one backup in the backup
directory, registered with the job before they are created, so a cancel or the next worker
removes what a failed job leaves. ``Sink`` writes a backup file, hashing (and, for gzip,
compressing) on the way, so the sha256 costs no second read.

Dumpers run their tools through ``programs.spawn``; the blocking parts (SQLite, compression,
copying between pipes and files) run in worker threads and watch the job's ``stop_flag``.
"""

from __future__ import annotations

from dbtkd.app.dumps.base import (
    BACKUP_TYPES,
    CHUNK_BYTES,
    BackupPlan,
    Dumper,
    Workspace,
    hash_fd,
)
from dbtkd.app.jobs import JobFailed
from dbtkd.app.tools import Toolbox

__all__ = [
    "BACKUP_TYPES",
    "CHUNK_BYTES",
    "BackupPlan",
    "Dumper",
    "Workspace",
    "dumper_for",
    "hash_fd",
]


def dumper_for(db_type: str, toolbox: Toolbox, secrets_dir: str) -> Dumper:
    """The dumper of an engine; its module is imported on first use (sqlite3 included)."""
    if db_type == "sqlite":
        from dbtkd.app.dumps.sqlite import SqliteDumper

        return SqliteDumper(toolbox, secrets_dir)
    if db_type == "postgresql":
        from dbtkd.app.dumps.postgresql import PostgresDumper

        return PostgresDumper(toolbox, secrets_dir)
    if db_type == "mysql":
        from dbtkd.app.dumps.mysql import MysqlDumper

        return MysqlDumper(toolbox, secrets_dir)
    raise JobFailed(f"backups of {db_type} connections are not supported")
