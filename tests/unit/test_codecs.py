"""Codecs: what can be encoded, what garbage does on decode, and how results are kept."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from apalis_cli.codec import JsonCodec, MsgpackCodec, codec_by_name
from apalis_cli.errors import BadPayload, DecodeError, UsageError
from apalis_cli.storable import encode_result


def strict_json(text: str) -> Any:
    """Parse as standard JSON: NaN and Infinity are not JSON, whatever Python's parser allows."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=reject)


def test_json_is_compact_readable_utf8() -> None:
    assert JsonCodec().encode({"name": "Zoë", "tags": ["a", "b"]}) == '{"name":"Zoë","tags":["a","b"]}'.encode()


@pytest.mark.parametrize(
    "value",
    [{"big": 2**300, "neg": -(2**100)}, ["unicode ✓", {"nested": [None, True, 1.25]}], "", 0],
)
def test_json_round_trips(value: Any) -> None:
    codec = JsonCodec()
    assert codec.decode(codec.encode(value)) == value


@pytest.mark.parametrize(
    "value",
    [{"max": 2**64 - 1, "min": -(2**63)}, {"bin": b"\x00\xff", "text": "ü"}, [1.5, None, [True]], {1: "int key"}],
)
def test_msgpack_round_trips(value: Any) -> None:
    codec = MsgpackCodec()
    assert codec.decode(codec.encode(value)) == value


@pytest.mark.parametrize("value", [object(), {1, 2}, float("nan"), float("inf"), b"bytes"])
def test_json_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(BadPayload, match="cannot encode as JSON"):
        JsonCodec().encode(value)


@pytest.mark.parametrize("value", [object(), 2**64, -(2**63) - 1, {1, 2}])
def test_msgpack_refuses_what_msgpack_cannot_hold(value: Any) -> None:
    with pytest.raises(BadPayload, match="cannot encode as msgpack"):
        MsgpackCodec().encode(value)


def test_bad_payload_is_a_usage_error() -> None:
    # The CLI turns usage errors into one line and exit code 2: a producer's mistake.
    assert issubclass(BadPayload, UsageError)


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfe", b"{not json", b'{"a": 1} trailing', b'{"a":1}x', b'{"a":1}  x', b"", b"  ", b'{"a":}']
)
def test_json_decode_error_on_garbage(garbage: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid JSON"):
        JsonCodec().decode(garbage)


@pytest.mark.parametrize("text", [b'{"a":1}', b' {"a": 1}\n', b'{\n  "a": [1, 2]\n}', b"\t7 ", b'"x"', b"null"])
def test_json_decodes_what_other_clients_wrote_as_json_does(text: bytes) -> None:
    # Spaces around the value (a producer's pretty-printing, a trailing newline) are JSON too.
    assert JsonCodec().decode(text) == json.loads(text)


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x93\x01", msgpack.packb(1) + b"\x01", b""])
def test_msgpack_decode_error_on_garbage(garbage: bytes) -> None:
    with pytest.raises(DecodeError, match="not valid msgpack"):
        MsgpackCodec().decode(garbage)


def test_decode_accepts_memoryview_and_bytearray() -> None:
    # Drivers hand back buffers of several types.
    data = JsonCodec().encode({"a": 1})
    assert JsonCodec().decode(memoryview(data)) == {"a": 1}  # type: ignore[arg-type]
    assert JsonCodec().decode(bytearray(data)) == {"a": 1}  # type: ignore[arg-type]


def test_codec_by_name() -> None:
    assert isinstance(codec_by_name("json"), JsonCodec)
    assert isinstance(codec_by_name("msgpack"), MsgpackCodec)
    with pytest.raises(BadPayload, match='unknown codec "yaml"'):
        codec_by_name("yaml")


def test_results_are_stored_as_json_text() -> None:
    assert encode_result(None) is None
    assert encode_result({"sent": 3, "to": "Zoë"}) == '{"sent":3,"to":"Zoë"}'
    assert strict_json(encode_result(object()) or "").startswith("<object object")


@pytest.mark.parametrize("value", [float("nan"), math.inf, {"ratio": -math.inf}])
def test_results_that_json_cannot_hold_are_kept_as_valid_json(value: Any) -> None:
    # A store may keep results in a JSON column (PostgreSQL jsonb rejects NaN): the text must
    # be standard JSON, the value kept as its repr.
    text = encode_result(value)
    assert text is not None
    assert strict_json(text) == repr(value)


def test_circular_results_are_kept_as_their_repr() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert strict_json(encode_result(loop) or "") == "[[...]]"
