"""Control protocol v1: newline-delimited JSON requests, replies and events, with no I/O.

This module turns bytes into ``Request`` objects (or a ``RequestError`` carrying the exact
error code of DESIGN §4) and replies/events back into bytes. ``LineFramer`` splits a byte
stream into lines and enforces the line limit. Nothing here touches a socket, so every bad
input the daemon must survive is tested as a plain function call. ``dbtkctl`` imports it, so
it is stdlib only.
"""

from __future__ import annotations

import json
import math

TYPE_CHECKING = False  # typing costs dbtkctl ~2 ms at start-up; only annotations need it
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1

# A request is a handful of fields; 64 KiB is far beyond any legitimate line and small enough
# that a hostile client cannot make the daemon buffer much per connection.
MAX_LINE_BYTES = 64 * 1024

# Error codes (DESIGN §4).
PARSE_ERROR = "parse_error"
INVALID_REQUEST = "invalid_request"
UNKNOWN_COMMAND = "unknown_command"
INVALID_PARAMS = "invalid_params"
LINE_TOO_LONG = "line_too_long"
BUSY = "busy"
FORBIDDEN = "forbidden"
NOT_READY = "not_ready"

ERRORS_THAT_CLOSE = frozenset({LINE_TOO_LONG, BUSY, FORBIDDEN})

# Parameters each command accepts: name -> (accepted types, required). Booleans are ints in
# Python, so they are excluded from numeric parameters explicitly in ``_check_type``.
Number = (int, float)
COMMANDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hello": {"client": ((str,), False)},
    "status": {},
    "port": {},
    "stop": {"timeout": (Number, False), "wait": ((bool,), False)},
    "restart": {},
    "logs": {"lines": ((int,), False), "follow": ((bool,), False)},
    "attach": {"name": ((str,), True), "pid": ((int,), True)},
    "metrics": {},
    "handoff": {"version": ((str,), True), "nonce": ((str,), False)},
}


class Request:
    """A decoded, validated request; ``args`` holds every field but ``id`` and ``cmd``."""

    __slots__ = ("args", "cmd", "id")

    def __init__(self, id: int | str | None, cmd: str, args: dict[str, Any]) -> None:
        self.id = id
        self.cmd = cmd
        self.args = args


class RequestError(Exception):
    """A line that cannot be served; ``code`` is one of the protocol error codes."""

    def __init__(self, code: str, message: str, id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


class LineTooLong(RequestError):
    def __init__(self) -> None:
        super().__init__(
            LINE_TOO_LONG, f"request line exceeds {MAX_LINE_BYTES} bytes; connection closed"
        )


class LineFramer:
    """Splits a byte stream into lines (LF, with an optional CR stripped)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete lines in ``data``; raise ``LineTooLong`` past the limit."""
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self._max_line:
                raise LineTooLong()
            line = bytes(self._buffer[start:end])
            lines.append(line[:-1] if line.endswith(b"\r") else line)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self._max_line:
            raise LineTooLong()
        return lines

    @property
    def pending(self) -> int:
        """Bytes received after the last newline (a request in progress)."""
        return len(self._buffer)


def _refuse_constant(name: str) -> Any:
    raise RequestError(PARSE_ERROR, f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


class _DuplicateKey(Exception):
    pass


def _check_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def decode_request(line: bytes) -> Request:
    """Decode one line (without its newline) into a validated ``Request``."""
    if not line.strip():
        raise RequestError(INVALID_REQUEST, "empty line; expected a JSON object with 'cmd'")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(PARSE_ERROR, f"line is not valid UTF-8 ({exc.reason})") from None
    try:
        message = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates
        )
    except _DuplicateKey as exc:
        raise RequestError(INVALID_REQUEST, f"duplicate key {exc.args[0]!r}") from None
    except RecursionError:
        raise RequestError(PARSE_ERROR, "JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise RequestError(PARSE_ERROR, f"invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RequestError(INVALID_REQUEST, f"expected a JSON object, got {type(message).__name__}")
    request_id = message.pop("id", None)
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, (int, str))
    ):
        raise RequestError(INVALID_REQUEST, "'id' must be an integer or a string")
    cmd = message.pop("cmd", None)
    if cmd is None:
        raise RequestError(INVALID_REQUEST, "missing 'cmd'", request_id)
    if not isinstance(cmd, str):
        raise RequestError(INVALID_REQUEST, "'cmd' must be a string", request_id)
    spec = COMMANDS.get(cmd)
    if spec is None:
        known = ", ".join(sorted(COMMANDS))
        raise RequestError(
            UNKNOWN_COMMAND, f"unknown command {cmd[:64]!r}; known: {known}", request_id
        )
    for name, value in message.items():
        if name not in spec:
            raise RequestError(
                INVALID_PARAMS, f"{cmd}: unexpected parameter {name[:64]!r}", request_id
            )
        types, _ = spec[name]
        if not _check_type(value, types):
            raise RequestError(
                INVALID_PARAMS,
                f"{cmd}: {name!r} must be {_type_names(types)}, got {type(value).__name__}",
                request_id,
            )
    for name, (_, required) in spec.items():
        if required and name not in message:
            raise RequestError(INVALID_PARAMS, f"{cmd}: missing {name!r}", request_id)
    return Request(id=request_id, cmd=cmd, args=message)


def opens_stream(request: Request) -> bool:
    """Does this request keep its connection for events (or, ``handoff``, more lines)?"""
    return request.cmd in ("attach", "handoff") or (
        request.cmd == "logs" and request.args.get("follow") is True
    )


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def encode_reply(request_id: int | str | None, result: Any, daemon: dict[str, Any]) -> bytes:
    return _dump({"id": request_id, "ok": True, "result": result, "daemon": daemon})


def encode_error(
    request_id: int | str | None, code: str, message: str, daemon: dict[str, Any]
) -> bytes:
    return _dump(
        {
            "id": request_id,
            "ok": False,
            "error": {"code": code, "message": message},
            "daemon": daemon,
        }
    )


def encode_event(request_id: int | str | None, event: str, fields: dict[str, Any]) -> bytes:
    return _dump({"id": request_id, "event": event, **fields})


def encode_request(request_id: int | str, cmd: str, **args: Any) -> bytes:
    return _dump({"id": request_id, "cmd": cmd, **args})


def decode_message(line: bytes) -> dict[str, Any]:
    """Decode a reply or event line (client side); raises ValueError on garbage."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object from the daemon, got {line[:80]!r}")
    return message
