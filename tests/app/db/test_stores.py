"""The stores in the data dir: private files, atomic writes, formats, migrations, history."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from dbtkd.app.db.history import MAX_ENTRIES_PER_CONNECTION, MAX_QUERY_CHARS, QueryHistory
from dbtkd.app.db.profiles import (
    EMBEDDED_ID,
    InvalidProfileError,
    ProfileNotFoundError,
    ProfileStore,
    build_profile,
    migrate_0_to_1,
)
from dbtkd.app.store import Store, StoreTooNewError, remove_interrupted_writes

pytestmark = pytest.mark.anyio


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_store_is_written_0600_with_its_format_and_no_temporary_file_left(
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path / "data"), "store.json")
    assert await store.update(lambda document: document.update(items=[1])) is None
    path = tmp_path / "data" / "store.json"
    assert json.loads(path.read_text()) == {"items": [1], "format": 1}
    assert await store.read() == {"items": [1]}
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert sorted(os.listdir(path.parent)) == ["store.json", "store.json.lock"]


async def test_a_change_that_raises_or_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "store.json")
    await store.update(lambda document: document.update(items=[1]))
    written = (tmp_path / "store.json").stat()

    def refuse(document: dict[str, Any]) -> None:
        document["items"].append(2)
        raise LookupError("no such item")

    with pytest.raises(LookupError, match="no such item"):
        await store.update(refuse)
    assert await store.update(lambda document: len(document["items"])) == 1
    assert (tmp_path / "store.json").stat().st_ino == written.st_ino  # never replaced
    assert await store.read() == {"items": [1]}


async def test_each_change_is_given_what_the_change_before_it_wrote(tmp_path: Path) -> None:
    # Two Store objects of one file (as two workers of a handoff have): 40 changes at once,
    # each adding one item, lose none.
    first, second = Store(str(tmp_path), "store.json"), Store(str(tmp_path), "store.json")

    def add(number: int) -> Callable[[dict[str, Any]], None]:
        return lambda document: document.setdefault("items", []).append(number)

    async with anyio.create_task_group() as group:
        for number in range(40):
            group.start_soon((first if number % 2 else second).update, add(number))
    assert sorted((await first.read())["items"]) == list(range(40))


async def test_a_store_of_a_newer_format_is_read_but_never_written(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text(json.dumps({"format": 2, "connections": [], "new_thing": True}))
    store = Store(str(tmp_path), "store.json")
    assert await store.read() == {"connections": [], "new_thing": True}
    with pytest.raises(StoreTooNewError, match="format 2 but this dbtkd writes format 1"):
        await store.update(lambda document: document.update(new_thing=False))
    assert json.loads(path.read_text())["new_thing"] is True
    # A change that changes nothing is no write, so it is no error either.
    assert await store.update(lambda document: document["new_thing"]) is True


async def test_an_unreadable_store_is_moved_aside_by_the_next_change(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    path.write_text("{not json")
    store = Store(str(tmp_path), "store.json", initial=lambda: {"items": []})
    assert await store.read() == {"items": []}
    assert path.read_text() == "{not json"  # a read never moves nor writes anything
    await store.update(lambda document: document["items"].append(1))
    (aside,) = [name for name in os.listdir(tmp_path) if name.startswith("store.json.corrupt-")]
    assert (tmp_path / aside).read_text() == "{not json"
    assert json.loads(path.read_text()) == {"items": [1], "format": 1}


async def test_migrations_run_one_step_at_a_time_up_to_the_current_format(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.json"
    path.write_text(json.dumps({"format": 1, "steps": []}))
    migrations = {
        1: lambda document: {**document, "steps": [*document["steps"], "1->2"]},
        2: lambda document: {**document, "steps": [*document["steps"], "2->3"]},
    }
    store = Store(str(tmp_path), "store.json", current_format=3, migrations=migrations)
    assert await store.read() == {"steps": ["1->2", "2->3"]}
    assert json.loads(path.read_text())["format"] == 1  # written by the next change only
    await store.update(lambda document: document["steps"].append("changed"))
    assert json.loads(path.read_text()) == {"format": 3, "steps": ["1->2", "2->3", "changed"]}


def test_temporary_files_of_interrupted_writes_are_removed_at_start(tmp_path: Path) -> None:
    interrupted = tmp_path / ".connections.json.k3j_x9a2.tmp"
    interrupted.write_text('{"connections": [{"password": "secret"}]}')
    # A daemon before this one named its temporary files ".<random>.tmp": removed once they
    # are older than any write takes, so a write of a running old worker is left alone.
    old_unnamed, new_unnamed = tmp_path / ".ab12cd34.tmp", tmp_path / ".ef56gh78.tmp"
    old_unnamed.write_text("{}")
    new_unnamed.write_text("{}")
    an_hour_ago = time.time() - 3600
    os.utime(old_unnamed, (an_hour_ago, an_hour_ago))
    kept = [tmp_path / "connections.json", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    for path in kept:
        path.write_text("{}")

    removed = remove_interrupted_writes(str(tmp_path))
    assert sorted(removed) == sorted([interrupted.name, old_unnamed.name])
    assert not interrupted.exists()
    assert not old_unnamed.exists()
    assert new_unnamed.exists()
    assert all(path.exists() for path in kept)
    assert remove_interrupted_writes(str(tmp_path / "missing")) == []


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
    assert not data_dir.exists()  # reading writes nothing; the first change writes it
    await store.delete(EMBEDDED_ID)
    assert mode(data_dir / "connections.json") == 0o600
    # Deleting it sticks: a new worker does not bring it back.
    assert await ProfileStore(str(data_dir)).all() == []


async def test_an_old_connections_file_is_migrated_and_rewritten_by_the_first_change(
    tmp_path: Path,
) -> None:
    path = tmp_path / "connections.json"
    path.write_text(
        json.dumps(
            {"connections": [{"id": "b", "name": "x", "db_type": "sqlite", "file_path": "/x/y.db"}]}
        )
    )
    store = ProfileStore(str(tmp_path))
    (profile,) = await store.all()
    assert profile.database == "/x/y.db"
    assert "format" not in json.loads(path.read_text())
    renamed = await store.edit("b", {"name": "y"})
    assert (renamed.name, renamed.database) == ("y", "/x/y.db")
    assert json.loads(path.read_text())["format"] == 1
    assert json.loads(path.read_text())["connections"][0]["database"] == "/x/y.db"
    assert mode(path) == 0o600


async def test_a_newer_connections_file_refuses_changes_with_a_clear_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "connections.json"
    path.write_text(json.dumps({"format": 7, "connections": []}))
    store = ProfileStore(str(tmp_path))
    assert await store.all() == []
    profile = build_profile({"name": "n", "db_type": "sqlite", "database": "/tmp/x.db"})
    with pytest.raises(StoreTooNewError, match="upgrade dbtkd"):
        await store.save(profile)
    assert await store.all() == []
    with pytest.raises(ProfileNotFoundError):
        await store.get(profile.id)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "db_type": "oracle"}, "expected db_type one of"),
        ({"name": "x", "db_type": "sqlite", "database": "rel.db"}, "absolute path"),
        ({"name": "x", "db_type": "postgresql", "username": "u"}, "expected host"),
        ({"name": "x", "db_type": "mysql", "host": "h", "username": "u", "port": 70000}, "port"),
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

    async def add(connection_id: str, query: str, error: str | None = None) -> None:
        await history.add(
            connection_id,
            query=query,
            success=error is None,
            execution_time=0.1,
            total_rows=1,
            rows_affected=None,
            error=error,
        )

    # Added all at once: they share writes, and none is lost.
    async with anyio.create_task_group() as group:
        for number in range(MAX_ENTRIES_PER_CONNECTION + 5):
            group.start_soon(add, "c1", f"SELECT {number}")
    await add("c1", "SELECT 'last'")
    await add("c2", "x" * (MAX_QUERY_CHARS + 1), "boom")
    reread = QueryHistory(str(tmp_path))
    entries = await reread.list("c1", limit=MAX_ENTRIES_PER_CONNECTION + 5)
    assert len(entries) == MAX_ENTRIES_PER_CONNECTION
    assert entries[0]["query"] == "SELECT 'last'"  # newest first
    (long_one,) = await reread.list("c2")
    assert long_one["query_truncated"] is True
    assert len(long_one["query"]) == MAX_QUERY_CHARS
    assert mode(tmp_path / "query-history.json") == 0o600
    assert await reread.clear("c1") is True
    assert await QueryHistory(str(tmp_path)).list("c1") == []
    assert await reread.clear("c1") is False


async def test_entries_this_version_cannot_use_are_kept_but_not_offered(tmp_path: Path) -> None:
    path = tmp_path / "connections.json"
    odd = {"id": "m", "name": "mongo", "db_type": "mongodb"}
    good = {"id": "g", "name": "lite", "db_type": "sqlite", "database": "/x.db"}
    path.write_text(json.dumps({"format": 1, "connections": [odd, good, "junk"]}))
    store = ProfileStore(str(tmp_path))
    assert [profile.id for profile in await store.all()] == ["g"]
    await store.delete("g")
    assert json.loads(path.read_text())["unsupported"] == [odd, "junk"]
