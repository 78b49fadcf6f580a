"""The supervisor-worker wire, defined once: what a worker is handed, the orders and replies on
its pipes, what a version handoff carries, and the constants both sides use.

These cross process boundaries (and, in a handoff, versions): a field renamed on one side only
would be read as missing on the other. Each message is a ``TypedDict`` here, both sides build
and read them through these types, and ``tests/daemon/test_wire.py`` pins every message's
fields and encoding, so changing one is a visible, deliberate protocol change.

- Handshake (supervisor → worker stdin, once): the token line, then ``Handshake`` as one JSON
  line (``WorkerSettings`` plus the probe nonce and the listening socket).
- Orders (supervisor → worker stdin, JSON lines): ``ping`` ``{seq, view: SupervisorView}``,
  ``stop`` ``{code, jobs_reason}``.
- Replies (worker → supervisor reply pipe, JSON lines): ``pong`` ``{seq, **Activity}``,
  ``orphans`` (a program exited; sweep what it left).
- Handoff (old daemon → new, with the descriptors): ``HandoffState``.

Stdlib only; the worker and the supervisor import it, dbtkctl never does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

from dbtkd.units import SECONDS

# The worker's "fatal configuration error" status (sysexits EX_CONFIG): the supervisor goes to
# ``failed`` at once instead of retrying.
EXIT_CONFIG = 78
# The worker's "its app did not load" status (sysexits EX_SOFTWARE). A worker answers /health
# while it loads the app (dbtkd.app.loading), so it may have been ready; a worker that ends this
# way still counts as a failed start (backoff, then ``failed``), not as a serving worker's death
# (replaced at once), so a broken install cannot make it restart in a loop.
EXIT_APP_LOAD = 70
# The supervisor's readiness probe carries the worker's nonce in this header; the worker echoes
# it, so the answer cannot come from an older worker still draining.
PROBE_HEADER = "x-dbtk-probe"
# A cold start on a slow disk, with room to spare; ``port`` and ``restart`` wait as long.
WORKER_READY_TIMEOUT = 30 * SECONDS

OP_PING = "ping"
OP_STOP = "stop"
OP_PONG = "pong"
OP_ORPHANS = "orphans"


class WorkerSettings(TypedDict):
    port: int
    allowed_origins: list[str]
    version: str
    daemon_pid: int
    daemon_started_at: float
    worker_restarts: int
    log_file: str
    data_dir: str
    config_file: str
    log_level: str
    access_log: bool
    test_faults: list[str]


class Handshake(WorkerSettings):
    probe: str  # the nonce this worker's readiness probe must echo
    socket: dict[str, Any]  # dbtkd.sockshare.export_for_child


class SupervisorView(TypedDict):
    """What a ``ping`` tells the worker, for its ``/metrics``."""

    restarts: dict[str, int]
    leases: int
    supervisor: Mapping[str, Any]  # procstats of the supervisor process
    log_error: str | None


class Activity(TypedDict):
    """What a ``pong`` tells the supervisor, for idle exit and ``dbtkctl stop``."""

    idle_for: float
    in_flight: int
    jobs: int
    job_list: list[dict[str, Any]]
    requests_total: int


class LeaseRecord(TypedDict):
    name: str
    pid: int
    since: float


class HandoffState(TypedDict):
    token: str
    nonce: str
    port: int
    started_at: float
    version: str
    leases: list[LeaseRecord]


def line(op: str, **fields: Any) -> bytes:
    """One order or reply as its JSON line."""
    return json.dumps({"op": op, **fields}).encode() + b"\n"
