"""``POST /api/v1/issues``: a problem report from the UI, delivered where ``[issues]`` in
``dbtkd.toml`` says (UI-CONTRACT §12.1, D11): an e-mail through Resend's API, as the old
backend sent, or a GitHub issue in the configured repository.

Delivered only when configured: otherwise 503 with ``detail`` (the UI shows it), and a refusal
or a timeout of the service is 502 with its reason. The old backend said "submitted" whatever
happened. Every value the user typed is escaped for where it goes (HTML in the mail; in the
GitHub issue, HTML and ``@`` mentions are neutralised, so a report cannot ping people or inject
markup).
"""

from __future__ import annotations

import datetime
import html
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.endpoints import ApiError, JSONResponse, invalid, read_object
from dbtkd.app.outbound import ServiceError, configured, post_json
from dbtkd.services import IssuesConfig, issues_config

ISSUE_TYPES = ("bug", "feature", "question", "documentation")
MAX_TITLE_CHARS = 200
MAX_DESCRIPTION_CHARS = 20_000
NOT_CONFIGURED = (
    'issue reporting is not configured: set [issues] in dbtkd.toml (provider = "github" with '
    'token and repository = "owner/name", or provider = "resend" with api_key and to), or '
    "RESEND_API_KEY and ISSUE_EMAIL in the daemon's environment"
)


def _text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"expected {name} to be text; got {value!r:.40}")
    return value.strip()[:limit]


def _environment(body: dict[str, Any]) -> dict[str, str]:
    raw = body.get("environment")
    if not isinstance(raw, dict):
        return {}
    return {str(k)[:40]: str(v)[:300] for k, v in list(raw.items())[:10]}


def _mail_html(report: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in report["environment"].items()
    )
    description = e(report["description"]).replace("\n", "<br>")
    return (
        f"<h2>[{e(report['issue_type'].upper())}] {e(report['title'])}</h2>"
        f"<p>{description}</p><table>{rows}</table>"
        f"<p>id {e(report['id'])}, {e(report['created_at'])}</p>"
    )


def _github_text(text: str) -> str:
    # HTML escaped; "@" followed by a zero-width joiner so a name is not a mention.
    return html.escape(text).replace("@", "@\u200d")


async def _deliver(config: IssuesConfig, report: dict[str, Any]) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {config.secret}"}
    if config.provider == "github":
        environment = "\n".join(
            f"- {_github_text(k)}: {_github_text(v)}" for k, v in report["environment"].items()
        )
        answer = await post_json(
            "GitHub",
            f"{config.base_url}/repos/{config.repository}/issues",
            {
                "title": f"[{report['issue_type']}] {report['title']}",
                "body": f"{_github_text(report['description'])}\n\n{environment}\n\n"
                f"(reported from DB Toolkit, id {report['id']})",
                "labels": [report["issue_type"]],
            },
            headers=auth | {"Accept": "application/vnd.github+json"},
            time_limit=config.timeout,
            secrets=(config.secret,),
        )
        url = answer.get("html_url") if isinstance(answer, dict) else None
        if not isinstance(url, str):
            raise ServiceError("GitHub answered without the new issue's address")
        return {"url": url}
    answer = await post_json(
        "the mail service",
        f"{config.base_url}/emails",
        {
            "from": config.sender,
            "to": [config.to],
            "subject": f"[{report['issue_type'].upper()}] {report['title']}",
            "html": _mail_html(report),
        },
        headers=auth,
        time_limit=config.timeout,
        secrets=(config.secret,),
    )
    if not isinstance(answer, dict) or "id" not in answer:
        raise ServiceError("the mail service answered without a message id")
    return {}


async def report_issue(request: Request) -> Response:
    body = await read_object(request)
    issue_type = body.get("issue_type", "bug")
    if issue_type not in ISSUE_TYPES:
        raise invalid(
            f"expected issue_type one of {', '.join(ISSUE_TYPES)}; got {issue_type!r:.40}"
        )
    report = {
        "id": secrets.token_hex(8),
        "title": _text(body, "title", MAX_TITLE_CHARS),
        "description": _text(body, "description", MAX_DESCRIPTION_CHARS),
        "issue_type": issue_type,
        "environment": _environment(body),
        "status": "open",
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    config: IssuesConfig = configured(
        request, issues_config, "issues_not_configured", NOT_CONFIGURED
    )
    try:
        delivered = await _deliver(config, report)
    except ServiceError as error:
        raise ApiError(502, "issue_not_delivered", f"the report was not sent: {error}") from None
    return JSONResponse(report | delivered | {"delivered_to": config.provider})
