"""One HTTP call to a service outside the machine (an AI provider, a mail API, GitHub), made
with the standard library in a worker thread, so no client library is needed for four JSON
POSTs. Every failure becomes ``ServiceError`` with a sentence for the UI (its ``detail``): the
service's own message when it gave one, never the key (it is cut out of anything shown), never
the request body (the prompt is not logged either).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread
from starlette.requests import Request

from dbtkd.app.endpoints import ApiError
from dbtkd.errors import ConfigError

# What of a refusal's body is shown: enough for "invalid token" or "model not found".
MAX_ERROR_CHARS = 300
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class ServiceError(Exception):
    """The service failed, refused or answered nonsense (the route answers 502)."""


def configured(
    request: Request, read: Callable[[str, Mapping[str, str]], Any], code: str, unset: str
) -> Any:
    """The service's configuration (``services.ai_config`` or ``issues_config``), read now
    from the daemon's ``dbtkd.toml`` and environment; 503 ``code`` with ``unset`` (what to
    set) if there is none, or with the file's mistake."""
    try:
        config = read(request.app.state.config.config_file, os.environ)
    except ConfigError as error:
        raise ApiError(503, code, str(error)) from None
    if config is None:
        raise ApiError(503, code, unset)
    return config


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<key>")
    return text


def _refusal(status: int, raw: bytes) -> str:
    """The service's own words, from the usual JSON error shapes, else its text."""
    text = raw.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except ValueError:
        return text.strip()[:MAX_ERROR_CHARS] or f"HTTP {status}"
    if isinstance(document, dict):
        error = document.get("error") or document.get("errors") or document.get("message")
        if isinstance(error, dict):
            error = error.get("message") or error
        if isinstance(error, list) and error and isinstance(error[0], dict):
            error = error[0].get("message") or error[0]
        if error:
            return str(error)[:MAX_ERROR_CHARS]
    return text.strip()[:MAX_ERROR_CHARS]


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "dbtkd", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read(MAX_ANSWER_BYTES))


async def post_json(
    service: str,
    url: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str],
    time_limit: float,
    secrets: tuple[str, ...] = (),
) -> Any:
    """POST ``body`` as JSON and return the decoded answer, or raise ``ServiceError``."""
    if not url.startswith(("https://", "http://")):
        raise ServiceError(f"{service}: expected an http(s) base_url; got {url!r:.80}")
    try:
        # The limit is the socket's (connect, and each read), so the thread always returns.
        return await anyio.to_thread.run_sync(_post, url, body, headers, time_limit)
    except urllib.error.HTTPError as error:
        words = _redact(_refusal(error.code, error.read(MAX_ERROR_CHARS * 4)), secrets)
        raise ServiceError(f"{service} refused the request (HTTP {error.code}): {words}") from None
    except TimeoutError:
        raise ServiceError(f"{service} did not answer within {time_limit:g} s") from None
    except urllib.error.URLError as error:
        reason = _redact(str(error.reason), secrets)
        if isinstance(error.reason, TimeoutError):
            reason = f"no answer within {time_limit:g} s"
        raise ServiceError(f"{service} could not be reached: {reason}") from None
    except ValueError:
        raise ServiceError(f"{service} answered with something that is not JSON") from None
    except OSError as error:
        raise ServiceError(f"{service} could not be reached: {error.strerror or error}") from None
