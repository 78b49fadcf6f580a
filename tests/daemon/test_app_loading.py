"""The worker serves before it has imported the app (``dbtkd.app.loading``; issue 18 item 3).

With real processes: /health answers, behind the same gate, while the app is held from
loading (test fault ``hold_app_load``); a request for the app waits and gets the app's answer
once it loads, not a refusal; a worker whose app fails to load exits, is replaced, and a healed
one serves. Without a server: the modules ``serve`` needs before it serves include neither
Starlette's app nor a route module, and answering /health while loading imports neither
Starlette's responses nor anyio's event-loop backend.
"""

from __future__ import annotations

import ast
import http.client
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from dbtkd.app.loading import RELEASE_FILE
from dbtkd.wire import EXIT_APP_LOAD
from tests.support import ProcessReaper, control_call, env_for, run_ctl, wait_until

ROOT = Path(__file__).resolve().parents[2]
# Loaded only in LoadingApp's thread: a cold start does not wait for them.
LATE_MODULES = {
    "starlette.applications",
    "starlette.routing",
    "starlette.responses",
    "dbtkd.app.application",
    "dbtkd.app.routes",
    "dbtkd.app.jobs",
    "dbtkd.app.queries",
    "dbtkd.app.backups",
}


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_health_answers_while_the_app_loads_and_other_requests_wait_for_it(
    home: Path, reaper: ProcessReaper
) -> None:
    # reaper.start returns once the supervisor saw the worker ready: with the app held.
    env = env_for(home, DBTK_TEST_FAULTS="hold_app_load")
    daemon = reaper.start(home, env=env, loaded=False)
    data_dir = Path(control_call(home, "status")["data_dir"])
    assert not (data_dir / RELEASE_FILE).exists()
    assert get(daemon.port, "/health", {}) == (200, b'{"status":"ok"}')
    # The gate is up: a hostile Host is refused now, and identically once the app is loaded.
    hostile = {"Host": f"evil.example:{daemon.port}"}
    refused_while_loading = get(daemon.port, "/health", hostile)
    assert refused_while_loading[0] in (400, 403, 421), refused_while_loading

    token = {"Authorization": f"Bearer {daemon.token}"}
    answers: list[tuple[int, bytes]] = []
    held = threading.Thread(
        target=lambda: answers.append(get(daemon.port, "/api/v1/status", token))
    )
    held.start()
    try:
        (data_dir / RELEASE_FILE).touch()
    finally:
        held.join(timeout=30)
    assert not held.is_alive(), "the held request never got an answer"
    ((status, body),) = answers
    assert status == 200, body  # the app's answer, not a refusal
    assert json.loads(body)["worker_pid"] == daemon.worker_pid

    assert get(daemon.port, "/health", {}) == (200, b'{"status":"ok"}')  # now the app's route
    assert get(daemon.port, "/health", hostile) == refused_while_loading


def test_a_worker_whose_app_never_loads_backs_off_to_failed_and_a_healed_one_serves(
    home: Path, reaper: ProcessReaper
) -> None:
    # Each worker answers the readiness probe, then fails to load its app: failed starts
    # (backoff, then failed, as crash_on_start), not a loop of instant restarts.
    faults = home / "faults"
    faults.write_text("fail_app_load\n")
    proc = reaper.spawn(home, env=env_for(home, DBTK_TEST_FAULTS_FILE=str(faults)))

    def failed() -> dict[str, Any] | None:
        try:
            status = control_call(home, "status")
        except OSError:
            return None  # the control socket is not up yet
        return status if status["state"] == "failed" else None

    status = wait_until(failed, timeout=30, what="failed after repeated app load failures")
    assert status is not None
    assert status["error"]["exit"] == f"exited with status {EXIT_APP_LOAD}", status["error"]
    assert status["restarts"] == {}, status["restarts"]  # no serving worker died
    log = (home / "logs" / "dbtkd.log").read_text(encoding="utf-8")
    assert "could not load the app; the worker exits" in log
    assert "test fault fail_app_load" in log

    faults.write_text("")  # read at every spawn: the next worker loads
    assert run_ctl(home, "restart", env=env_for(home)).code == 0
    status = control_call(home, "status")
    assert status["state"] == "running"
    reaper.track(status["worker_pid"])
    token = {"Authorization": f"Bearer {control_call(home, 'port')['token']}"}
    code, body = get(status["port"], "/api/v1/status", token)
    assert code == 200, body
    assert json.loads(body)["worker_pid"] == status["worker_pid"]
    assert proc.poll() is None  # the supervisor rode it out


def serve_imports() -> list[str]:
    """The import statements of ``dbtkd.worker.serve`` itself, not of functions inside it."""
    tree = ast.parse((ROOT / "dbtkd" / "worker.py").read_text(encoding="utf-8"))
    (serve,) = [n for n in tree.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "serve"]
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(ast.unparse(child))
            visit(child)

    visit(serve)
    return found


def run_fresh(script: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def test_the_worker_serves_without_importing_starlettes_app_or_any_route() -> None:
    imports = serve_imports()
    assert any("LoadingApp" in i for i in imports), imports  # the check is not empty
    loaded = run_fresh(
        """
        import json, sys
        import dbtkd.worker
        exec(sys.argv[1])
        print(json.dumps(sorted(sys.modules)))
        """,
        "\n".join(imports),
    )
    assert "hypercorn.asyncio.run" in loaded
    assert LATE_MODULES.isdisjoint(loaded), sorted(LATE_MODULES.intersection(loaded))


def test_answering_health_while_loading_imports_neither_responses_nor_anyios_loop() -> None:
    # A real ASGI call of LoadingApp before any lifespan: nothing is loading, nothing loads.
    loaded = run_fresh(
        """
        import asyncio, json, sys
        from dbtkd.app.config import AppConfig
        from dbtkd.app.loading import LoadingApp

        async def main():
            config = AppConfig(
                token="t" * 43, port=8000, allowed_origins=(), version="0", daemon_pid=1,
                daemon_started_at=0, worker_started_at=0, worker_restarts=0,
                log_file="/nonexistent/dbtkd.log", data_dir="/nonexistent",
            )
            app = LoadingApp(config, build=lambda: None)
            sent = []
            scope = {
                "type": "http", "method": "GET", "path": "/health", "raw_path": b"/health",
                "query_string": b"", "headers": [(b"host", b"127.0.0.1:8000")],
                "scheme": "http", "http_version": "1.1",
            }

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                sent.append(message)

            await app(scope, receive, send)
            assert sent[0]["status"] == 200, sent
            assert sent[1]["body"] == b'{"status":"ok"}', sent

        asyncio.run(main())
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert "dbtkd.app.security" in loaded
    late = {"anyio._backends._asyncio", *LATE_MODULES}
    assert late.isdisjoint(loaded), sorted(late.intersection(loaded))
