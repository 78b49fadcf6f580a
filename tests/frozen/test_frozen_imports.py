"""The frozen dbtkd carries every module, driver and stream handler the source app has.

``dbtkd _selftest`` (honoured only with ``DBTK_FROZEN_SELFTEST=1``) imports every module
under ``dbtkd.app`` (pkgutil, so modules added later are covered without a list) and every
module they import, also inside functions, which is how the database drivers are loaded. It
runs once from the source install, to learn what must be there, and once in the frozen
executable, which must import all of it. Then a frozen daemon opens every WebSocket stream the
source declares, so a handler that fails when a client connects is caught too.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from dbtkd.__main__ import LINUX_ONLY, NOT_LINUX
from tests.frozen.bundle import (
    FROZEN,
    INTERNAL,
    REPO,
    SKIP_REASON,
    assert_is_a_frozen_bundle,
    selftest,
    source_selftest,
)
from tests.support import DBTKD, Daemon

if not FROZEN:
    pytest.skip(SKIP_REASON, allow_module_level=True)

# WebSocket close code 1011: the server hit an unexpected condition (a handler raised).
INTERNAL_ERROR = 1011
SECONDS = 1.0
# How long a stream may take to send its snapshot before we take silence as "serving".
FIRST_MESSAGE_WAIT = 2 * SECONDS


def test_the_bundle_under_test_is_a_frozen_build() -> None:
    assert_is_a_frozen_bundle()
    assert Path(DBTKD).is_file()
    assert os.access(DBTKD, os.X_OK)


def third_party_imports(package_dir: Path) -> set[str]:
    """Top-level packages outside the stdlib imported anywhere under ``package_dir``."""
    found: set[str] = set()
    for file in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"dbtkd", "dbtkctl"}


def test_frozen_dbtkd_imports_every_module_and_driver_the_source_app_imports() -> None:
    source = source_selftest()
    # Everything the source walked or imported (stdlib included: a missing _sqlite3 extension
    # is as fatal as a missing driver), named explicitly so the frozen run must import it, and
    # every third-party package the daemon imports anywhere (the supervisor's lazy ones too).
    # Less the OS keyring client of the other systems (declared with a platform marker).
    elsewhere = NOT_LINUX if sys.platform == "linux" else LINUX_ONLY
    expected = sorted(
        {*source["walked"], *source["imports_scanned"], *third_party_imports(REPO / "dbtkd")}
        - elsewhere
    )
    assert "dbtkd.app.db.sqlite" in expected  # the walk reached the engines
    code, out, err = selftest(*expected)
    report = json.loads(out) if out.startswith("{") else {}
    assert code == 0, f"frozen dbtkd failed to import: {report.get('failures') or err}"
    assert report["frozen"] is True
    assert Path(report["app_file"]).is_relative_to(INTERNAL), report["app_file"]
    assert set(report["walked"]) == set(source["walked"])
    assert report["failures"] == {}


def test_frozen_selftest_fails_on_a_module_the_bundle_lacks() -> None:
    code, out, _ = selftest("dbtk_module_that_is_not_there")
    assert code == 1
    failures = json.loads(out)["failures"]
    assert list(failures) == ["dbtk_module_that_is_not_there"]
    assert failures["dbtk_module_that_is_not_there"].startswith("ModuleNotFoundError")


def test_frozen_selftest_is_only_run_with_its_switch() -> None:
    code, out, err = selftest(switch=False)
    assert code == 2  # the supervisor's usage error: "_selftest" is no argument of dbtkd
    assert out == ""
    assert "usage: dbtkd" in err


def websocket_paths() -> list[str]:
    """Every literal path given to ``WebSocketRoute`` in the source app."""
    paths: set[str] = set()
    for file in (REPO / "dbtkd" / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "WebSocketRoute"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                paths.add(node.args[0].value)
    return sorted(paths)


def test_the_source_declares_the_logs_stream() -> None:
    assert "/ws/logs" in websocket_paths()  # the scan below would otherwise test nothing


def open_stream(daemon: Daemon, path: str) -> tuple[int | None, int | None]:
    """Upgrade ``path`` with the token and wait for a first message.

    Returns (HTTP status of a refused upgrade, close code of an accepted stream that closed
    within ``FIRST_MESSAGE_WAIT``); (None, None) for a stream that is open and serving.
    """
    try:
        with connect(
            f"ws://127.0.0.1:{daemon.port}{path}",
            subprotocols=["dbtk.v1", f"dbtk.bearer.{daemon.token}"],  # type: ignore[list-item]
            open_timeout=10,
        ) as socket:
            assert socket.subprotocol == "dbtk.v1"
            try:
                socket.recv(timeout=FIRST_MESSAGE_WAIT)
            except TimeoutError:
                pass  # no snapshot yet, but open: the handler runs
            except ConnectionClosed as closed:
                return None, closed.rcvd.code if closed.rcvd else None
    except InvalidStatus as refused:
        return refused.response.status_code, None
    return None, None


@pytest.mark.parametrize("path", websocket_paths())
def test_every_stream_handler_answers_in_the_frozen_worker(daemon: Daemon, path: str) -> None:
    refused, close_code = open_stream(daemon, path)
    # A stream that needs parameters may refuse a bare upgrade, but never with a 5xx, and an
    # accepted one must not close for an internal error (what a failed import looks like).
    assert refused is None or refused < 500, refused
    assert close_code != INTERNAL_ERROR
    status, _, body = daemon.http("GET", "/api/v1/status")
    assert status == 200, body
    assert not daemon.status()["restarts"], f"the worker died serving {path}"


def test_frozen_selftest_report_names_the_interpreter_it_ran_in() -> None:
    _, out, _ = selftest()
    report = json.loads(out)
    assert os.path.realpath(report["executable"]) == os.path.realpath(DBTKD)
    assert report["executable"] != sys.executable


def test_the_frozen_worker_writes_the_analytics_pdf(daemon: Daemon, tmp_path: Path) -> None:
    """ReportLab (and the part of Pillow it loads) is imported only when a report is asked for:
    only asking for one shows the bundle has all of it."""
    import io

    from pypdf import PdfReader

    profile = {"name": "frozen report", "db_type": "sqlite", "database": str(tmp_path / "r.db")}
    headers = {"Content-Type": "application/json"}
    status, _, body = daemon.http(
        "POST", "/api/v1/connections", body=json.dumps(profile).encode(), headers=headers
    )
    assert status == 201, body
    connection = json.loads(body)["id"]
    status, _, body = daemon.http(
        "GET", f"/api/v1/analytics/connections/{connection}/export-pdf", timeout=30
    )
    assert status == 200, body[:300]
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(body)).pages)
    assert "DB Toolkit analytics: frozen report" in text
