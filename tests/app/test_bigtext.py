"""The CSV import body's big string, decoded in pieces (dbtkd/app/bigtext.py): the pieces join
to exactly what ``json.loads`` gives, no piece splits an escape, a character or a line, and
whatever the byte scanner does not take gets the API's ordinary parser and its answers."""

from __future__ import annotations

import json
import random

import pytest

from dbtkd.app import bigtext
from dbtkd.app.endpoints import ApiError

ALPHABET = ["a", "b", ",", ";", '"', "\\", "\n", "\r\n", "\\n", "é", "€", "😀", "\x00", "\t", " "]


def body(content: str, ensure_ascii: bool, **fields: object) -> bytes:
    document = {"connection_id": "c1", "csv_content": content, "has_headers": True, **fields}
    return json.dumps(document, ensure_ascii=ensure_ascii).encode()


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_pieces_join_to_the_decoded_text_for_any_content(
    monkeypatch: pytest.MonkeyPatch, ensure_ascii: bool, seed: int
) -> None:
    chance = random.Random(seed)
    content = "".join(chance.choice(ALPHABET) for _ in range(chance.randrange(0, 3000)))
    monkeypatch.setattr(bigtext, "PIECE_BYTES", chance.choice([1, 2, 7, 64, 500]))
    raw = body(content, ensure_ascii, delimiter=";", nested_ok=None)
    fields, text = bigtext.read_with_text(raw, "csv_content")
    assert fields == {
        "connection_id": "c1",
        "has_headers": True,
        "delimiter": ";",
        "nested_ok": None,
    }
    pieces = list(text)
    assert "".join(pieces) == content
    for piece in pieces[:-1]:
        assert piece.endswith("\n")  # cut only after a line end: never inside a line


def test_a_large_file_comes_in_pieces_of_about_a_megabyte() -> None:
    content = "".join(f'{i},"quoted \\ text",é😀\r\n' for i in range(200_000))
    _, text = bigtext.read_with_text(body(content, True), "csv_content")
    pieces = list(text)
    assert len(pieces) > 5
    assert "".join(pieces) == content
    assert max(len(piece) for piece in pieces) < 2 * bigtext.PIECE_BYTES


@pytest.mark.parametrize(
    "raw",
    [
        b'{"csv_content": "a\\nb", "filters": {"x": [1, 2]}}',  # a nested value
        b'{"csv_content": "a", "csv_content": "b"}',  # a duplicate key: the last wins
        b'  {"csv_content" : "x\\n" , "n": -1.5e3}  ',
        b"{}",
    ],
)
def test_bodies_the_scanner_does_not_take_get_the_ordinary_parser(raw: bytes) -> None:
    expected = json.loads(raw)
    fields, text = bigtext.read_with_text(raw, "csv_content")
    joined = text if isinstance(text, str) or text is None else "".join(text)
    assert joined == expected.pop("csv_content", None)
    assert fields == expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b'{"csv_content": "a', "bad_request"),
        (b'{"csv_content": "a"} trailing', "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'{"csv_content": NaN}', "bad_request"),
        (b'{"csv_content": "x\\ud800y"}', "invalid_text"),
    ],
)
def test_bad_bodies_get_the_apis_answers(raw: bytes, error: str) -> None:
    def read() -> None:
        _, text = bigtext.read_with_text(raw, "csv_content")
        list(text)

    with pytest.raises(ApiError) as refused:
        read()
    assert refused.value.status == 400
    assert refused.value.error == error
