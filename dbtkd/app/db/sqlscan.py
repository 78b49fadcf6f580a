"""Finding statement boundaries in PostgreSQL SQL text, without changing the text.

PostgreSQL cannot prepare a script of several statements, and a failed attempt inside the
user's ``BEGIN`` aborts their transaction, so the engine must know beforehand whether the text
holds more than one statement. ``has_several_statements`` walks the text once, skipping what
can hide a semicolon: string literals ('...' with '' escapes, E'...' with backslash escapes),
quoted identifiers ("..."), dollar-quoted bodies ($$...$$, $tag$...$tag$), line comments
(-- ...) and nested block comments (/* ... */). A ``$1`` placeholder is not a dollar quote.
"""

from __future__ import annotations

import re

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z_0-9\x80-\uffff]*)?\$")
_BLANK = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|;)*")


def _skip_quoted(text: str, start: int, quote: str, backslashes: bool) -> int:
    """Index just past the literal opened at ``start`` (its opening quote)."""
    index = start + 1
    while index < len(text):
        char = text[index]
        if backslashes and char == "\\":
            index += 2
            continue
        if char == quote:
            if text.startswith(quote, index + 1):  # doubled quote: an escaped quote
                index += 2
                continue
            return index + 1
        index += 1
    return len(text)


def _skip_block_comment(text: str, start: int) -> int:
    depth, index = 0, start
    while index < len(text):
        if text.startswith("/*", index):
            depth, index = depth + 1, index + 2
        elif text.startswith("*/", index):
            depth, index = depth - 1, index + 2
            if depth == 0:
                return index
        else:
            index += 1
    return len(text)


def _only_blank_after(text: str, index: int) -> bool:
    """True if nothing but whitespace, semicolons and comments follows ``index``."""
    while True:
        index = _BLANK.match(text, index).end()  # type: ignore[union-attr]
        if text.startswith("/*", index):
            index = _skip_block_comment(text, index)
            continue
        return index >= len(text)


def has_several_statements(text: str) -> bool:
    """Whether ``text`` holds a second statement after a semicolon outside any literal."""
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == "'":
            backslashes = (
                index > 0
                and text[index - 1] in "eE"
                and (index < 2 or not (text[index - 2].isalnum() or text[index - 2] == "_"))
            )
            index = _skip_quoted(text, index, "'", backslashes)
        elif char == '"':
            index = _skip_quoted(text, index, '"', False)
        elif text.startswith("--", index):
            newline = text.find("\n", index)
            index = length if newline < 0 else newline + 1
        elif text.startswith("/*", index):
            index = _skip_block_comment(text, index)
        elif char == "$":
            match = _DOLLAR_TAG.match(text, index)
            # "$1" is a parameter; "a$b$" is an identifier with dollars, not a quote.
            preceded = index > 0 and (text[index - 1].isalnum() or text[index - 1] == "_")
            if match and not preceded:
                end = text.find(match.group(0), match.end())
                index = length if end < 0 else end + len(match.group(0))
            else:
                index += 1
        elif char == ";":
            return not _only_blank_after(text, index + 1)
        else:
            index += 1
    return False
