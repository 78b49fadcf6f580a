"""``POST /api/v1/ai/query/generate`` and ``/ai/schema/analyze`` (UI-CONTRACT §11, D11).

The provider comes from ``[ai]`` in ``dbtkd.toml`` (``dbtkd.services``), read on each request.
Not configured: 503 with the contract's ``detail``; the provider failing, timing out or
answering nonsense: 502 ``ai_failed`` with its reason, never a 200 the UI would cache (§11.2).
The schema a prompt describes is read from the daemon's own metadata connection (capped at
``MAX_TABLES`` tables of ``MAX_COLUMNS`` columns), never from the request's ``schema_context``
(the whole tree, which the UI sends, and which could say anything). Nothing of a prompt or an
answer is logged. Schema names do leave the machine for the provider configured: a local
OpenAI-compatible server (Ollama, llama.cpp) keeps them here.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from dbtkd.app.db.engine import METADATA_TIMEOUT, DatabaseError
from dbtkd.app.db.profiles import Profile
from dbtkd.app.endpoints import ApiError, JSONResponse, database_of, invalid, read_object
from dbtkd.app.outbound import ServiceError, configured, post_json
from dbtkd.services import AiConfig, ai_config

MAX_TABLES = 100
MAX_COLUMNS = 30
MAX_REQUEST_CHARS = 4000
SYSTEM_PROMPT = (
    "You are DBAssist, an expert database assistant inside DB Toolkit. Answer precisely, use "
    "only the tables and columns given, and never invent names."
)
NOT_CONFIGURED = (
    'AI is not configured: set [ai] in dbtkd.toml (provider = "cloudflare" with account_id '
    'and api_key, or provider = "openai" with base_url and model, e.g. a local Ollama), or '
    "CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN in the daemon's environment"
)
SQL_START = re.compile(
    r"^\s*(SELECT|WITH|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|EXPLAIN|SHOW)\b", re.I
)
FENCE = re.compile(r"```(?:sql|SQL)?\s*\n(.*?)```", re.S)
# Sections the analysis prompt asks for, and the UI's field each fills (§11.2).
SECTIONS = {
    "OVERVIEW": "summary",
    "DESIGN PATTERNS": "design_patterns",
    "RELATIONSHIPS": "relationships",
    "ISSUES": "potential_issues",
    "RECOMMENDATIONS": "optimization_suggestions",
    "INDEXES": "index_suggestions",
    "COMMON QUERIES": "common_queries",
}


def _config(request: Request) -> AiConfig:
    """``[ai]`` of the daemon's ``dbtkd.toml``, read now (an edit needs no restart)."""
    config: AiConfig = configured(request, ai_config, "ai_not_configured", NOT_CONFIGURED)
    return config


async def complete(config: AiConfig, prompt: str) -> str:
    """The model's answer to ``prompt``, or ``ServiceError``."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]
    auth = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    secrets = (config.api_key, config.account_id)
    if config.provider == "cloudflare":
        url = f"{config.base_url}/accounts/{config.account_id}/ai/run/{config.model}"
        body = {
            "messages": messages,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        answer = await post_json(
            "Cloudflare Workers AI",
            url,
            body,
            headers=auth,
            time_limit=config.timeout,
            secrets=secrets,
        )
        text = (answer.get("result") or {}).get("response") if isinstance(answer, dict) else None
    else:
        url = f"{config.base_url}/chat/completions"
        body = {
            "model": config.model,
            "messages": messages,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        answer = await post_json(
            "the AI provider", url, body, headers=auth, time_limit=config.timeout, secrets=secrets
        )
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
    if not isinstance(text, str) or not text.strip():
        raise ServiceError("the AI provider answered without any text (unexpected format)")
    return text


async def ask(config: AiConfig, prompt: str) -> str:
    """``complete``, its failure as the route's 502 (never a 200 the UI would cache)."""
    try:
        return await complete(config, prompt)
    except ServiceError as error:
        raise ApiError(502, "ai_failed", str(error)) from None


async def _schema_text(request: Request, profile: Profile) -> str:
    """The connection's schema as prompt lines, from the daemon's own metadata, capped."""
    database = database_of(request)
    try:
        async with database.sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
            schemas = await engine.schema()
    except DatabaseError as error:
        raise ApiError(502, "db_unavailable", error.message) from None
    lines: list[str] = []
    count = 0
    for schema in schemas:
        for table in schema.get("tables") or []:
            if count == MAX_TABLES:
                lines.append(f"... (more tables left out after {MAX_TABLES})")
                return "\n".join(lines)
            count += 1
            columns = table.get("columns") or []
            shown = ", ".join(
                f"{c['name']} {c.get('type', '')}".strip() for c in columns[:MAX_COLUMNS]
            )
            more = (
                f", ... ({len(columns) - MAX_COLUMNS} more)" if len(columns) > MAX_COLUMNS else ""
            )
            lines.append(f"{schema.get('name')}.{table.get('name')}({shown}{more})")
    return "\n".join(lines) or "(no tables)"


