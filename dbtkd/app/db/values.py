"""Turning database values into JSON the UI can read without losing anything.

JSON has no dates, no decimals, no bytes, and JavaScript numbers lose integers past 2**53, so
each database value is encoded by one rule, the same for every engine: dates and times →
ISO 8601 strings; ``Decimal`` → its exact string; integers beyond ±(2**53 - 1) → strings;
bytes → base64; NaN and ±Infinity → ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; NULL → null.

Converting and serialising a page of 10,000 rows is most of a query response's cost, so:
engines pick one converter per column from its declared type (``converter_for``) and rows are
converted column-wise, touching only the columns that need it (``encode_rows``); and documents
are serialised by orjson (``dumps``), which writes dates, datetimes and naive times as ISO 8601
itself (the same text as ``isoformat``) and hands anything it does not know (bytes, Decimal,
...) to ``encode_value``. Two things orjson would get wrong never reach it unconverted: floats
(it writes NaN as null) and integers past 64 bits (it refuses them); their columns always have
a converter. A column whose type is unknown gets ``encode_value``, which dispatches on the
value itself.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import ipaddress
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

# The largest integer a JavaScript number (IEEE double) holds exactly; past it JSON.parse in
# the renderer would silently round, so such integers travel as strings.
MAX_SAFE_INTEGER = 2**53 - 1

Converter = Callable[[Any], Any]

_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def encode_int(value: int) -> int | str:
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)


def encode_float(value: float) -> float | str:
    return value if math.isfinite(value) else _NON_FINITE[repr(value)]


def encode_decimal(value: decimal.Decimal) -> str:
    # Positional notation keeps every digit and reads as the database shows it ("0.000000000",
    # not str()'s "0E-9"); the specials are spelled "NaN", "Infinity", "-Infinity".
    text = format(value, "f")
    return "NaN" if text in ("sNaN", "-NaN", "-sNaN") else text


def encode_bytes(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def encode_temporal(value: datetime.date | datetime.time) -> str:
    return value.isoformat()


def encode_duration(value: datetime.timedelta) -> str:
    """An ISO 8601 duration: ``P1DT2H3M4.5S``; negative durations get a leading ``-``."""
    sign = "-" if value < datetime.timedelta(0) else ""
    value = abs(value)
    days, seconds, micros = value.days, value.seconds, value.microseconds
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = f"{sign}P{days}D" if days else f"{sign}P"
    clock = ""
    if hours:
        clock += f"{hours}H"
    if minutes:
        clock += f"{minutes}M"
    if seconds or micros or not (days or hours or minutes):
        clock += f"{seconds}.{micros:06d}".rstrip("0").rstrip(".") + "S"
    return text + ("T" + clock if clock else "")


def encode_clock_duration(value: datetime.timedelta) -> str:
    """MySQL ``TIME``: a signed duration that may exceed 24 h, in MySQL's own ``[-]H:MM:SS``.

    Within 0-24 h this is exactly an ISO 8601 extended time, which is what such a column
    holds nearly always; beyond it, it is still the text MySQL itself shows.
    """
    sign = "-" if value < datetime.timedelta(0) else ""
    value = abs(value)
    total_seconds = value.days * 86400 + value.seconds
    hours, rest = divmod(total_seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{value.microseconds:06d}" if value.microseconds else text


def encode_value(value: Any) -> Any:
    """Any driver value to JSON, by its Python type (the slow, general path)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return encode_int(value)
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, decimal.Decimal):
        return encode_decimal(value)
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return encode_temporal(value)
    if isinstance(value, datetime.timedelta):
        return encode_duration(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return encode_bytes(value)
    if isinstance(value, dict):
        return {str(key): encode_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_value(item) for item in value]
    if isinstance(value, (uuid.UUID, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(value, (set, frozenset)):  # MySQL SET columns, when a driver makes sets
        return sorted(encode_value(item) for item in value)
    # Ranges, geometric types, bit strings, IP addresses...: their text form is what psql and
    # the mysql client show, and it round-trips through the database's input functions.
    return str(value)


# Converters by the kind of a column; None means "JSON-ready as the driver returns it".
KIND_CONVERTERS: dict[str, Converter | None] = {
    "text": None,
    "bool": None,
    "small_int": None,  # 32 bits or fewer: always within 2**53
    "int": encode_int,
    "float": encode_float,
    "decimal": encode_decimal,
    "bytes": encode_bytes,
    "temporal": None,  # date, datetime, naive time: orjson writes ISO 8601 itself
    "aware_time": encode_temporal,  # orjson refuses a time with a time zone
    "duration": encode_duration,
    "clock_duration": encode_clock_duration,
    "any": encode_value,
}


def converter_for(kind: str) -> Converter | None:
    """The converter for a column kind (see ``KIND_CONVERTERS``); unknown kinds → general."""
    return KIND_CONVERTERS.get(kind, encode_value)


def guarded(convert: Converter) -> Converter:
    """``convert`` for a column whose values may also be of another type (SQLite columns,
    MySQL zero dates that come back as strings): falls back to ``encode_value``."""

    def convert_or_fall_back(value: Any) -> Any:
        try:
            return convert(value)
        except (TypeError, ValueError, AttributeError, KeyError):
            return encode_value(value)

    return convert_or_fall_back


def encode_rows(
    rows: Iterable[Sequence[Any]], converters: Sequence[Converter | None]
) -> list[list[Any]]:
    """Rows as JSON-ready lists in column order, converting only the columns that need it."""
    active = [(index, convert) for index, convert in enumerate(converters) if convert is not None]
    encoded = [list(row) for row in rows]
    for index, convert in active:
        for row in encoded:
            value = row[index]
            if value is not None:
                row[index] = convert(value)
    return encoded


def dumps(document: Any) -> bytes:
    """``document`` as compact UTF-8 JSON; values orjson does not know go through
    ``encode_value`` (bytes → base64, Decimal → text, ...)."""
    try:
        return orjson.dumps(document, default=encode_value)
    except orjson.JSONEncodeError:
        # A lone surrogate (a store written before requests were checked, or by hand): the
        # answer shows it escaped instead of failing (see dbtkd.app.jsontext).
        from dbtkd.app.jsontext import escape_lone_surrogates

        return orjson.dumps(escape_lone_surrogates(document), default=encode_value)


def integer_column_converter(column: Sequence[Any]) -> Converter | None:
    """``encode_int`` for a column of Python ints (or None) if any of them is past 2**53."""
    present = [value for value in column if value is not None] if None in column else column
    if not present or (min(present) >= -MAX_SAFE_INTEGER and max(present) <= MAX_SAFE_INTEGER):
        return None
    return encode_int
