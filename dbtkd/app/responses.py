"""The one shape of every error the app answers: ``{"error": code, "detail": sentence}``.

``error`` is a stable snake_case code a client can branch on; ``detail`` says what was
expected and what arrived, for a human. The security middleware (raw ASGI) and the routes
(Starlette responses) both build their bodies here so the two never drift apart. Nothing
here ever includes the token: callers describe what arrived, they do not echo credentials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.responses import JSONResponse

# Enough of a header value or path to recognise it; a hostile megabyte is not mirrored back.
MAX_ECHO_CHARS = 80


def error_document(error: str, detail: str) -> bytes:
    """The JSON body of an error response, encoded."""
    return json.dumps({"error": error, "detail": detail}, ensure_ascii=False).encode("utf-8")


def describe(value: str | bytes) -> str:
    """A quoted, length-capped rendering of a client-supplied value for an error detail."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if len(text) > MAX_ECHO_CHARS:
        text = text[:MAX_ECHO_CHARS] + "..."
    return repr(text)


def error_response(
    status_code: int,
    error: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response in the app's one error shape, for the routes."""
    # Imported here, not above: the gate imports this module and serves /health while the
    # worker is still loading Starlette's responses (dbtkd.app.loading).
    from starlette.responses import JSONResponse

    return JSONResponse({"error": error, "detail": detail}, status_code, headers)
