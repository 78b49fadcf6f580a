"""AI and issue reporting (UI-CONTRACT §11, §12; issue 14) against a real daemon and a real HTTP
server this test starts on 127.0.0.1, speaking each provider's wire format: Cloudflare's
``/accounts/<id>/ai/run/<model>``, an OpenAI-compatible ``/v1/chat/completions``, Resend's
``/emails`` and GitHub's ``/repos/<owner>/<name>/issues``. Success, a refusal, a timeout and a
malformed answer for each; the key never in an answer, the log or ``dbtkctl status``. Nothing
leaves the machine. On 4ca2263 all three routes were 404.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon

KEY = "sk-test-7f3a9c-never-shown"
ACCOUNT = "acct-1234"
ANSWER = "Here it is:\n```sql\nSELECT id, name FROM people LIMIT 100;\n```\nIt lists people."
ANALYSIS = (
    "OVERVIEW\nPeople and their e-mail.\nDESIGN PATTERNS\n- surrogate key\nRELATIONSHIPS\n"
    "- none\nISSUES\n- email not unique\nRECOMMENDATIONS\n- add a unique index\nINDEXES\n"
    "- CREATE UNIQUE INDEX people_email ON people (email)\nCOMMON QUERIES\n"
    "1. SELECT * FROM people WHERE email = ?"
)
UI_LIST_FIELDS = (
    "design_patterns",
    "relationships",
    "optimization_suggestions",
    "index_suggestions",
    "common_queries",
    "potential_issues",
)


class Provider(BaseHTTPRequestHandler):
    """Answers like the real services; ``mode`` says how (ok, refuse, slow, garbage)."""

    mode = "ok"
    text = ANSWER
    seen: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Provider.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if Provider.mode == "slow":
            time.sleep(2.5)
        if Provider.mode == "refuse":
            self._send(401, {"errors": [{"message": "Authentication error"}], "success": False})
        elif Provider.mode == "garbage":
            raw = b"<html>gateway</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        elif "/ai/run/" in self.path:
            self._send(200, {"result": {"response": Provider.text}, "success": True})
        elif self.path.endswith("/chat/completions"):
            self._send(200, {"choices": [{"message": {"content": Provider.text}}]})
        elif self.path.endswith("/emails"):
            self._send(200, {"id": "mail-1"})
        else:
            self._send(201, {"number": 7, "html_url": "https://github.com/o/r/issues/7"})

    def _send(self, status: int, document: dict[str, Any]) -> None:
        raw = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def provider() -> Iterator[str]:
    Provider.mode, Provider.text, Provider.seen = "ok", ANSWER, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def configure(daemon: Daemon, text: str, mode: int = 0o600) -> None:
    path = daemon.home / "config" / "dbtkd.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def call(daemon: Daemon, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, raw = daemon.http(
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert KEY not in raw.decode("utf-8", "replace")
    return status, json.loads(raw)


def people_connection(daemon: Daemon, tmp_path: Path) -> str:
    profile = {"name": "ai", "db_type": "sqlite", "database": str(tmp_path / "ai.db")}
    status, created = call(daemon, "/api/v1/connections", profile)
    assert status == 201, created
    query = "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT)"
    status, ran = call(daemon, f"/api/v1/connections/{created['id']}/query", {"query": query})
    assert ran["success"], ran
    return str(created["id"])


def ai_table(provider_url: str, kind: str, timeout: float = 20) -> str:
    if kind == "cloudflare":
        return (
            f'[ai]\nprovider = "cloudflare"\nbase_url = "{provider_url}/client/v4"\n'
            f'account_id = "{ACCOUNT}"\napi_key = "{KEY}"\ntimeout = {timeout}\n'
        )
    return (
        f'[ai]\nprovider = "openai"\nbase_url = "{provider_url}/v1"\nmodel = "llama3"\n'
        f'api_key = "{KEY}"\ntimeout = {timeout}\n'
    )


def test_without_configuration_every_outside_call_is_503_saying_what_to_set(
    daemon: Daemon, tmp_path: Path
) -> None:
    connection = people_connection(daemon, tmp_path)
    status, refused = call(
        daemon,
        "/api/v1/ai/query/generate",
        {"connection_id": connection, "natural_language": "all people", "schema_context": {}},
    )
    assert status == 503, refused
    assert refused["detail"].startswith("AI is not configured: set [ai] in dbtkd.toml")
    status, refused = call(
        daemon,
        "/api/v1/ai/schema/analyze",
        {"connection_id": connection, "table_name": "people", "columns": []},
    )
    assert status == 503, refused
    report = {"title": "t", "description": "d", "issue_type": "bug", "environment": {}}
    status, refused = call(daemon, "/api/v1/issues", report)
    assert status == 503, refused
    assert refused["detail"].startswith("issue reporting is not configured")
    status_doc = json.loads(daemon.ctl("status", "--json").out)
    assert status_doc["ai"] == {"configured": False}
    assert status_doc["issues"] == {"configured": False}


@pytest.mark.parametrize("kind", ["cloudflare", "openai"])
def test_generate_through_each_provider(
    daemon: Daemon, tmp_path: Path, provider: str, kind: str
) -> None:
    connection = people_connection(daemon, tmp_path)
    configure(daemon, ai_table(provider, kind))
    body = {
        "connection_id": connection,
        "natural_language": "list everyone",
        # What the UI sends: the daemon describes the schema itself and ignores this.
        "schema_context": {"tables": {"main": {"tables": {"from_the_request": {}}}}},
    }
    status, answer = call(daemon, "/api/v1/ai/query/generate", body)
    assert status == 200, answer
    assert answer["success"] is True
    assert answer["sql"] == "SELECT id, name FROM people LIMIT 100;"
    (sent,) = Provider.seen
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    if kind == "cloudflare":
        assert (
            sent["path"] == f"/client/v4/accounts/{ACCOUNT}/ai/run/@cf/meta/llama-3.1-70b-instruct"
        )
    else:
        assert sent["path"] == "/v1/chat/completions"
        assert sent["body"]["model"] == "llama3"
    prompt = sent["body"]["messages"][1]["content"]
    assert "main.people(id INTEGER, name TEXT, email TEXT)" in prompt
    assert "from_the_request" not in prompt
    assert "list everyone" in prompt
    log = (daemon.home / "logs" / "dbtkd.log").read_text()
    assert "list everyone" not in log  # nothing of a prompt is logged
    assert KEY not in log
    status_doc = daemon.ctl("status", "--json")
    assert KEY not in status_doc.out
    assert json.loads(status_doc.out)["ai"]["configured"] is True
    assert KEY not in daemon.ctl("status").out


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("refuse", "refused the request (HTTP 401): Authentication error"),
        ("slow", "did not answer within 1 s"),
        ("garbage", "not JSON"),
    ],
)
@pytest.mark.parametrize("kind", ["cloudflare", "openai"])
def test_a_failing_provider_is_502_with_its_reason_never_a_cached_200(
    daemon: Daemon, tmp_path: Path, provider: str, kind: str, mode: str, words: str
) -> None:
    connection = people_connection(daemon, tmp_path)
    configure(daemon, ai_table(provider, kind, timeout=1))
    Provider.mode = mode
    for path, body in (
        ("/api/v1/ai/query/generate", {"connection_id": connection, "natural_language": "x"}),
        (
            "/api/v1/ai/schema/analyze",
            {"connection_id": connection, "table_name": "people", "columns": []},
        ),
    ):
        status, failed = call(daemon, path, body)
        assert status == 502, failed
        assert failed["error"] == "ai_failed"
        assert words in failed["detail"]


def test_analysis_fills_the_uis_fields_from_both_callers(
    daemon: Daemon, tmp_path: Path, provider: str
) -> None:
    connection = people_connection(daemon, tmp_path)
    configure(daemon, ai_table(provider, "openai"))
    Provider.text = ANALYSIS
    columns = [{"column_name": "id", "data_type": "INTEGER"}, {"name": "email", "type": "TEXT"}]
    status, schema_page = call(
        daemon,
        "/api/v1/ai/schema/analyze",
        {"connection_id": connection, "table_name": "people", "columns": columns},
    )
    assert status == 200, schema_page
    # TableDetails.js's swapped arguments: (schema, table) where (table, columns) belong.
    status, table_page = call(
        daemon,
        "/api/v1/ai/schema/analyze",
        {"connection_id": connection, "table_name": "main", "columns": "people"},
    )
    assert status == 200, table_page
    for answer in (schema_page, table_page):
        assert answer["summary"] == "People and their e-mail."
        assert answer["potential_issues"] == ["email not unique"]
        assert answer["common_queries"] == ["SELECT * FROM people WHERE email = ?"]
        for field in UI_LIST_FIELDS:
            assert all(isinstance(item, str) for item in answer[field]), field
    prompts = [sent["body"]["messages"][1]["content"] for sent in Provider.seen]
    assert "Table: people(id INTEGER, email TEXT)" in prompts[0]
    assert "Table: people(id INTEGER, name TEXT, email TEXT)" in prompts[1]  # from metadata


def test_issue_reports_go_by_mail_or_to_github_escaped(daemon: Daemon, provider: str) -> None:
    report = {
        "title": "Crash <script>alert(1)</script>",
        "description": "Steps:\n1. open @octocat <b>x</b>",
        "issue_type": "bug",
        "environment": {"os": "Linux", "version": "0.1.0"},
    }
    configure(
        daemon,
        f'[issues]\nprovider = "resend"\nbase_url = "{provider}"\napi_key = "{KEY}"\n'
        'to = "team@example.org"\n',
    )
    status, sent = call(daemon, "/api/v1/issues", report)
    assert status == 200, sent
    assert sent["status"] == "open"
    mail = Provider.seen[-1]
    assert mail["path"] == "/emails"
    assert mail["body"]["to"] == ["team@example.org"]
    assert "<script>" not in mail["body"]["html"]
    assert "&lt;script&gt;" in mail["body"]["html"]

    configure(
        daemon,
        f'[issues]\nprovider = "github"\nbase_url = "{provider}"\ntoken = "{KEY}"\n'
        'repository = "o/r"\n',
    )
    status, sent = call(daemon, "/api/v1/issues", report)
    assert status == 200, sent
    assert sent["url"] == "https://github.com/o/r/issues/7"
    issue = Provider.seen[-1]
    assert issue["path"] == "/repos/o/r/issues"
    assert issue["body"]["title"] == "[bug] Crash <script>alert(1)</script>"  # a title is text
    assert "<b>" not in issue["body"]["body"]
    assert "@octocat" not in issue["body"]["body"]  # no mention pings anyone

    Provider.mode = "refuse"
    status, refused = call(daemon, "/api/v1/issues", report)
    assert status == 502, refused
    assert refused["detail"].startswith("the report was not sent: GitHub refused the request")


def test_a_key_in_a_file_others_can_read_is_refused(
    daemon: Daemon, tmp_path: Path, provider: str
) -> None:
    connection = people_connection(daemon, tmp_path)
    configure(daemon, ai_table(provider, "openai"), mode=0o644)
    body = {"connection_id": connection, "natural_language": "x"}
    status, refused = call(daemon, "/api/v1/ai/query/generate", body)
    assert status == 503, refused
    assert "others can read it (mode 0644): run chmod 600" in refused["detail"]
    assert Provider.seen == []
