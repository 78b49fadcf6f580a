"""A JSON body whose one big string is read in pieces, so a 64 MiB CSV import is held once.

``POST /api/v1/csv/import`` carries the whole file as the ``csv_content`` string of a flat JSON
object (UI-CONTRACT §6.2). Decoding it like any body would hold it three times at once: the
bytes, the decoder's work buffer and the finished string. ``read_with_text`` keeps the bytes
only: it finds the big string's extent with a byte-level scan of the object (keys, strings,
numbers, ``true``/``false``/``null``), and ``TextPieces`` decodes it a piece at a time, each
piece cut right after an escaped newline (``\\n``), so no escape, no UTF-8 sequence and no CSV
line is ever split. A body this scanner does not take (nested values, a duplicate key) goes to
the API's ordinary parser, which answers it in the usual way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from dbtkd.app.endpoints import ApiError, parse_object
from dbtkd.app.jsontext import lone_surrogate_path

PIECE_BYTES = 1 << 20
_WS = re.compile(rb"[ \t\n\r]*")
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


class TextPieces:
    """The big string's text, decoded piece by piece on iteration."""

    def __init__(self, body: bytes | bytearray, start: int, end: int) -> None:
        self.body, self.start, self.end = body, start, end

    def __iter__(self) -> Iterator[str]:
        body, position, end = self.body, self.start, self.end
        while position < end:
            cut = end if end - position <= PIECE_BYTES else self._after_newline(position)
            piece = bytearray(b'"')
            piece += memoryview(body)[position:cut]
            piece += b'"'
            yield _decode(piece, "csv_content")
            position = cut

    def _after_newline(self, position: int) -> int:
        """The end of the first ``\\n`` escape at or after a piece's worth (the end if none)."""
        body, end = self.body, self.end
        found = body.find(b"\\n", position + PIECE_BYTES, end)
        while found != -1:
            backslashes = 0
            while body[found - 1 - backslashes] == 0x5C:  # an escaped "\" before it?
                backslashes += 1
            if backslashes % 2 == 0:
                return found + 2
            found = body.find(b"\\n", found + 1, end)
        return end


def _string_end(body: bytes | bytearray, start: int) -> int | None:
    """The index after the JSON string that opens at ``start`` (None if none does). A search,
    not a regular expression: ``re`` keeps a backtracking entry per escape, megabytes here."""
    if body[start : start + 1] != b'"':
        return None
    quote = body.find(b'"', start + 1)
    while quote != -1:
        backslashes = 0
        while body[quote - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            return quote + 1
        quote = body.find(b'"', quote + 1)
    return None


def _decode(raw: bytes | bytearray, where: str) -> Any:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ApiError(
            400, "bad_request", f"expected a JSON object as the body; got {error}"
        ) from None
    if lone_surrogate_path(value) is not None:
        raise ApiError(
            400,
            "invalid_text",
            f"expected {where} to be text UTF-8 can carry; got a lone surrogate (a "
            "\\ud800-\\udfff escape without its pair). Nothing was saved.",
        )
    return value


def read_with_text(body: bytes | bytearray, name: str) -> tuple[dict[str, Any], Any]:
    """The object's other fields, and its ``name`` string as ``TextPieces`` (as it is if it is
    not a string, None if absent)."""
    fields: dict[str, Any] = {}
    text: Any = None
    position = _WS.match(body, 0).end()  # type: ignore[union-attr]
    if body[position : position + 1] != b"{":
        return _ordinary(body, name)
    position = _WS.match(body, position + 1).end()  # type: ignore[union-attr]
    closed = body[position : position + 1] == b"}"
    if closed:
        position += 1
    while not closed:
        key_end = _string_end(body, position)
        if key_end is None:
            return _ordinary(body, name)
        key = _decode(bytes(body[position:key_end]), "a key")
        position = _WS.match(body, key_end).end()  # type: ignore[union-attr]
        if body[position : position + 1] != b":" or key in fields or (key == name and text):
            return _ordinary(body, name)
        position = _WS.match(body, position + 1).end()  # type: ignore[union-attr]
        value_end = _string_end(body, position)
        if value_end is None:
            scalar = _SCALAR.match(body, position)
            if scalar is None:
                return _ordinary(body, name)
            value_end = scalar.end()
        elif key == name:
            text = TextPieces(body, position + 1, value_end - 1)
        if key != name or text is None:
            fields[key] = _decode(bytes(body[position:value_end]), repr(key))
        position = _WS.match(body, value_end).end()  # type: ignore[union-attr]
        separator = body[position : position + 1]
        position += 1
        if separator == b"}":
            closed = True
        elif separator == b",":
            position = _WS.match(body, position).end()  # type: ignore[union-attr]
        else:
            return _ordinary(body, name)
    if _WS.match(body, position).end() != len(body):  # type: ignore[union-attr]
        return _ordinary(body, name)
    if text is None and name in fields:
        text = fields.pop(name)
    return fields, text


def _ordinary(body: bytes | bytearray, name: str) -> tuple[dict[str, Any], Any]:
    fields = parse_object(body)
    return fields, fields.pop(name, None)
