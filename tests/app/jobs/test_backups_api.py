"""Backups over HTTP against a real daemon, on SQLite, PostgreSQL and MariaDB.

Each engine: rows in, backup, table dropped, restore, the same rows back. Then the rules a
backup file lives by: derived names only (a name like ``../../evil`` is a 400), no symlink in
the backup directory ever followed, verify catching a changed file, and downloads.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import backup, backup_files, restore, wait_job

ROWS: list[list[Any]] = [[1, "one"], [2, "two; DROP TABLE x; --"], [3, "ünïcödé"], [4, None]]


def make_rows(api: Api, connection: str, table: str = "things") -> None:
    api.run(connection, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, label VARCHAR(100))")
    for row in ROWS:
        api.run(connection, f"INSERT INTO {table} VALUES ({row[0]}, {_literal(row[1])})")


def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def rows_of(api: Api, connection: str, table: str = "things") -> list[list[object]]:
    rows: list[list[object]] = api.run(connection, f"SELECT id, label FROM {table} ORDER BY id")[
        "rows"
    ]
    return rows


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_each_engine_backs_up_and_restores_the_same_rows(
    api: Api, server: DbServer, gzip: bool
) -> None:
    connection = api.create(server)
    make_rows(api, connection)
    done = backup(api, connection, name="before the drop", gzip=gzip)
    assert done["status"] == "completed", done["error"]
    assert done["progress"] == 1.0
    assert done["size"] > 0
    assert len(done["sha256"]) == 64
    assert done["name"] == "before the drop"
    assert "file" not in done  # the path is the daemon's business
    api.run(connection, "DROP TABLE things")
    restored = restore(api, done["id"])
    assert restored["status"] == "completed", restored["error"]
    assert rows_of(api, connection) == ROWS
    # A second restore over the existing table replaces it (no duplicate rows, no error).
    api.run(connection, "INSERT INTO things VALUES (99, 'added after the backup')")
    assert restore(api, done["id"])["status"] == "completed"
    assert rows_of(api, connection) == ROWS


def test_a_table_backup_restores_into_another_connection(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_rows(api, connection)
    make_rows(api, connection, table="others")
    done = backup(api, connection, backup_type="tables", tables=["things"])
    assert done["status"] == "completed", done["error"]
    api.run(connection, "DROP TABLE things")
    api.run(connection, "DROP TABLE others")
    second = api.create(server, name="same database, second connection")
    restored = restore(api, done["id"], target_connection_id=second)
    assert restored["status"] == "completed", restored["error"]
    assert restored["connection_id"] == second
    assert rows_of(api, second) == ROWS
    assert not api.query(second, "SELECT * FROM others")["success"]  # not in the backup


def test_schema_and_data_backups_restore_in_turn(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_rows(api, connection)
    schema = backup(api, connection, backup_type="schema_only")
    data = backup(api, connection, backup_type="data_only")
    assert schema["status"] == data["status"] == "completed", (schema["error"], data["error"])
    api.run(connection, "DROP TABLE things")
    assert restore(api, schema["id"])["status"] == "completed"
    assert rows_of(api, connection) == []
    assert restore(api, data["id"])["status"] == "completed"
    assert rows_of(api, connection) == ROWS


def test_a_missing_table_fails_the_backup_with_the_tools_reason(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_rows(api, connection)
    done = backup(api, connection, backup_type="tables", tables=["no_such_table"])
    assert done["status"] == "failed"
    assert "no_such_table" in done["error"]
    assert not [name for name in backup_files(api.daemon) if done["id"] in name]


@pytest.mark.parametrize(
    "name", ["../../evil", "a/b", "a\\b", "nul\x00byte", "..", "x..y"], ids=repr
)
def test_a_name_that_looks_like_a_path_is_refused_with_400(
    api: Api, sqlite: DbServer, name: str
) -> None:
    connection = api.create(sqlite)
    before = backup_files(api.daemon)
    status, document = api.call(
        "POST", "/api/v1/backups", {"connection_id": connection, "name": name}
    )
    assert status == 400, document
    assert document["error"] == "bad_request"
    assert backup_files(api.daemon) == before


def test_the_name_is_only_a_label_and_files_get_derived_names(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    make_rows(api, connection)
    done = backup(api, connection, name="Nightly: orders & customers", gzip=False)
    assert done["status"] == "completed"
    assert f"{done['id']}.sqlite3" in backup_files(api.daemon)
    assert not [name for name in backup_files(api.daemon) if "Nightly" in name]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"backup_type": "everything"}, 422, "invalid_params"),
        ({"backup_type": "tables"}, 422, "invalid_params"),
        ({"backup_type": "full", "tables": ["t"]}, 422, "invalid_params"),
        ({"gzip": "yes"}, 422, "invalid_params"),
        ({"colour": "blue"}, 422, "invalid_params"),
        ({"connection_id": "no-such-connection"}, 404, "not_found"),
    ],
)
def test_bad_backup_requests_are_the_clients_mistake(
    api: Api, sqlite: DbServer, body: dict[str, object], status: int, error: str
) -> None:
    connection = api.create(sqlite)
    got, document = api.call("POST", "/api/v1/backups", {"connection_id": connection, **body})
    assert (got, document["error"]) == (status, error), document


def test_restore_refuses_an_unfinished_backup_and_a_connection_of_another_engine(
    api: Api, sqlite: DbServer, postgres: DbServer
) -> None:
    connection = api.create(sqlite)
    failed = backup(api, connection, backup_type="tables", tables=["missing"])
    status, document = api.call("POST", f"/api/v1/backups/{failed['id']}/restore", {})
    assert (status, document["error"]) == (409, "backup_not_completed")
    make_rows(api, connection)
    done = backup(api, connection)
    other = api.create(postgres)
    status, document = api.call(
        "POST", f"/api/v1/backups/{done['id']}/restore", {"target_connection_id": other}
    )
    assert (status, document["error"]) == (422, "invalid_params")
    status, document = api.call("GET", "/api/v1/backups/0123456789abcdef0123456789abcdef")
    assert (status, document["error"]) == (404, "not_found")


def test_list_get_and_delete_a_backup(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    make_rows(api, connection)
    done = backup(api, connection)
    listed = api.ok("GET", f"/api/v1/backups?connection_id={connection}")
    assert listed["success"] is True
    assert [b["id"] for b in listed["backups"]] == [done["id"]]
    assert api.ok("GET", f"/api/v1/backups/{done['id']}")["sha256"] == done["sha256"]
    assert api.ok("DELETE", f"/api/v1/backups/{done['id']}") == {"success": True, "id": done["id"]}
    assert not [name for name in backup_files(api.daemon) if done["id"] in name]
    assert api.call("GET", f"/api/v1/backups/{done['id']}")[0] == 404


def test_download_streams_the_file_with_its_sha256(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_rows(api, connection)
    done = backup(api, connection, name="for download")
    status, headers, body = api.daemon.http("GET", f"/api/v1/backups/{done['id']}/download")
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert "for-download" in headers["content-disposition"]
    assert hashlib.sha256(body).hexdigest() == done["sha256"] == headers["x-backup-sha256"]
    assert len(body) == done["size"]


def test_verify_checks_the_sha256_and_the_format(api: Api, server: DbServer) -> None:
    connection = api.create(server)
    make_rows(api, connection)
    done = backup(api, connection)
    verdict = api.ok("POST", f"/api/v1/backups/{done['id']}/verify")
    assert verdict["success"] is True, verdict["error"]
    assert verdict["sha256_matches"] is verdict["format_ok"] is True
    path = _backup_path(api, done["id"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle
    path.write_bytes(bytes(data))
    verdict = api.ok("POST", f"/api/v1/backups/{done['id']}/verify")
    assert verdict["success"] is False
    assert verdict["sha256_matches"] is False
    assert "sha256" in verdict["error"]


def _backup_path(api: Api, backup_id: str) -> Path:
    directory = api.daemon.home / "data" / "backups"
    (name,) = [n for n in os.listdir(directory) if n.startswith(backup_id)]
    return directory / name


def test_a_symlink_planted_in_the_backup_dir_is_never_followed(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    make_rows(api, connection)
    done = backup(api, connection)
    path = _backup_path(api, done["id"])
    secret = api.daemon.home / f"secret-{secrets.token_hex(4)}.txt"
    secret.write_text("not for the API")
    path.unlink()
    path.symlink_to(secret)
    status, _, body = api.daemon.http("GET", f"/api/v1/backups/{done['id']}/download")
    assert status == 409
    assert b"not for the API" not in body
    assert b"symbolic link" in body
    verdict = api.ok("POST", f"/api/v1/backups/{done['id']}/verify")
    assert verdict["success"] is False
    assert "symbolic link" in verdict["error"]
    restored = restore(api, done["id"])
    assert restored["status"] == "failed"
    assert "symbolic link" in restored["error"]
    api.ok("DELETE", f"/api/v1/backups/{done['id']}")
    assert not path.is_symlink()
    assert secret.read_text() == "not for the API"  # the link went, never its target


def test_a_backup_dir_replaced_by_a_symlink_is_refused(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    make_rows(api, connection)
    directory = api.daemon.home / "data" / "backups"
    aside = api.daemon.home / f"backups-aside-{secrets.token_hex(4)}"
    elsewhere = api.daemon.home / f"elsewhere-{secrets.token_hex(4)}"
    elsewhere.mkdir()
    directory.rename(aside)
    directory.symlink_to(elsewhere)
    try:
        done = backup(api, connection)
        assert done["status"] == "failed"
        assert "symbolic link" in done["error"]
        assert os.listdir(elsewhere) == []
    finally:
        directory.unlink()
        aside.rename(directory)


def test_jobs_lists_backups_and_restores(api: Api, sqlite: DbServer) -> None:
    connection = api.create(sqlite)
    make_rows(api, connection)
    done = backup(api, connection)
    restored = restore(api, done["id"])
    kinds = {job["id"]: job["kind"] for job in api.ok("GET", "/api/v1/jobs")}
    assert kinds[done["id"]] == "backup"
    assert kinds[restored["id"]] == "restore"
    assert all(j["kind"] == "restore" for j in api.ok("GET", "/api/v1/jobs?kind=restore"))
    assert wait_job(api, restored["id"])["backup_id"] == done["id"]
    status, document = api.call("POST", f"/api/v1/jobs/{done['id']}/cancel")
    assert (status, document["error"]) == (409, "job_finished")
