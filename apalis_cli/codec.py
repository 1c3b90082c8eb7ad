"""Codecs turn handler arguments into the compact bytes a store holds, and back.

Handlers never see bytes and stores never see Python objects: the codec sits between them. A
value the codec cannot encode is a `BadPayload` (the producer's fault, exit 2); stored bytes it
cannot decode are a `DecodeError` (that task is killed, the worker goes on).
"""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

from .errors import BadPayload, DecodeError, MissingExtra

__all__ = ["Codec", "JsonCodec", "MsgpackCodec", "codec_by_name"]


@runtime_checkable
class Codec(Protocol):
    """Encodes arguments to bytes and decodes them back."""

    name: str

    def encode(self, value: Any) -> bytes:
        """The compact form of `value`; raises `BadPayload` when it cannot be encoded."""
        ...

    def decode(self, data: bytes) -> Any:
        """The value behind `data`; raises `DecodeError` when the bytes are not this codec's."""
        ...


class JsonCodec:
    """UTF-8 JSON without spaces: readable in `apalis inspect`, exact for any integer size."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        self._decoder = json.JSONDecoder()
        self._scan: Any = self._decoder.scan_once  # type: ignore[attr-defined]  # json's scanner (its C one where built)
        self._chunks = _one_shot(self._encoder)

    def encode(self, value: Any) -> bytes:
        """JSON text as UTF-8 bytes."""
        try:
            if self._chunks is None:
                return self._encoder.encode(value).encode()
            return "".join(self._chunks(value, 0)).encode()
        except (TypeError, ValueError) as exc:
            raise BadPayload(f"cannot encode as JSON: {exc}") from None
        except RecursionError:
            raise BadPayload("cannot encode as JSON: nested too deeply (or circular)") from None

    def decode(self, data: bytes) -> Any:
        """The JSON value in `data`."""
        try:
            text = bytes(data).decode()
            # The scanner alone, when the value fills the text (what `encode` writes): the
            # decoder's `decode` and `raw_decode` around it match whitespace twice by regex, in
            # two frames more (bench/README.md, "Redis, session 14"). Text with spaces around
            # its value, or after it, takes the whole decoder; a malformed value raises the
            # error the decoder's own scan would.
            try:
                value, end = self._scan(text, 0)
            except StopIteration:  # no value at the first character: spaces, or nothing
                end = -1
            if end == len(text):
                return value
            return self._decoder.decode(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"payload is not valid JSON: {exc}") from None
        except RecursionError:
            raise DecodeError("payload is JSON nested too deeply to decode") from None


def _one_shot(encoder: json.JSONEncoder) -> Any:
    """The C encoder `encoder.encode` builds on every call, built once (None without json's C
    speedups): that build, with the closure and dict around it, was half of a 14,000-instruction
    encode of a small value, 8% of a Redis push one at a time (bench/README.md, "Redis, session
    13: a push one at a time"). Built without the circular check, whose dict of containers in
    progress one encoder cannot share between threads: a circular value recurses until
    `RecursionError`."""
    from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]

    if c_make_encoder is None:
        return None
    return c_make_encoder(
        None,
        encoder.default,
        encode_basestring,
        None,
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )


class MsgpackCodec:
    """MessagePack: smaller and faster than JSON; integers within signed/unsigned 64 bits."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:  # pragma: no cover - msgpack is a core dependency
            raise MissingExtra("codec \"msgpack\" needs the extra: pip install 'apalis-cli[msgpack]'") from None
        self._packb = msgpack.packb
        self._unpackb = msgpack.unpackb

    def encode(self, value: Any) -> bytes:
        """MessagePack bytes of `value`."""
        try:
            data: bytes = self._packb(value, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadPayload(f"cannot encode as msgpack: {exc}") from None
        return data

    def decode(self, data: bytes) -> Any:
        """The value in `data`; trailing garbage or a truncated value is a decode error."""
        try:
            return self._unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise DecodeError(f"payload is not valid msgpack: {exc}") from None


def codec_by_name(name: str) -> Codec:
    """The codec called `name` (`json` or `msgpack`)."""
    if name == "json":
        return JsonCodec()
    if name == "msgpack":
        return MsgpackCodec()
    raise BadPayload(f'unknown codec "{name}" (expected "json" or "msgpack")')
