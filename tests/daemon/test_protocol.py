"""The control protocol as pure functions: every bad line maps to its error code."""

from __future__ import annotations

import json

import pytest

from dbtkd import protocol
from dbtkd.protocol import LineFramer, RequestError, decode_request


def error_code(line: bytes) -> str:
    with pytest.raises(RequestError) as info:
        decode_request(line)
    return info.value.code


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"", "invalid_request"),
        (b"   ", "invalid_request"),
        (b'{"id": 1, "cmd": "port"', "parse_error"),
        (b"[1, 2]", "invalid_request"),
        (b'"port"', "invalid_request"),
        (b'{"id": 1}', "invalid_request"),
        (b'{"id": 1, "cmd": 5}', "invalid_request"),
        (b'{"id": 1, "cmd": "frobnicate"}', "unknown_command"),
        (b'{"id": 1, "cmd": "logs", "lines": "ten"}', "invalid_params"),
        (b'{"id": 1, "cmd": "logs", "follow": 1}', "invalid_params"),
        (b'{"id": 1, "cmd": "stop", "timeout": true}', "invalid_params"),
        (b'{"id": 1, "cmd": "port", "colour": "red"}', "invalid_params"),
        (b'{"id": 1, "cmd": "attach", "name": "w"}', "invalid_params"),
        (b'{"id": 1, "cmd": "port", "cmd": "stop"}', "invalid_request"),
        (b'{"id": 1, "cmd": "status", "x": {"a": 1, "a": 2}}', "invalid_request"),
        (b'{"id": 1, "cmd": "stop", "timeout": NaN}', "parse_error"),
        (b'{"id": 1, "cmd": "stop", "timeout": Infinity}', "parse_error"),
        (b'{"id": 1, "cmd": "stop", "timeout": -Infinity}', "parse_error"),
        (b'{"id": 1, "cmd": "stop", "timeout": 1e999}', "invalid_params"),
        (b'{"id": ' + b"9" * 5000 + b', "cmd": "port"}', "parse_error"),
        (b"[" * 60_000 + b"]" * 60_000, "parse_error"),
        (b'{"id": 1, "cmd": "p\xffort"}', "parse_error"),
        (b"\xc3\x28", "parse_error"),
        (b'{"id": true, "cmd": "port"}', "invalid_request"),
        (b'{"id": [1], "cmd": "port"}', "invalid_request"),
        (b'{"id": 1.5, "cmd": "port"}', "invalid_request"),
    ],
)
def test_bad_line_gets_its_error_code(line: bytes, code: str) -> None:
    assert error_code(line) == code


def test_error_echoes_the_request_id_once_it_is_known() -> None:
    with pytest.raises(RequestError) as info:
        decode_request(b'{"id": "abc", "cmd": "nope"}')
    assert info.value.id == "abc"


def test_valid_request_decodes_with_its_arguments() -> None:
    request = decode_request(b'{"id": 7, "cmd": "logs", "lines": 5, "follow": true}')
    assert (request.id, request.cmd, request.args) == (7, "logs", {"lines": 5, "follow": True})


def test_request_without_id_is_accepted_and_answered_with_null() -> None:
    assert decode_request(b'{"cmd": "status"}').id is None


def test_framer_splits_lines_and_strips_crlf() -> None:
    framer = LineFramer()
    assert framer.feed(b'{"cmd":"a"}\r\n{"cmd"') == [b'{"cmd":"a"}']
    assert framer.pending == 6
    assert framer.feed(b':"b"}\n') == [b'{"cmd":"b"}']
    assert framer.pending == 0


def test_framer_reassembles_one_byte_per_feed() -> None:
    framer = LineFramer()
    line = b'{"id":1,"cmd":"port"}\n'
    out: list[bytes] = []
    for byte in line:
        out += framer.feed(bytes([byte]))
    assert out == [line[:-1]]


def test_framer_refuses_a_line_over_the_limit_without_newline() -> None:
    framer = LineFramer()
    framer.feed(b"x" * protocol.MAX_LINE_BYTES)
    with pytest.raises(protocol.LineTooLong):
        framer.feed(b"x")


def test_framer_refuses_a_long_line_that_arrives_with_its_newline() -> None:
    with pytest.raises(protocol.LineTooLong):
        LineFramer().feed(b"x" * (protocol.MAX_LINE_BYTES + 1) + b"\n")


def test_replies_and_errors_carry_the_daemon_block() -> None:
    daemon = {"version": "1", "protocol": 1, "nonce": "n"}
    reply = json.loads(protocol.encode_reply(3, {"port": 1}, daemon))
    error = json.loads(protocol.encode_error(None, "parse_error", "bad", daemon))
    assert reply == {"id": 3, "ok": True, "result": {"port": 1}, "daemon": daemon}
    assert error["id"] is None
    assert error["error"] == {"code": "parse_error", "message": "bad"}
    assert error["daemon"] == daemon
