"""Tasks as JetStream messages: the payload is the data, everything else travels in headers.

`Apalis-Attempts` counts the runs before the message was published; a delivery's run is number
`Apalis-Attempts + num_delivered`, so JetStream's own redelivery count (after a `nak`, or after
`ack_wait` passed without an ack) is part of the count without any write.

A payload too big for the server's `max_payload` is sent zlib-compressed (`Apalis-Encoding`);
what does not fit even then is refused at push time with the sizes in the message.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping

from apalis_cli.backend import NewTask
from apalis_cli.envelope import Envelope, header_meta, header_number
from apalis_cli.errors import BadPayload

__all__ = ["Envelope", "envelope_of", "headers_for", "payload_of", "shrink"]

ID = "Apalis-Id"
ATTEMPTS = "Apalis-Attempts"
MAX_ATTEMPTS = "Apalis-Max-Attempts"
RUN_AT = "Apalis-Run-At"
PRIORITY = "Apalis-Priority"
META = "Apalis-Meta"
KEY = "Apalis-Key"
ERROR = "Apalis-Error"
CREATED = "Apalis-Created-At"
DONE_AT = "Apalis-Done-At"
ENCODING = "Apalis-Encoding"
MSG_ID = "Nats-Msg-Id"
TOMBSTONE = "Apalis-Tombstone"
"""On an empty message a cancel puts where a scheduled task's copy would go: not a task."""

_HEADROOM = 4096  # room for the headers and the protocol line within max_payload


def headers_for(task: NewTask, queue: str) -> dict[str, str]:
    """The headers of a task about to be pushed (a key becomes the `Nats-Msg-Id`)."""
    headers = {
        ID: task.id,
        ATTEMPTS: "0",
        MAX_ATTEMPTS: str(task.max_attempts),
        RUN_AT: repr(task.run_at),
        CREATED: repr(time.time()),
    }
    if task.priority:
        headers[PRIORITY] = str(task.priority)
    if task.meta:
        headers[META] = json.dumps(task.meta, separators=(",", ":"))  # ASCII: header-safe
    if task.idempotency_key is not None:
        headers[KEY] = json.dumps(task.idempotency_key)[1:-1]
        headers[MSG_ID] = f"{queue}:{headers[KEY]}"
    return headers


def one_line(text: str | None, limit: int = 2000) -> str | None:
    """`text` fit for a header value: one line, ASCII-escaped, bounded."""
    if text is None:
        return None
    return json.dumps(text[:limit])[1:-1]


def shrink(payload: bytes, headers: dict[str, str], max_payload: int) -> bytes:
    """`payload` as sent: compressed when it would not fit the server's `max_payload`."""
    if len(payload) + _HEADROOM <= max_payload:
        return payload
    packed = zlib.compress(payload, 6)
    if len(packed) + _HEADROOM > max_payload:
        raise BadPayload(
            f"a payload of {len(payload)} bytes ({len(packed)} compressed) exceeds the NATS server's "
            f"max_payload of {max_payload} bytes"
        )
    headers[ENCODING] = "zlib"
    return packed


def payload_of(data: bytes, headers: Mapping[str, str] | None) -> bytes:
    """The codec's bytes of a stored message (decompressed if it was sent compressed)."""
    if headers and headers.get(ENCODING) == "zlib":
        return zlib.decompress(data)
    return bytes(data)


def _unescape(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        text: str = json.loads(f'"{value}"')
        return text
    except ValueError:
        return value


def envelope_of(headers: Mapping[str, str] | None, fallback_id: str, default_max_attempts: int) -> Envelope:
    """The envelope in `headers`; a message published by another client gets defaults."""
    headers = headers or {}
    done_at = headers.get(DONE_AT)
    return Envelope(
        id=headers.get(ID) or fallback_id,
        attempts=int(header_number(headers.get(ATTEMPTS), 0)),
        max_attempts=int(header_number(headers.get(MAX_ATTEMPTS), default_max_attempts)),
        run_at=header_number(headers.get(RUN_AT), 0.0),
        priority=int(header_number(headers.get(PRIORITY), 0)),
        meta=header_meta(headers.get(META)),
        key=_unescape(headers.get(KEY)),
        error=_unescape(headers.get(ERROR)),
        created_at=header_number(headers.get(CREATED), 0.0),
        done_at=None if done_at is None else header_number(done_at, 0.0),
    )


def copy_headers(headers: Mapping[str, str] | None, **changes: str | None) -> dict[str, str]:
    """`headers` with some `Apalis-*` values changed (None removes one) and no `Nats-*` ones.

    Pass the task's `id` for a message a plain client sent without `Apalis-Id`: its fallback
    id names its sequence, which a copy does not keep."""
    copied = {k: v for k, v in (headers or {}).items() if not k.startswith("Nats-")}
    for name, value in changes.items():
        header = "Apalis-" + "-".join(part.capitalize() for part in name.split("_"))
        if value is None:
            copied.pop(header, None)
        else:
            copied[header] = value
    return copied
