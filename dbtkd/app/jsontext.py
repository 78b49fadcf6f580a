"""Text that JSON can spell but UTF-8 cannot carry: lone surrogates (``"\\ud800"``).

JSON's ``\\uXXXX`` escapes can name half of a surrogate pair on its own. Python's ``json``
accepts that and makes a ``str`` no UTF-8 encoder takes, so such a value, once stored, broke
every later answer that contained it (orjson refuses it: 500 on every list, also after a
restart). Two rules keep that out:

- **In**: ``lone_surrogate_path`` finds such a string anywhere in a request body (keys too), so
  the body parser refuses it with 400 naming the field, before anything is stored.
- **Out**: ``escape_lone_surrogates`` rewrites each lone surrogate as the six characters of its
  escape (``\\ud800``), so a store written before the first rule (or by hand) still lists.
"""

from __future__ import annotations

import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(text: str) -> bool:
    # Pairs were already joined by the JSON parser, so any surrogate left in a str is alone.
    return _LONE_SURROGATE.search(text) is not None


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """The path (``name``, ``params[2]``, ``tables[0].name``) of the first string in ``value``
    holding a lone surrogate, or None when every string is valid Unicode text."""
    if isinstance(value, str):
        return (path or "the body") if _has_lone_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _has_lone_surrogate(key):
                return f"the name of field {where.encode('unicode_escape').decode()}"
            found = lone_surrogate_path(item, where)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_path(item, f"{path}[{index}]")
            if found:
                return found
    return None


def escape_lone_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (and keys) written as its escape."""
    if isinstance(value, str):
        if not _has_lone_surrogate(value):
            return value
        return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", value)
    if isinstance(value, dict):
        return {escape_lone_surrogates(key): escape_lone_surrogates(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_lone_surrogates(item) for item in value]
    return value
