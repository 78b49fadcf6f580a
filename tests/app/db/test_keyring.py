"""Saved passwords in the OS keyring, not in connections.json (issue 11 item 8).

Against a real Secret Service (gnome-keyring on a private D-Bus session bus, see
secretservice.py) and a real MariaDB user with a password, so "connect works" proves the right
password came back from the keyring: passwords are in the keyring (read with ``secret-tool``)
and nowhere in the file; status and health say the keyring is used; a restart still connects;
the keyring going away and coming back loses no password (new ones wait in the file, old ones
stay in the keyring, and move when it is back); eight clients creating connections with
passwords while the worker is ``kill -9``ed keep every acknowledged password.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.db.conftest import mysql_admin
from tests.app.db.secretservice import SecretService
from tests.app.db.support import Api, DbServer
from tests.app.db.test_stores_concurrent import KILLS, Kind, base_name, check, crowd, stored
from tests.support import Daemon, ProcessReaper, env_for, wait_until


@pytest.fixture
def secret_service(tmp_path: Path) -> Iterator[SecretService]:
    service = SecretService(tmp_path)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def mysql_user(mysql: DbServer) -> Iterator[tuple[DbServer, str]]:
    """A MariaDB user that can log in only with its password (so a wrong one fails)."""
    user, password = f"kr_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(8)}"
    admin = mysql_admin()
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
            cursor.execute(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'")
            cursor.execute(
                f"GRANT ALL ON `{mysql.database}`.* TO '{user}'@'%', '{user}'@'localhost'"
            )
        yield DbServer("mysql", "127.0.0.1", 3306, user, mysql.database), password
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost'")
        admin.close()


def start(reaper: ProcessReaper, home: Path, service: SecretService) -> Daemon:
    return reaper.start(home, env=env_for(home, DBTK_PASSWORD_STORE="", **service.env()))


def restart(reaper: ProcessReaper, daemon: Daemon, service: SecretService) -> Daemon:
    assert daemon.ctl("stop").code == 0
    daemon.proc.wait(timeout=30)
    return start(reaper, daemon.home, service)


def entries(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in stored(daemon, "connections.json")["connections"]}


def connects(api: Api, connection_id: str) -> bool:
    status, document = api.call("POST", f"/api/v1/connections/{connection_id}/connect")
    assert status in (200, 400), (status, document)
    if status == 200:
        api.ok("POST", f"/api/v1/connections/{connection_id}/disconnect")
    return status == 200


def password_status(daemon: Daemon) -> dict[str, Any]:
    result = daemon.ctl("status", "--json")
    assert result.code == 0, result
    passwords: dict[str, Any] = json.loads(result.out)["passwords"]
    health = Api(daemon).ok("GET", "/api/v1/health")["passwords"]
    assert health == passwords
    return passwords


def test_passwords_live_in_the_keyring_and_still_connect_after_a_restart(
    secret_service: SecretService,
    mysql_user: tuple[DbServer, str],
    home: Path,
    reaper: ProcessReaper,
) -> None:
    server, password = mysql_user
    daemon = start(reaper, home, secret_service)
    api = Api(daemon)
    good = api.create(server, "good", password=password)
    wrong = api.create(server, "wrong", password="not-the-password")

    text = (home / "data" / "connections.json").read_text()
    assert password not in text
    assert "not-the-password" not in text
    saved = entries(daemon)
    assert saved[good]["password"] is None
    assert secret_service.lookup(saved[good]["keyring"]) == password
    assert secret_service.lookup(saved[wrong]["keyring"]) == "not-the-password"
    # The API says there is a password, never what it is.
    listed = api.ok("GET", "/api/v1/connections")
    assert password not in json.dumps(listed)
    assert saved[good]["keyring"] not in json.dumps(listed)
    assert {c["id"]: c["has_password"] for c in listed if c["id"] != "local"} == {
        good: True,
        wrong: True,
    }
    assert password_status(daemon) == {
        "store": "keyring",
        "backend": "Secret Service",
        "reason": None,
        "in_keyring": 2,
        "in_file": 0,
    }
    assert (
        "OS keyring (Secret Service); 2 in the keyring, 0 in the file" in daemon.ctl("status").out
    )
    assert connects(api, good)
    assert not connects(api, wrong)  # the password really is the one the login depends on

    daemon = restart(reaper, daemon, secret_service)  # nothing cached: read from the keyring
    api = Api(daemon)
    assert connects(api, good)
    assert not connects(api, wrong)

    # A new password gets a new item; the old one goes once the file no longer names it.
    old_ref = saved[wrong]["keyring"]
    api.ok("PUT", f"/api/v1/connections/{wrong}", {"password": password})
    new_ref = entries(daemon)[wrong]["keyring"]
    assert new_ref != old_ref
    assert secret_service.lookup(old_ref) is None
    assert connects(api, wrong)
    # A rename (the form sends "" for the password) keeps it where it is.
    api.ok("PUT", f"/api/v1/connections/{wrong}", {"name": "renamed", "password": ""})
    assert entries(daemon)[wrong]["keyring"] == new_ref
    # Deleting a connection deletes its item; nothing of ours is left but the good one's.
    api.ok("DELETE", f"/api/v1/connections/{wrong}")
    assert secret_service.count() == 1
    assert secret_service.lookup(saved[good]["keyring"]) == password


def test_a_keyring_that_goes_away_and_comes_back_loses_no_password(
    secret_service: SecretService,
    mysql_user: tuple[DbServer, str],
    home: Path,
    reaper: ProcessReaper,
) -> None:
    server, password = mysql_user
    daemon = start(reaper, home, secret_service)
    api = Api(daemon)
    before = api.create(server, "before", password=password)
    ref = entries(daemon)[before]["keyring"]

    secret_service.stop_keyring()
    gone = password_status(daemon)
    assert (gone["store"], gone["in_keyring"]) == ("file", 1), gone
    assert "org.freedesktop.secrets" in gone["reason"], gone  # says why: no Secret Service
    # Saved while it is gone: kept in the 0600 file, acknowledged as usual.
    during = api.create(server, "during", password=password)
    assert entries(daemon)[during]["password"] == password
    # Edited while it is gone: the reference to the keyring is kept, not dropped.
    api.ok("PUT", f"/api/v1/connections/{before}", {"name": "before-renamed", "password": ""})
    assert entries(daemon)[before]["keyring"] == ref
    assert connects(api, during)
    assert connects(api, before)  # this worker read it from the keyring before it went away
    daemon = restart(reaper, daemon, secret_service)
    api = Api(daemon)
    assert connects(api, during)
    assert not connects(api, before)  # a new worker cannot reach it until the keyring is back
    assert entries(daemon)[before]["keyring"] == ref  # ... and still knows where it is

    secret_service.start_keyring()
    assert secret_service.lookup(ref) == password  # it never left the keyring
    # The worker that starts next moves the file's passwords to the keyring (as any save does).
    daemon = restart(reaper, daemon, secret_service)
    api = Api(daemon)
    api.ok("GET", "/api/v1/connections")
    wait_until(lambda: password_status(daemon)["in_file"] == 0, 15, 0.1, "the move to the keyring")
    assert password not in (home / "data" / "connections.json").read_text()
    assert secret_service.lookup(entries(daemon)[during]["keyring"]) == password
    assert connects(api, before)
    assert connects(api, during)
    assert password_status(daemon)["in_keyring"] == 2


def test_a_password_file_from_before_moves_to_the_keyring_whole(
    secret_service: SecretService,
    mysql_user: tuple[DbServer, str],
    home: Path,
    reaper: ProcessReaper,
) -> None:
    """connections.json of an earlier version, passwords in it: the first read moves them."""
    server, password = mysql_user
    data = home / "data"
    data.mkdir(mode=0o700)
    profile = {**server.profile("old"), "id": "old-1", "password": password}
    (data / "connections.json").write_text(json.dumps({"format": 1, "connections": [profile]}))
    (data / "connections.json").chmod(0o600)
    daemon = start(reaper, home, secret_service)
    api = Api(daemon)
    assert [c["has_password"] for c in api.ok("GET", "/api/v1/connections")] == [True]
    wait_until(lambda: "keyring" in entries(daemon)["old-1"], 15, 0.1, "the move to the keyring")
    assert password not in (data / "connections.json").read_text()
    assert secret_service.lookup(entries(daemon)["old-1"]["keyring"]) == password
    assert connects(api, "old-1")


def test_eight_clients_and_worker_kills_keep_every_acknowledged_password(
    secret_service: SecretService, home: Path, reaper: ProcessReaper
) -> None:
    """The crowd of test_stores_concurrent, every connection with a password of its own."""
    daemon = start(reaper, home, secret_service)

    def body(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "db_type": "postgresql",
            "host": "db.invalid",
            "username": "u",
            "database": name,
            "password": f"secret-{name}",
        }

    kind = Kind(
        collection="/api/v1/connections",
        created_status=201,
        create_body=body,
        listed=lambda api: [c for c in api.ok("GET", "/api/v1/connections") if c["id"] != "local"],
        in_file=lambda daemon: [c for c in entries(daemon).values() if c["id"] != "local"],
        whole=lambda c: c["database"] == base_name(c["name"]) and c.get("has_password", True),
    )
    ledger = crowd(daemon, kind)
    check(ledger, kind, daemon)
    # A save the Secret Service could not take then (a D-Bus call timing out under this load;
    # seen once in CI) is kept, acknowledged, in the 0600 file, and the next change of the
    # store moves it to the keyring. Make changes until nothing is left in the file.
    api = Api(daemon)
    poke = kind.in_file(daemon)[0]["id"]

    def moved() -> bool:
        api.ok("PUT", f"/api/v1/connections/{poke}", {"name": "poked", "password": ""})
        return "secret-" not in (home / "data" / "connections.json").read_text()

    try:
        wait_until(moved, 60, 0.5, "every password moved to the keyring")
    except AssertionError as exc:
        # Seen once under the full suite's load: say what the Secret Service answered.
        log = (home / "logs" / "dbtkd.log").read_text(errors="replace").splitlines()
        said = [line for line in log if "keyring" in line.lower() or "secret" in line.lower()]
        raise AssertionError(f"{exc}; the daemon's log about it: {said[-10:]}") from None
    in_file = kind.in_file(daemon)
    for entry in in_file:
        assert entry["password"] is None, entry["id"]
        assert secret_service.lookup(entry["keyring"]) == f"secret-{entry['database']}", entry
    # Items of deleted connections are gone, but for at most one per kill (a worker killed
    # between writing the file and deleting the item leaves that item behind, as does a
    # create killed between its item and the file).
    stray = secret_service.count() - len(in_file)
    assert 0 <= stray <= KILLS, (stray, len(in_file))


def test_without_a_keyring_passwords_stay_in_the_private_file_and_status_says_so(
    daemon: Daemon,
) -> None:
    """The tests' default (DBTK_PASSWORD_STORE=file), as on a machine with no keyring."""
    api = Api(daemon)
    body = {"name": "p", "db_type": "postgresql", "host": "h", "username": "u", "password": "pw1"}
    made = api.ok("POST", "/api/v1/connections", body, 201)
    assert "pw1" not in json.dumps(api.ok("GET", "/api/v1/connections"))
    assert "pw1" not in json.dumps(api.ok("GET", f"/api/v1/connections/{made['id']}"))
    path = daemon.home / "data" / "connections.json"
    assert entries(daemon)[made["id"]]["password"] == "pw1"
    assert path.stat().st_mode & 0o777 == 0o600
    assert password_status(daemon) == {
        "store": "file",
        "backend": None,
        "reason": "DBTK_PASSWORD_STORE=file",
        "in_keyring": 0,
        "in_file": 1,
    }
    assert "connections.json (0600): DBTK_PASSWORD_STORE=file" in daemon.ctl("status").out