def extract_sql(text: str) -> str | None:
    """The first fenced code block, else from the first line starting with a SQL keyword to
    its ``;`` (the old backend's rule)."""
    fenced = FENCE.search(text)
    if fenced and fenced.group(1).strip():
        return fenced.group(1).strip()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if SQL_START.match(line):
            statement = []
            for following in lines[index:]:
                statement.append(following)
                if following.rstrip().endswith(";"):
                    break
            return "\n".join(statement).strip()
    return None


async def generate(request: Request) -> Response:
    body = await read_object(request)
    wanted = body.get("natural_language")
    if not isinstance(wanted, str) or not wanted.strip():
        raise invalid("expected natural_language to be the request in words")
    profile = await database_of(request).profiles.get(str(body.get("connection_id") or ""))
    config = _config(request)
    prompt = (
        f"Database: {profile.db_type}\nSchema (schema.table(columns)):\n"
        f"{await _schema_text(request, profile)}\n\nRequest: {wanted[:MAX_REQUEST_CHARS]}\n\n"
        "Rules: answer with one SQL statement in a ```sql code block, then one sentence of "
        "explanation; use the exact table and column names above; explicit JOINs; add "
        "LIMIT 100 when no limit is asked for."
    )
    text = await ask(config, prompt)
    sql = extract_sql(text)
    if sql is None:
        return JSONResponse(
            {"success": False, "error": "the AI answered without SQL; try rephrasing the request"}
        )
    explanation = FENCE.sub("", text).strip()[:1000]
    return JSONResponse(
        {"success": True, "sql": sql, "explanation": explanation, "confidence": None}
    )


def _columns_text(columns: list[Any]) -> str:
    shown = []
    for column in columns[:MAX_COLUMNS]:
        if isinstance(column, dict):
            name = column.get("column_name") or column.get("name")
            kind = column.get("data_type") or column.get("type") or ""
            if name:
                shown.append(f"{name} {kind}".strip())
    return ", ".join(shown)


def split_sections(text: str) -> dict[str, Any]:
    """The answer's sections as the UI's fields: ``summary`` text, the rest lists of strings."""
    found: dict[str, list[str]] = {field: [] for field in SECTIONS.values()}
    current = "summary"
    for raw in text.splitlines():
        line = raw.strip()
        heading = line.strip("#*: ").upper()
        if heading in SECTIONS:
            current = SECTIONS[heading]
            continue
        item = re.sub(r"^([-*•]|\d+[.)])\s+", "", line).strip()
        if item:
            found[current].append(item)
    result: dict[str, Any] = {k: v for k, v in found.items() if k != "summary"}
    result["summary"] = " ".join(found["summary"]) or text.strip()[:2000]
    return result


async def analyze(request: Request) -> Response:
    body = await read_object(request)
    profile = await database_of(request).profiles.get(str(body.get("connection_id") or ""))
    table_name, columns = body.get("table_name"), body.get("columns")
    if not isinstance(table_name, str) or not table_name:
        raise invalid("expected table_name to be a table of the schema tree")
    if isinstance(columns, str):
        # TableDetails.js sends (schema, table) in the slots of (table, columns): read the
        # columns of that table from the daemon's own metadata.
        schema, table_name = table_name, columns
        database = database_of(request)
        try:
            async with database.sessions.use(profile, "metadata", wait=METADATA_TIMEOUT) as engine:
                entry = await engine.table(schema, table_name)
        except DatabaseError as error:
            raise ApiError(502, "db_unavailable", error.message) from None
        if entry is None:
            raise ApiError(
                404, "not_found", f"expected a table of the schema tree; got {schema}.{table_name}"
            )
        columns = entry.get("columns") or []
    if not isinstance(columns, list):
        raise invalid("expected columns to be the table's column objects")
    config = _config(request)
    prompt = (
        f"Database: {profile.db_type}\nTable: {table_name}({_columns_text(columns)})\n"
        f"Other tables:\n{await _schema_text(request, profile)}\n\n"
        "Analyze this table's design. Answer in these sections, each a heading line followed "
        "by short '-' items: OVERVIEW, DESIGN PATTERNS, RELATIONSHIPS, ISSUES, "
        "RECOMMENDATIONS, INDEXES (CREATE INDEX statements), COMMON QUERIES (SQL)."
    )
    text = await ask(config, prompt)
    return JSONResponse({"success": True, "table_name": table_name, **split_sections(text)})
