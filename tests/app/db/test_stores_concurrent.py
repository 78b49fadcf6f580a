"""Every store keeps every acknowledged write when many windows change it at once (issue 11.1).

For each store of the data dir (connections, schedules, jobs through backups, query history),
eight clients make 50 records each through the real routes while deleting and changing records
of the others, and the worker is ``kill -9``ed in between (the supervisor starts the next on the
same port; a request that got no answer is sent again). Afterwards, through the API and in the
file: every acknowledged create is there with its last acknowledged change, no acknowledged
delete came back, the file is valid JSON of format 1, and a record whose create was never
acknowledged is either there whole or not at all. Also the issue's two reproductions, without
kills: two windows making 50 connections each at once, and one window deleting 30 connections
while another renames a different one.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.app.db.crowd import Answer, Client, Ledger, killing, run_clients
from tests.app.db.support import Api, DbServer
from tests.app.jobs.support import FINISHED
from tests.support import Daemon, wait_until

CLIENTS = 8
CREATES = 50
KILLS = 3
# Each client deletes a record of someone's after every DELETE_EVERY creates, and renames one
# of its own after every RENAME_EVERY: about a third as many of each as creates.
DELETE_EVERY = 3
RENAME_EVERY = 3


def stored(daemon: Daemon, file_name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((daemon.home / "data" / file_name).read_text())
    assert document["format"] == 1
    return document


def base_name(name: str) -> str:
    """The name a record was created with ("c3-17" for "c3-17-r2")."""
    return name.partition("-r")[0]


@dataclass
class Kind:
    """One store as the clients see it through its routes."""

    collection: str  # POST here to create, "<collection>/<id>" to change and delete
    created_status: int
    create_body: Callable[[str], dict[str, Any]]
    listed: Callable[[Api], list[dict[str, Any]]]
    in_file: Callable[[Daemon], list[dict[str, Any]]]
    # Whether a record is whole: everything its create sent, with its name.
    whole: Callable[[dict[str, Any]], bool]
    renames: bool = True


def crowd(daemon: Daemon, kind: Kind) -> Ledger:
    """Eight clients x 50 creates, deletes of others' records, renames of their own, three
    kills; returns what they were told."""
    ledger = Ledger()
    total = CLIENTS * CREATES

    def work(number: int) -> None:
        client, chooser = Client(daemon), random.Random(number)
        mine: list[str] = []
        for count in range(CREATES):
            name = f"c{number}-{count}"
            answer = client.expect(
                kind.created_status, "POST", kind.collection, kind.create_body(name)
            )
            mine.append(answer.document["id"])
            killer.acknowledged(ledger.note_created(answer.document["id"], name, answer) / total)
            if count % DELETE_EVERY == 1:
                delete_one(client, ledger, chooser, kind)
            if kind.renames and count % RENAME_EVERY == 2:
                rename_one(client, ledger, chooser, chooser.choice(mine), kind)

    with killing(daemon, KILLS) as killer:
        run_clients(CLIENTS, work)
    return ledger


def delete_one(client: Client, ledger: Ledger, chooser: random.Random, kind: Kind) -> None:
    record_id = ledger.claim_one(chooser)
    if record_id is None:
        return
    answer = client.send("DELETE", f"{kind.collection}/{record_id}")
    # 404 only if an earlier try went through unanswered: else an acknowledged record was lost.
    assert answer.status == 200 or (answer.status == 404 and answer.unanswered), (
        f"DELETE of the acknowledged {record_id} answered {answer.status}: {answer.document}"
    )
    with ledger.lock:
        ledger.deleted.add(record_id)


def rename_one(
    client: Client, ledger: Ledger, chooser: random.Random, record_id: str, kind: Kind
) -> None:
    with ledger.lock:
        old = ledger.names[record_id]
    new = f"{base_name(old)}-r{chooser.randrange(10**6)}"
    answer = client.send("PUT", f"{kind.collection}/{record_id}", {"name": new})
    if answer.status == 404:
        with ledger.lock:  # someone deleting it got there first: allowed, and only then
            assert record_id in ledger.claimed, (record_id, answer)
        return
    assert answer.status == 200, (record_id, answer)
    with ledger.lock:
        ledger.names[record_id] = new


def check(ledger: Ledger, kind: Kind, daemon: Daemon) -> None:
    """The store, through the API and in its file, is exactly what the clients were told."""
    listed = {r["id"]: r for r in kind.listed(Api(daemon))}
    in_file = {r["id"]: r for r in kind.in_file(daemon)}
    assert sorted(listed) == sorted(in_file)
    assert {i: r["name"] for i, r in listed.items()} == {i: r["name"] for i, r in in_file.items()}
    live = ledger.live()
    lost = sorted(set(live) - set(listed))
    assert not lost, f"{len(lost)} of {len(live)} acknowledged records lost: {lost[:5]}"
    wrong = {i: (listed[i]["name"], name) for i, name in live.items() if listed[i]["name"] != name}
    assert not wrong, f"acknowledged renames lost (found, acknowledged): {wrong}"
    back = sorted(ledger.deleted & set(listed))
    assert not back, f"{len(back)} deleted records came back: {back[:5]}"
    for record_id, record in listed.items():
        assert kind.whole(record), record
        if record_id not in ledger.names:  # never acknowledged: a create that got no answer
            assert base_name(record["name"]) in ledger.unanswered_creates, record
    assert ledger.created == CLIENTS * CREATES


def connections_kind() -> Kind:
    def body(name: str) -> dict[str, Any]:
        return {"name": name, "db_type": "sqlite", "database": f"/nonexistent/{name}.db"}

    return Kind(
        collection="/api/v1/connections",
        created_status=201,
        create_body=body,
        listed=lambda api: [c for c in api.ok("GET", "/api/v1/connections") if c["id"] != "local"],
        in_file=lambda daemon: [
            c for c in stored(daemon, "connections.json")["connections"] if c["id"] != "local"
        ],
        whole=lambda c: c["database"] == f"/nonexistent/{base_name(c['name'])}.db",
    )


def test_eight_clients_and_worker_kills_lose_no_connection(daemon: Daemon) -> None:
    kind = connections_kind()
    ledger = crowd(daemon, kind)
    check(ledger, kind, daemon)


def test_eight_clients_and_worker_kills_lose_no_schedule(daemon: Daemon) -> None:
    def body(name: str) -> dict[str, Any]:
        return {"connection_id": "local", "name": name, "interval_seconds": 3600, "retention": 3}

    kind = Kind(
        collection="/api/v1/backup-schedules",
        created_status=201,
        create_body=body,
        listed=lambda api: list(api.ok("GET", "/api/v1/backup-schedules")["schedules"]),
        in_file=lambda daemon: list(stored(daemon, "schedules.json")["schedules"]),
        whole=lambda s: (
            (s["connection_id"], s["interval_seconds"], s["retention"]) == ("local", 3600, 3)
        ),
    )
    ledger = crowd(daemon, kind)
    check(ledger, kind, daemon)


def test_eight_clients_and_worker_kills_lose_no_backup_record(
    daemon: Daemon, sqlite: DbServer
) -> None:
    api = Api(daemon)
    connection = api.create(sqlite, "source")
    api.run(connection, "CREATE TABLE t (n INTEGER)")
    api.run(connection, "INSERT INTO t VALUES (1), (2), (3)")

    def backups(api: Api) -> list[dict[str, Any]]:
        listed = api.ok("GET", "/api/v1/backups")
        found: list[dict[str, Any]] = listed["backups"] if isinstance(listed, dict) else listed
        return found

    # Backups have no rename; their records change as they run, which is the "other" writing.
    kind = Kind(
        collection="/api/v1/backups",
        created_status=202,
        create_body=lambda name: {"connection_id": connection, "name": name},
        listed=backups,
        in_file=lambda daemon: [
            j for j in stored(daemon, "jobs.json")["jobs"] if j["kind"] == "backup"
        ],
        whole=lambda b: b["kind"] == "backup" and b["connection_id"] == connection,
        renames=False,
    )
    ledger = crowd(daemon, kind)
    wait_until(
        lambda: all(b["status"] in FINISHED for b in backups(api)), 30, 0.05, "every backup to end"
    )
    check(ledger, kind, daemon)
    outcomes = {b["status"] for b in backups(api)}
    assert outcomes <= {"completed", "failed"}, outcomes


def test_eight_clients_and_worker_kills_lose_no_query_history(
    daemon: Daemon, tmp_path: Path
) -> None:
    """Each client runs 50 queries on a connection of its own and, now and then, clears its
    history; others clear theirs meanwhile. A query that was answered is in the history unless
    its client cleared the history after the answer."""
    api = Api(daemon)
    connections = [
        api.create(DbServer("sqlite", None, None, None, str(tmp_path / f"{n}.db")), f"db{n}")
        for n in range(CLIENTS)
    ]
    kept: list[set[str]] = [set() for _ in range(CLIENTS)]  # answered since the last clear
    cleared: list[set[str]] = [set() for _ in range(CLIENTS)]  # answered before it
    maybe: list[set[str]] = [set() for _ in range(CLIENTS)]  # unanswered at least once
    done = [0]
    lock = threading.Lock()

    def history_in_file(connection: str) -> list[str]:
        if not (daemon.home / "data" / "query-history.json").exists():
            return []
        entries = stored(daemon, "query-history.json")["connections"].get(connection, [])
        return [entry["query"] for entry in entries]

    def work(number: int) -> None:
        client, path = Client(daemon), f"/api/v1/connections/{connections[number]}/query"
        for count in range(CREATES):
            text = f"SELECT 'c{number}-{count}'"
            answer: Answer = client.expect(200, "POST", path, {"query": text})
            assert answer.document["success"], answer
            # Answered, so already in the file (a worker killed now must not lose it).
            assert text in history_in_file(connections[number]), f"{text} answered, not saved"
            kept[number].add(text)
            if answer.unanswered:
                maybe[number].add(text)
            with lock:
                done[0] += 1
                progress = done[0] / (CLIENTS * CREATES)
            killer.acknowledged(progress)
            if count % 10 == 9 and count < CREATES - 1:
                client.expect(200, "DELETE", f"{path}/history")
                cleared[number] |= kept[number]
                kept[number] = set()

    with killing(daemon, KILLS) as killer:
        run_clients(CLIENTS, work)

    for number, connection in enumerate(connections):
        listed = api.ok("GET", f"/api/v1/connections/{connection}/query/history?limit=200")
        queries = [entry["query"] for entry in listed["history"]]
        lost = kept[number] - set(queries)
        assert not lost, f"client {number}: answered queries missing from the history: {lost}"
        back = cleared[number] & set(queries)
        assert not back, f"client {number}: cleared entries came back: {back}"
        assert set(queries) == kept[number]
        # A query run twice (its first try got no answer) may be there twice, whole.
        twice = {query for query in queries if queries.count(query) > 1}
        assert twice <= maybe[number], twice
        for entry in listed["history"]:
            assert (entry["success"], entry["total_rows"]) == (True, 1), entry
        assert queries == list(reversed(history_in_file(connection)))


def test_two_windows_each_making_50_connections_at_once_keep_all_100(daemon: Daemon) -> None:
    kind, made = connections_kind(), []

    def window(number: int) -> None:
        client = Client(daemon)
        for count in range(50):
            name = f"w{number}-{count}"
            made.append(client.expect(201, "POST", kind.collection, kind.create_body(name)))

    run_clients(2, window)
    listed = {c["id"] for c in kind.listed(Api(daemon))}
    lost = {a.document["id"] for a in made} - listed
    assert not lost, f"{len(lost)} of 100 acknowledged creates lost"
    assert len(listed) == 100
    assert {c["id"] for c in kind.in_file(daemon)} == listed


def test_deleting_30_connections_while_another_is_renamed_brings_none_back(
    daemon: Daemon,
) -> None:
    kind, client = connections_kind(), Client(daemon)
    body = {**kind.create_body("doomed"), "db_type": "postgresql", "host": "h", "username": "u"}
    doomed = [
        client.expect(201, "POST", kind.collection, {**body, "password": f"secret-{n}"})
        for n in range(30)
    ]
    renamed = client.expect(201, "POST", kind.collection, kind.create_body("renamed")).document

    def window(number: int) -> None:
        if number == 0:
            for answer in doomed:
                client.expect(200, "DELETE", f"{kind.collection}/{answer.document['id']}")
        else:
            for count in range(30):
                path = f"{kind.collection}/{renamed['id']}"
                Client(daemon).expect(200, "PUT", path, {"name": f"renamed-{count}"})

    run_clients(2, window)
    listed = kind.listed(Api(daemon))
    back = {a.document["id"] for a in doomed} & {c["id"] for c in listed}
    assert not back, f"{len(back)} of the 30 deleted connections came back"
    assert [(c["id"], c["name"]) for c in listed] == [(renamed["id"], "renamed-29")]
    text = (daemon.home / "data" / "connections.json").read_text()
    assert "secret-" not in text
    assert [c["id"] for c in kind.in_file(daemon)] == [renamed["id"]]
