"""Text that JSON can spell but UTF-8 cannot carry, against a real daemon (issue 11 item 5).

On bdb7a18 a connection name, backup label, schedule name or SQL text holding a lone surrogate
(``"\\ud800"``) was stored, its POST answered 500, and from then on every list of that kind
answered 500, also after a restart. Now: every string field of every POST/PUT refuses a lone
surrogate with 400 naming the field and stores nothing; NUL and 1 MiB strings never answer 500
nor break a store; and a store that already holds such a value (written by hand, or by an older
version) still lists, the surrogate shown escaped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.db.support import Api

LONE = "bad \ud800 text"
MIB = 1024 * 1024

# (label, method, path, body, field, list_path): each body is valid without the bad value.
Case = tuple[str, str, str, dict[str, Any], str, str]


@pytest.fixture(scope="module")
def saved(api: Api, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    database = str(tmp_path_factory.mktemp("text") / "text.db")
    connection = api.ok(
        "POST",
        "/api/v1/connections",
        {"name": "ok", "db_type": "sqlite", "database": database},
        201,
    )
    schedule = api.ok(
        "POST",
        "/api/v1/backup-schedules",
        {"connection_id": connection["id"], "name": "nightly", "interval_seconds": 86400},
        201,
    )
    return {"connection": connection["id"], "schedule": schedule["id"], "database": database}


def cases(saved: dict[str, str]) -> Iterator[Case]:
    connection, schedule = saved["connection"], saved["schedule"]
    profile = {"name": "c", "db_type": "sqlite", "database": saved["database"]}
    for field in ("name", "database", "host", "username", "password"):
        yield (
            "create connection",
            "POST",
            "/api/v1/connections",
            profile,
            field,
            "/api/v1/connections",
        )
        yield (
            "edit connection",
            "PUT",
            f"/api/v1/connections/{connection}",
            {},
            field,
            "/api/v1/connections",
        )
        yield (
            "test connection",
            "POST",
            "/api/v1/connections/test",
            profile,
            field,
            "/api/v1/connections",
        )
    query = f"/api/v1/connections/{connection}/query"
    yield ("query", "POST", query, {"query": "SELECT 1"}, "query", f"{query}/history")
    yield (
        "query params",
        "POST",
        query,
        {"query": "SELECT ?", "params": ["x"]},
        "params",
        f"{query}/history",
    )
    backup = {"connection_id": connection, "name": "b"}
    for field in ("name", "connection_id", "backup_type"):
        yield ("create backup", "POST", "/api/v1/backups", backup, field, "/api/v1/backups")
    new_schedule = {"connection_id": connection, "name": "s", "interval_seconds": 86400}
    for field in ("name", "connection_id", "backup_type"):
        yield (
            "create schedule",
            "POST",
            "/api/v1/backup-schedules",
            new_schedule,
            field,
            "/api/v1/backup-schedules",
        )
        yield (
            "edit schedule",
            "PUT",
            f"/api/v1/backup-schedules/{schedule}",
            {},
            field,
            "/api/v1/backup-schedules",
        )


def with_value(body: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    if field == "params":
        return {**body, "params": [value]}
    return {**body, field: value}


def listed(api: Api, path: str) -> Any:
    status, document = api.call("GET", path)
    assert status == 200, (path, status, document)
    return document


def every_case(api: Api, saved: dict[str, str], run: Callable[[Case], None]) -> None:
    for case in cases(saved):
        run(case)
    # The daemon is still the one that started, and every list still answers.
    assert api.daemon.status()["state"] == "running"


def test_a_lone_surrogate_in_any_string_field_is_refused_naming_it_and_never_stored(
    api: Api, saved: dict[str, str]
) -> None:
    def run(case: Case) -> None:
        label, method, path, body, field, list_path = case
        before = json.dumps(listed(api, list_path), sort_keys=True)
        status, document = api.call(method, path, with_value(body, field, LONE))
        assert status == 400, (label, field, status, document)
        assert document["error"] == "invalid_text", (label, field, document)
        expected = "params[0]" if field == "params" else field
        assert f"expected {expected} to be text" in document["detail"], (label, document)
        after = json.dumps(listed(api, list_path), sort_keys=True)
        assert after == before, f"{label}: {field} changed what is stored"

    every_case(api, saved, run)


def test_nul_and_one_mebibyte_strings_never_answer_500_nor_break_a_store(
    api: Api, saved: dict[str, str]
) -> None:
    def run(case: Case) -> None:
        label, method, path, body, field, list_path = case
        for value in ("a\x00b", "x" * MIB):
            status, document = api.call(method, path, with_value(body, field, value))
            # NUL is text JSON and UTF-8 carry: each route takes or refuses it by its own rules.
            # 1 MiB plus the rest of the body is over the 1 MiB body limit: 413.
            assert status < 500, (label, field, len(value), status, document)
            if len(value) == MIB:
                assert status == 413, (label, field, status, document)
            listed(api, list_path)

    every_case(api, saved, run)


def test_a_store_already_holding_a_lone_surrogate_still_lists_it_escaped(
    api: Api, saved: dict[str, str]
) -> None:
    data = Path(api.daemon.home) / "data"
    path = data / "connections.json"
    document = json.loads(path.read_text())
    document["connections"][0]["name"] = LONE
    # json.dumps writes the lone surrogate as its \\ud800 escape: what an older version stored.
    path.write_text(json.dumps(document))

    connections = listed(api, "/api/v1/connections")
    names = [c["name"] for c in connections]
    assert "bad \\ud800 text" in names, names

    # Also after a restart of the worker (nothing cached, the file is read again).
    restarted = api.daemon.ctl("restart")
    assert restarted.code == 0, restarted.err
    connections = listed(api, "/api/v1/connections")
    assert "bad \\ud800 text" in [c["name"] for c in connections]
