"""The change feed's numbering and replay buffer, without sockets (dbtkd.app.events)."""

from __future__ import annotations

import anyio
import pytest

from dbtkd.app.events import ChangeFeed, job_listener, may_change_schema


def kinds(events: list[dict[str, object]]) -> list[object]:
    return [event.get("kind", event["type"]) for event in events]


def test_changes_are_numbered_from_one_within_the_epoch() -> None:
    feed = ChangeFeed(epoch="abc")
    first = feed.publish("connection_created", id="c1")
    second = feed.publish("settings_changed")
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["epoch"] == second["epoch"] == "abc"
    assert feed.hello() == {"type": "hello", "epoch": "abc", "seq": 2}


def test_an_unknown_kind_is_a_programming_error_that_says_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"expected a change kind .*connection_created.*; got 'x'"):
        ChangeFeed().publish("x")


def test_a_client_of_this_epoch_gets_exactly_what_it_missed() -> None:
    feed = ChangeFeed(epoch="e1")
    for number in range(5):
        feed.publish("connection_created", id=f"c{number}")
    assert [event["seq"] for event in feed.replay("e1:2")] == [3, 4, 5]
    assert feed.replay("e1:5") == []
    assert feed.replay(None) == []


def test_another_epoch_means_resync_not_a_silent_gap() -> None:
    feed = ChangeFeed(epoch="new")
    feed.publish("connection_created", id="c1")
    (event,) = feed.replay("old:7")
    assert event["type"] == "resync"
    assert "worker changed" in event["reason"]


def test_more_changes_than_the_buffer_holds_mean_resync() -> None:
    feed = ChangeFeed(capacity=3, epoch="e")
    for number in range(6):
        feed.publish("schema_changed", connection_id=f"c{number}")
    assert [event["seq"] for event in feed.replay("e:3")] == [4, 5, 6]  # still all kept
    assert kinds(feed.replay("e:2")) == ["resync"]  # change 3 is gone
    assert kinds(feed.replay("e:99")) == ["resync"]  # never given out
    assert kinds(feed.replay("garbage")) == ["resync"]


@pytest.mark.anyio
async def test_a_waiting_subscriber_wakes_for_the_next_change() -> None:
    feed = ChangeFeed(epoch="e")
    got: list[dict[str, object]] = []

    async def subscriber() -> None:
        got.extend(await feed.wait_after(0))

    async with anyio.create_task_group() as group:
        group.start_soon(subscriber)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        feed.publish("connection_deleted", id="c1")
    assert [(event["seq"], event["id"]) for event in got] == [(1, "c1")]


def test_statements_that_change_a_schema_tree_are_told_from_those_that_do_not() -> None:
    assert may_change_schema("CREATE TABLE t (id int)")
    assert may_change_schema("select 1; drop view v")
    assert may_change_schema("ALTER TABLE t ADD COLUMN x int")
    assert may_change_schema("ATTACH DATABASE 'x.db' AS x")
    assert not may_change_schema("SELECT 'create table' AS text")
    assert not may_change_schema('SELECT "drop" FROM t -- alter\n')
    assert not may_change_schema("INSERT INTO t VALUES (1) /* create */")
    assert not may_change_schema("SELECT created_at FROM t")


def test_a_backups_progress_is_not_a_change_but_its_status_is() -> None:
    feed = ChangeFeed(epoch="e")
    listen = job_listener(feed)
    for status, progress in [("pending", 0), ("in_progress", 0.1), ("in_progress", 0.5)]:
        listen({"id": "b1", "kind": "backup", "status": status, "progress": progress})
    listen({"id": "b1", "kind": "backup", "status": "completed", "progress": 1})
    listen({"id": "m1", "kind": "migration", "status": "completed", "connection_id": "c9"})
    assert [(e["kind"], e.get("status"), e.get("connection_id")) for e in feed.replay("e:0")] == [
        ("backup_changed", "pending", None),
        ("backup_changed", "in_progress", None),
        ("backup_changed", "completed", None),
        ("schema_changed", None, "c9"),
    ]
