"""The supervisor-worker wire (dbtkd/wire.py), pinned: every message's fields and encoding. A
change here is a protocol change between two processes (and, in a handoff, two versions), so it
must be made on purpose, here, and not by renaming a key on one side."""

from __future__ import annotations

import json
from pathlib import Path

from dbtkd import settings, spawn, wire
from tests.support import Daemon, control_call

PINNED = {
    "WorkerSettings": [
        "port",
        "allowed_origins",
        "version",
        "daemon_pid",
        "daemon_started_at",
        "worker_restarts",
        "log_file",
        "data_dir",
        "config_file",
        "log_level",
        "access_log",
        "test_faults",
    ],
    "Handshake": ["probe", "socket"],  # besides WorkerSettings'
    "SupervisorView": ["restarts", "leases", "supervisor", "log_error"],
    "Activity": ["idle_for", "in_flight", "jobs", "job_list", "requests_total"],
    "LeaseRecord": ["name", "pid", "since"],
    "HandoffState": ["token", "nonce", "port", "started_at", "version", "leases"],
}


def test_every_message_has_the_pinned_fields() -> None:
    for name, fields in PINNED.items():
        message = getattr(wire, name)
        inherited = PINNED["WorkerSettings"] if name == "Handshake" else []
        own = [k for k in message.__annotations__ if k not in inherited]
        assert own == fields, name
    assert (wire.OP_PING, wire.OP_STOP, wire.OP_PONG, wire.OP_ORPHANS) == (
        "ping",
        "stop",
        "pong",
        "orphans",
    )
    assert (wire.EXIT_CONFIG, wire.PROBE_HEADER) == (78, "x-dbtk-probe")


def test_lines_are_one_json_object_each() -> None:
    assert wire.line(wire.OP_STOP, code=1012, jobs_reason="upgrade") == (
        b'{"op": "stop", "code": 1012, "jobs_reason": "upgrade"}\n'
    )
    assert wire.line(wire.OP_ORPHANS) == b'{"op": "orphans"}\n'


def test_the_supervisor_hands_a_worker_exactly_the_settings_fields(tmp_path: Path) -> None:
    loaded = settings.load({}, {}, home=str(tmp_path))
    handed = spawn.worker_settings(loaded, {}, port=8123, started_at=1.5, restarts=2)
    assert list(handed) == PINNED["WorkerSettings"]
    json.dumps(handed)  # it travels as JSON


def test_a_running_worker_pongs_exactly_the_activity_fields(daemon: Daemon) -> None:
    worker = control_call(daemon.home, "metrics")["worker"]
    assert sorted(worker) == sorted(PINNED["Activity"])
