"""The JSON encoding of database values: one rule per kind of value, the same for every engine."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

import pytest

from dbtkd.app.db.values import (
    MAX_SAFE_INTEGER,
    converter_for,
    dumps,
    encode_clock_duration,
    encode_duration,
    encode_rows,
    encode_value,
    guarded,
    integer_column_converter,
)

UTC = datetime.UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        ("text", "text"),
        (MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
        (-MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER),
        (MAX_SAFE_INTEGER + 1, "9007199254740992"),
        (-(MAX_SAFE_INTEGER + 2), "-9007199254740993"),
        (2**64 - 1, "18446744073709551615"),
        (1.5, 1.5),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (decimal.Decimal("12345678901234567890.123456789"), "12345678901234567890.123456789"),
        (decimal.Decimal("NaN"), "NaN"),
        (decimal.Decimal("-Infinity"), "-Infinity"),
        (b"\x00\xff\x10", "AP8Q"),
        (bytearray(b"ab"), "YWI="),
        (memoryview(b"ab"), "YWI="),
        (datetime.date(2024, 2, 29), "2024-02-29"),
        (datetime.datetime(2024, 2, 29, 13, 14, 15, 123456), "2024-02-29T13:14:15.123456"),
        (datetime.datetime(2024, 2, 29, 13, 14, 15, tzinfo=UTC), "2024-02-29T13:14:15+00:00"),
        (datetime.time(13, 14, 15), "13:14:15"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ([1, 2**60, None], [1, "1152921504606846976", None]),
        ({"a": float("nan")}, {"a": "NaN"}),
    ],
)
def test_each_kind_of_value_has_one_json_encoding(value: Any, expected: Any) -> None:
    assert encode_value(value) == expected
    json.dumps(encode_value(value), allow_nan=False)  # and it is valid strict JSON


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (datetime.timedelta(days=1, seconds=3), "P1DT3S"),
        (datetime.timedelta(hours=2, minutes=3, seconds=4.5), "PT2H3M4.5S"),
        (datetime.timedelta(0), "PT0S"),
        (datetime.timedelta(days=3), "P3D"),
        (-datetime.timedelta(hours=1), "-PT1H"),
    ],
)
def test_intervals_are_iso_8601_durations(delta: datetime.timedelta, expected: str) -> None:
    assert encode_duration(delta) == expected


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (datetime.timedelta(hours=13, minutes=14, seconds=15), "13:14:15"),
        (datetime.timedelta(hours=838, minutes=59, seconds=59), "838:59:59"),
        (-datetime.timedelta(hours=1, minutes=2, seconds=3), "-01:02:03"),
        (datetime.timedelta(seconds=1, microseconds=5), "00:00:01.000005"),
    ],
)
def test_mysql_time_columns_keep_mysqls_clock_notation(
    delta: datetime.timedelta, expected: str
) -> None:
    assert encode_clock_duration(delta) == expected


def test_rows_are_converted_only_in_the_columns_that_need_it() -> None:
    rows = [(1, 2**60, b"\x01"), (2, None, None)]
    converters = [converter_for("small_int"), converter_for("int"), converter_for("bytes")]
    assert converters[0] is None
    assert encode_rows(rows, converters) == [[1, "1152921504606846976", "AQ=="], [2, None, None]]


def test_a_guarded_converter_falls_back_for_values_of_another_type() -> None:
    clock = converter_for("clock_duration")
    assert clock is not None
    convert = guarded(clock)
    assert convert(datetime.timedelta(hours=1)) == "01:00:00"
    # MySQL hands back a TIME it cannot parse as a string, which has no days or seconds.
    assert convert("00:00:00.bad") == "00:00:00.bad"


def test_documents_are_serialised_with_the_same_encodings() -> None:
    document = {
        "when": datetime.datetime(2024, 2, 29, 13, 14, 15, 5, tzinfo=UTC),
        "day": datetime.date(2024, 2, 29),
        "clock": datetime.time(1, 2, 3),
        "exact": decimal.Decimal("0E-9"),
        "blob": b"\x00\xff\x10",
        "id": uuid.UUID(int=1),
    }
    assert json.loads(dumps(document)) == {
        key: encode_value(value) for key, value in document.items()
    }
    assert json.loads(dumps(document))["exact"] == "0.000000000"


@pytest.mark.parametrize(
    ("column", "needed"),
    [((1, 2, None), False), ((), False), ((None,), False), ((1, 2**53), True), ((-(2**60),), True)],
)
def test_integer_columns_are_converted_only_when_a_value_passes_2_53(
    column: tuple[Any, ...], needed: bool
) -> None:
    assert (integer_column_converter(column) is not None) is needed
