"""``decode_frame``, the one JSON decoder of every socket: how deep is too deep, and what counts.

The sockets' own tests (tests/app/jobs/test_nested_json.py) show the 1007 close end to end;
these pin the depth rule: brackets inside strings never count, 32 levels pass, 33 do not.
"""

from __future__ import annotations

import json

import pytest

from dbtkd.app.streams import INVALID_PAYLOAD, MAX_JSON_DEPTH, CloseStream, decode_frame


@pytest.mark.parametrize(
    "frame",
    [
        '{"command": "makemigrations \\"[[[[{{{{\\"", "cwd": "/tmp"}',
        json.dumps({"data": "[" * 10_000}),  # a paste full of brackets is text, not depth
        "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
        '"just a string"',
    ],
)
def test_frames_of_our_depth_decode_as_json_does(frame: str) -> None:
    assert decode_frame(frame) == json.loads(frame)
    assert decode_frame(frame.encode()) == json.loads(frame)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 900, 100_000])
def test_deeper_frames_close_the_socket_1007(depth: int) -> None:
    with pytest.raises(CloseStream) as refused:
        decode_frame('{"a":' * depth + "1" + "}" * depth)
    assert refused.value.code == INVALID_PAYLOAD
    assert f"at most {MAX_JSON_DEPTH} deep" in refused.value.reason


def test_a_frame_that_is_not_json_is_a_value_error_the_stream_answers() -> None:
    with pytest.raises(json.JSONDecodeError):
        decode_frame('{"unclosed": "\\"[[[')
