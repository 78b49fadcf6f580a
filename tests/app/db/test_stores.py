"""The stores in the data dir: private files, atomic writes, formats, migrations, history."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dbtkd.app.db import storefile
from dbtkd.app.db.history import MAX_ENTRIES_PER_CONNECTION, MAX_QUERY_CHARS, QueryHistory
from dbtkd.app.db.profiles import (
    EMBEDDED_ID,
    InvalidProfileError,
    ProfileNotFoundError,
    ProfileStore,
    build_profile,
    migrate_0_to_1,
)

pytestmark = pytest.mark.anyio


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_store_is_written_0600_with_its_format_and_no_temporary_file_left(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "store.json"
    storefile.write(str(path), {"items": [1]}, format_on_disk=1, current_format=1)
    assert json.loads(path.read_text()) == {"items": [1], "format": 1}
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert os.listdir(path.parent) == ["store.json"]


def test_a_store_of_a_newer_format_is_read_but_never_written(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text(json.dumps({"format": 2, "connections": [], "new_thing": True}))
    loaded = storefile.load(str(path), 1, {})
    assert loaded is not None
    assert loaded.format_on_disk == 2
    with pytest.raises(storefile.StoreTooNewError, match="format 2 but this dbtkd writes format 1"):
        storefile.write(str(path), loaded.document, format_on_disk=2, current_format=1)
    assert json.loads(path.read_text())["new_thing"] is True


def test_an_unreadable_store_is_moved_aside_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text("{not json")
    assert storefile.load(str(path), 1, {}) is None
    (aside,) = [name for name in os.listdir(tmp_path) if name.startswith("store.json.corrupt-")]
    assert (tmp_path / aside).read_text() == "{not json"


def test_migrations_run_one_step_at_a_time_up_to_the_current_format(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text(json.dumps({"format": 1, "steps": []}))
    migrations = {
        1: lambda document: {**document, "steps": [*document["steps"], "1->2"]},
        2: lambda document: {**document, "steps": [*document["steps"], "2->3"]},
    }
    loaded = storefile.load(str(path), 3, migrations)
    assert loaded is not None
    assert loaded.document == {"format": 3, "steps": ["1->2", "2->3"]}


def test_migration_0_to_1_converts_the_old_backends_connections_file() -> None:
    old = {
        "connections": [
            {
                "id": "a",
                "name": "pg",
                "db_type": "postgresql",
                "host": "db",
                "port": 5432,
                "username": "u",
                "password": "p",
                "database": "d",
                "file_path": None,
            },
            {"id": "b", "name": "lite", "db_type": "sqlite", "file_path": "/x/y.db"},
            {"id": "c", "name": "mongo", "db_type": "mongodb", "host": "m"},
        ]
    }
    new = migrate_0_to_1(old)
    assert new["format"] == 1
    assert [c["id"] for c in new["connections"]] == ["a", "b"]
    assert new["connections"][0]["password"] == "p"
    assert new["connections"][1]["database"] == "/x/y.db"
    assert new["connections"][1]["host"] is None
    assert new["unsupported"] == [old["connections"][2]]


async def test_a_fresh_data_dir_gets_the_embedded_sqlite_connection(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = ProfileStore(str(data_dir))
    (profile,) = await store.all()
    assert profile.id == EMBEDDED_ID
    assert profile.database == str(data_dir / "local.sqlite3")
    assert mode(data_dir / "connections.json") == 0o600
    await store.delete(EMBEDDED_ID)
    # Deleting it sticks: a new worker does not bring it back.
    assert await ProfileStore(str(data_dir)).all() == []


async def test_an_old_connections_file_is_migrated_once_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "connections.json"
    path.write_text(
        json.dumps(
            {"connections": [{"id": "b", "name": "x", "db_type": "sqlite", "file_path": "/x/y.db"}]}
        )
    )
    store = ProfileStore(str(tmp_path))
    (profile,) = await store.all()
    assert profile.database == "/x/y.db"
    assert json.loads(path.read_text())["format"] == 1
    assert mode(path) == 0o600


async def test_a_newer_connections_file_refuses_changes_with_a_clear_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "connections.json"
    path.write_text(json.dumps({"format": 7, "connections": []}))
    store = ProfileStore(str(tmp_path))
    assert await store.all() == []
    profile = build_profile({"name": "n", "db_type": "sqlite", "database": "/tmp/x.db"})
    with pytest.raises(storefile.StoreTooNewError, match="upgrade dbtkd"):
        await store.save(profile)
    assert await store.all() == []  # memory and disk still agree
    with pytest.raises(ProfileNotFoundError):
        await store.get(profile.id)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "db_type": "oracle"}, "expected db_type one of"),
        ({"name": "x", "db_type": "sqlite", "database": "rel.db"}, "absolute path"),
        ({"name": "x", "db_type": "postgresql", "username": "u"}, "expected host"),
        ({"name": "x", "db_type": "mysql", "host": "h", "username": "u", "port": 0}, "port"),
        ({"name": "", "db_type": "sqlite", "database": "/x.db"}, "expected name"),
        ({"name": "x", "db_type": "sqlite", "database": "/x.db", "pasword": "p"}, "pasword"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_field(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidProfileError, match=message):
        build_profile(body)


def test_editing_keeps_the_password_unless_it_is_sent() -> None:
    saved = build_profile(
        {"name": "x", "db_type": "mariadb", "host": "h", "username": "u", "password": "secret"}
    )
    assert saved.db_type == "mysql"
    assert saved.port == 3306
    renamed = build_profile({"name": "y"}, saved)
    assert (renamed.id, renamed.password, renamed.name) == (saved.id, "secret", "y")
    assert build_profile({"password": None}, saved).has_password is False
    assert "secret" not in repr(saved)
    assert "secret" not in json.dumps(saved.public_view())


async def test_history_keeps_the_newest_entries_per_connection(tmp_path: Path) -> None:
    history = QueryHistory(str(tmp_path))
    await history.load()
    for number in range(MAX_ENTRIES_PER_CONNECTION + 5):
        history.add(
            "c1",
            query=f"SELECT {number}",
            success=True,
            execution_time=0.1,
            total_rows=1,
            rows_affected=None,
            error=None,
        )
    history.add(
        "c2",
        query="x" * (MAX_QUERY_CHARS + 1),
        success=False,
        execution_time=0.1,
        total_rows=0,
        rows_affected=None,
        error="boom",
    )
    await history.save()
    reread = QueryHistory(str(tmp_path))
    entries = await reread.list("c1", limit=MAX_ENTRIES_PER_CONNECTION + 5)
    assert len(entries) == MAX_ENTRIES_PER_CONNECTION
    assert entries[0]["query"] == f"SELECT {MAX_ENTRIES_PER_CONNECTION + 4}"  # newest first
    (long_one,) = await reread.list("c2")
    assert long_one["query_truncated"] is True
    assert len(long_one["query"]) == MAX_QUERY_CHARS
    assert mode(tmp_path / "query-history.json") == 0o600
    assert await reread.clear("c1") is True
    assert await QueryHistory(str(tmp_path)).list("c1") == []


async def test_entries_this_version_cannot_use_are_kept_but_not_offered(tmp_path: Path) -> None:
    path = tmp_path / "connections.json"
    odd = {"id": "m", "name": "mongo", "db_type": "mongodb"}
    good = {"id": "g", "name": "lite", "db_type": "sqlite", "database": "/x.db"}
    path.write_text(json.dumps({"format": 1, "connections": [odd, good, "junk"]}))
    store = ProfileStore(str(tmp_path))
    assert [profile.id for profile in await store.all()] == ["g"]
    await store.delete("g")
    assert json.loads(path.read_text())["unsupported"] == [odd, "junk"]
