"""How an apalis task is a pgmq message, and back.

The message jsonb is the payload itself, so any pgmq client can send us tasks and read ours:
with the json codec the payload's JSON text is the message. A payload that is not JSON (the
msgpack codec, or bytes that do not parse) is stored as a JSON string of its base64 form, with
`"enc": "base64"` in the headers. jsonb reorders object keys (and normalises numbers): when
that would change the payload's bytes, its exact text also travels in the headers (`"text"`).

What pgmq has no column for lives in the message headers under the key "apalis": max_attempts,
idempotency key, meta, the key its queue's global limits count it under (`limit_key`, read by
the claim within limits through an index: `sql/limits.sql`), and once known the last error, the
attempt that failed (`failed_ct`), `status: "killed"` and the handler's `result` (JSON text).
Foreign messages without these headers get the worker's defaults.
"""

from __future__ import annotations

import base64
import binascii
import json
from functools import lru_cache
from typing import Any

from apalis_cli.backend import NewTask
from apalis_cli.errors import DecodeError
from apalis_cli.task import Status, Task, TaskContext

__all__ = ["encode_headers", "encode_message", "payload_of", "task_of"]

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder(parse_constant=lambda name: _not_json(name))


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _jsonb_order(value: Any) -> Any:
    """`value` with its objects' keys in jsonb's order (shorter first, then bytewise)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: _jsonb_order(value[k]) for k in keys}
    if isinstance(value, list):
        return [_jsonb_order(v) for v in value]
    return value


def encode_message(payload: bytes, as_json: bool) -> tuple[str, str | None]:
    """The message text for `payload`, and how to get the exact bytes back: None when the
    message gives them, "base64" when the message is the payload in base64, or else "text"
    (jsonb reorders keys and normalises numbers, so the exact text travels in the headers)."""
    if as_json:
        try:
            text = payload.decode()
            value = _DECODER.decode(text)
            if "\\u0000" not in text:  # jsonb refuses the NUL escape that JSON allows
                return text, None if _COMPACT.encode(_jsonb_order(value)) == text else "text"
        except ValueError:
            pass
    return '"' + base64.b64encode(payload).decode() + '"', "base64"


@lru_cache(maxsize=64)
def _plain_headers(max_attempts: int, enc: str | None) -> str:
    apalis: dict[str, Any] = {"max_attempts": max_attempts}
    if enc is not None:
        apalis["enc"] = enc
    return _COMPACT.encode({"apalis": apalis})


def encode_headers(task: NewTask, enc: str | None, text: str) -> str:
    """The message headers carrying what pgmq has no column for."""
    plain = task.idempotency_key is None and task.limit_key is None
    if plain and not task.meta and not task.priority and enc != "text":
        return _plain_headers(task.max_attempts, enc)  # the common case, built once
    apalis: dict[str, Any] = {"max_attempts": task.max_attempts}
    if task.idempotency_key is not None:
        apalis["key"] = task.idempotency_key
    if task.limit_key is not None:
        apalis["limit_key"] = task.limit_key
    if task.meta:
        apalis["meta"] = dict(task.meta)
    if task.priority:
        apalis["priority"] = task.priority
    if enc == "base64":
        apalis["enc"] = "base64"
    elif enc == "text":
        apalis["text"] = text
    return _COMPACT.encode({"apalis": apalis})


def payload_of(message: Any, apalis: dict[str, Any] | None) -> bytes:
    """The compact bytes behind a message as psycopg loaded it."""
    if apalis is not None and apalis.get("enc") == "base64" and isinstance(message, str):
        try:
            return base64.b64decode(message, validate=True)
        except binascii.Error as exc:
            raise DecodeError(f"message is not valid base64: {exc}") from None
    if apalis is not None and isinstance(text := apalis.get("text"), str):
        return text.encode()
    return _COMPACT.encode(message).encode()


def task_of(
    queue: str,
    msg_id: int,
    read_ct: int,
    message: Any,
    apalis: dict[str, Any] | None,
    *,
    status: Status,
    default_max_attempts: int,
    created_at: float,
    run_at: float,
    lock_by: str | None = None,
    done_at: float | None = None,
) -> Task[bytes]:
    """A task with its stored bytes, from one message."""
    info = apalis if isinstance(apalis, dict) else {}
    try:
        payload = payload_of(message, info)
    except DecodeError:
        payload = str(message).encode()  # the codec will refuse it and the task is killed
    max_attempts = info.get("max_attempts")
    meta = info.get("meta")
    return Task(
        id=str(msg_id),
        args=payload,
        ctx=TaskContext(
            queue=queue,
            status=status,
            attempts=read_ct,
            max_attempts=max_attempts if isinstance(max_attempts, int) else default_max_attempts,
            run_at=run_at,
            priority=info.get("priority", 0) if isinstance(info.get("priority"), int) else 0,
            idempotency_key=info.get("key"),
            meta=meta if isinstance(meta, dict) else {},
            lock_by=lock_by,
            last_error=info.get("error"),
            result=info.get("result"),
            created_at=created_at,
            done_at=done_at,
        ),
    )
