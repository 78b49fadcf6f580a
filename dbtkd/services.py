"""The services outside this machine the UI can use: an AI provider (``[ai]``) and issue
reporting (``[issues]``), each configured in ``dbtkd.toml`` (UI-CONTRACT §11, §12, D11).

Neither is needed: the daemon starts without them, and their routes then answer 503 saying
what to set. ``[ai]``: ``provider = "cloudflare"`` (Workers AI, as the old backend used:
``account_id``, ``api_key``, ``model``) or ``"openai"`` (any OpenAI-compatible chat endpoint,
``base_url`` e.g. a local Ollama or llama.cpp server so schema names stay on the machine;
``api_key`` optional there), plus ``model``, ``temperature``, ``max_tokens``, ``timeout``. The
old backend's environment variables are the fallback (``CLOUDFLARE_ACCOUNT_ID``,
``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_MODEL``, ``AI_TEMPERATURE``, ``AI_MAX_TOKENS``).
``[issues]``: ``provider = "resend"`` (mail through Resend's API: ``api_key``, ``to``) or
``"github"`` (``token``, ``repository = "owner/name"``); fallback ``RESEND_API_KEY``,
``ISSUE_EMAIL``. Every provider's ``base_url`` can be set (tests point it at a local server).

Keys stay in the user's config file (or environment): never in the bundle, never in a route's
answer or the log. A file holding a key must be readable by its owner only (0600): a key in a
file others can read is refused, as ssh refuses such a private key. The worker reads the file
again on each request, so an edit needs no restart. Stdlib only, because dbtkctl imports it
(through ``settings``, which validates the tables with ``parse_ai``/``parse_issues`` at start);
the supervisor's ``status`` describes them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dbtkd.errors import ConfigError

AI_PROVIDERS = {
    "cloudflare": "https://api.cloudflare.com/client/v4",
    "openai": "https://api.openai.com/v1",
}
ISSUE_PROVIDERS = {"resend": "https://api.resend.com", "github": "https://api.github.com"}
DEFAULT_CLOUDFLARE_MODEL = "@cf/meta/llama-3.1-70b-instruct"
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 2048
DEFAULT_TIMEOUT = 60.0  # the old backend's; a local model on a laptop can be slow
DEFAULT_FROM = "DB Toolkit <onboarding@resend.dev>"
AI_KEYS = (
    "provider",
    "base_url",
    "account_id",
    "api_key",
    "model",
    "temperature",
    "max_tokens",
    "timeout",
)
ISSUE_KEYS = ("provider", "base_url", "api_key", "token", "to", "from", "repository", "timeout")
SECRET_KEYS = ("api_key", "token")


@dataclass(frozen=True)
class AiConfig:
    provider: str
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)
    account_id: str = ""
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int = DEFAULT_MAX_TOKENS
    timeout: float = DEFAULT_TIMEOUT

    def public(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url}


@dataclass(frozen=True)
class IssuesConfig:
    provider: str
    base_url: str
    secret: str = field(repr=False)
    to: str = ""  # resend: the recipient
    sender: str = DEFAULT_FROM
    repository: str = ""  # github: owner/name
    timeout: float = DEFAULT_TIMEOUT

    def public(self) -> dict[str, Any]:
        where = self.repository if self.provider == "github" else self.to
        return {"provider": self.provider, "to": where, "base_url": self.base_url}


def _table(value: object, name: str, known: tuple[str, ...], source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: expected a table [{name}]; got {value!r:.40}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r} in [{name}]; known keys: {', '.join(known)}"
        )
    for key, item in value.items():
        if key in ("temperature", "timeout"):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
                raise ConfigError(f"{source}: {name}.{key}: expected a number >= 0, got {item!r}")
        elif key == "max_tokens":
            if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
                raise ConfigError(
                    f"{source}: {name}.{key}: expected a positive integer, got {item!r}"
                )
        elif not isinstance(item, str):
            raise ConfigError(f"{source}: {name}.{key}: expected text, got {item!r:.40}")
    return dict(value)


def _provider_table(
    value: object, name: str, known: tuple[str, ...], providers: Mapping[str, str], source: str
) -> dict[str, Any]:
    table = _table(value, name, known, source)
    provider = table.get("provider", next(iter(providers)))
    if provider not in providers:
        raise ConfigError(
            f"{source}: {name}.provider: expected one of {', '.join(providers)}, got {provider!r}"
        )
    return table


def parse_ai(value: object, source: str) -> dict[str, Any]:
    return _provider_table(value, "ai", AI_KEYS, AI_PROVIDERS, source)


def parse_issues(value: object, source: str) -> dict[str, Any]:
    return _provider_table(value, "issues", ISSUE_KEYS, ISSUE_PROVIDERS, source)


def check_private(path: str, tables: Mapping[str, Any]) -> None:
    """Refuse keys kept in a config file others can read (chmod 600 it)."""
    holds_secret = any(
        isinstance(table, dict) and any(table.get(key) for key in SECRET_KEYS)
        for table in tables.values()
    )
    if not holds_secret or not hasattr(os, "getuid"):
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} holds an API key and others can read it (mode {mode:04o}): "
            f"run chmod 600 {path}"
        )


def _read(config_file: str) -> dict[str, Any]:
    from dbtkd.settings import read_config_file

    if not config_file:
        return {}
    table = read_config_file(config_file)
    if table:
        check_private(config_file, table)
    return table


def ai_config(config_file: str, env: Mapping[str, str]) -> AiConfig | None:
    """The AI provider to use, or None if none is configured. Raises ``ConfigError``."""
    file_table = _read(config_file).get("ai")
    table = parse_ai(file_table, f"{config_file}: ai") if file_table is not None else {}
    provider = table.get("provider", "cloudflare")
    api_key = table.get("api_key") or (
        env.get("CLOUDFLARE_API_TOKEN", "") if provider == "cloudflare" else ""
    )
    account_id = table.get("account_id") or env.get("CLOUDFLARE_ACCOUNT_ID", "")
    if provider == "cloudflare" and not (api_key and account_id):
        return None  # nothing (complete) configured
    if provider == "openai" and not table.get("model"):
        raise ConfigError(f"{config_file}: ai.model: the OpenAI-compatible provider needs a model")
    model = table.get("model") or env.get("CLOUDFLARE_MODEL") or DEFAULT_CLOUDFLARE_MODEL
    return AiConfig(
        provider=provider,
        base_url=str(table.get("base_url") or AI_PROVIDERS[provider]).rstrip("/"),
        model=model,
        api_key=api_key,
        account_id=account_id,
        temperature=float(
            table.get("temperature", _env_number(env, "AI_TEMPERATURE", DEFAULT_TEMPERATURE))
        ),
        max_tokens=int(
            table.get("max_tokens", _env_number(env, "AI_MAX_TOKENS", DEFAULT_MAX_TOKENS))
        ),
        timeout=float(table.get("timeout", DEFAULT_TIMEOUT)),
    )


def issues_config(config_file: str, env: Mapping[str, str]) -> IssuesConfig | None:
    """Where issue reports go, or None if nowhere is configured. Raises ``ConfigError``."""
    file_table = _read(config_file).get("issues")
    table = parse_issues(file_table, f"{config_file}: issues") if file_table is not None else {}
    provider = table.get("provider", "resend")
    base_url = str(table.get("base_url") or ISSUE_PROVIDERS[provider]).rstrip("/")
    timeout = float(table.get("timeout", DEFAULT_TIMEOUT))
    if provider == "github":
        token, repository = (
            table.get("token") or table.get("api_key", ""),
            table.get("repository", ""),
        )
        if not token or repository.count("/") != 1:
            if table:
                raise ConfigError(
                    f"{config_file}: issues: the github provider needs token and "
                    'repository = "owner/name"'
                )
            return None
        return IssuesConfig("github", base_url, token, repository=repository, timeout=timeout)
    key = table.get("api_key") or env.get("RESEND_API_KEY", "")
    to = table.get("to") or env.get("ISSUE_EMAIL", "")
    if not (key and to):
        return None
    return IssuesConfig(
        "resend", base_url, key, to=to, sender=table.get("from", DEFAULT_FROM), timeout=timeout
    )


def _env_number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        return default


def describe(config_file: str, env: Mapping[str, str]) -> dict[str, Any]:
    """For ``status``: what is configured, never a key; a broken table says why."""
    out: dict[str, Any] = {}
    for name, read in (("ai", ai_config), ("issues", issues_config)):
        try:
            found = read(config_file, env)
        except ConfigError as error:
            out[name] = {"configured": False, "error": str(error)}
            continue
        out[name] = {"configured": found is not None} | (found.public() if found else {})
    return out
