"""Tasks, workers and queues as the JSON the API returns and the pages render.

A task's fields are those of `apalis inspect --json`; the task page adds its payload decoded
(by the queue's codec, else JSON or MessagePack, whichever reads it) and pretty-printed.
Stored text is returned as it was stored, but for the secrets a stored error may quote (masked):
the pages escape it (Jinja2 autoescaping), and JSON is text, not markup. Times are ISO 8601 in
UTC, with the epoch seconds beside them for scripts.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from typing import Any

from ..backend import WorkerInfo
from ..errors import describe_error
from ..redact import redact
from ..storable import decode_result
from ..task import Task, iso

__all__ = ["decode_payload", "payload_text", "pretty", "problem", "task_json", "worker_json"]


def problem(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """An exception as one line for a page or a JSON error, secrets masked (`secrets`: the
    config's, for a driver that echoes a piece of a password)."""
    from ..errors import ApalisError

    text = str(exc) if isinstance(exc, ApalisError) else describe_error(exc)
    return redact(" ".join(text.split()), secrets)


def payload_text(payload: bytes) -> tuple[str, str]:
    """The stored bytes as text when they are UTF-8 (`utf-8`), else as hex (`hex`)."""
    try:
        return payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return payload.hex(), "hex"


def _plain(value: Any) -> Any:
    """A decoded MessagePack value made JSON-able: bytes as base64, ext types as their repr."""
    if isinstance(value, dict):
        return {str(_plain(k)) if not isinstance(k, str) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def decode_payload(payload: bytes, codec: str) -> tuple[Any, str | None, str | None]:
    """`(value, how, error)`: the payload decoded by `codec` first, then by the other of JSON
    and MessagePack; `how` names the one that read it (None when neither could)."""
    order = ["msgpack", "json"] if codec == "msgpack" else ["json", "msgpack"]
    first_error: str | None = None
    for how in order:
        try:
            if how == "json":
                return json.loads(payload), "json", None
            import msgpack

            return _plain(msgpack.unpackb(payload, raw=False, strict_map_key=False)), "msgpack", None
        except Exception as exc:  # a payload another program wrote may be anything
            if first_error is None:
                first_error = f"not {how}: {' '.join(str(exc).split())}"
    return None, None, first_error


def pretty(value: Any) -> str:
    """`value` as indented JSON (text kept readable, not \\u-escaped)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=repr)


def task_json(task: Task[bytes], *, codec: str | None = None, backend: str = "") -> dict[str, Any]:
    """The API's object for one task (with `codec`: its payload decoded as `args` too)."""
    ctx = task.ctx
    text, encoding = payload_text(bytes(task.args))
    row: dict[str, Any] = {
        "id": task.id,
        "queue": ctx.queue,
        "backend": backend,
        "status": ctx.status.value,
        "attempts": ctx.attempts,
        "max_attempts": ctx.max_attempts,
        "priority": ctx.priority,
        "run_at": iso(ctx.run_at),
        "created_at": iso(ctx.created_at) if ctx.created_at else None,
        "done_at": iso(ctx.done_at),
        "run_at_epoch": ctx.run_at,
        "created_at_epoch": ctx.created_at or None,
        "done_at_epoch": ctx.done_at,
        "payload": text,
        "payload_encoding": encoding,
        "last_error": redact(ctx.last_error) if ctx.last_error else ctx.last_error,
        "result": decode_result(ctx.result),
        "lock_by": ctx.lock_by,
        "idempotency_key": ctx.idempotency_key,
        "meta": dict(ctx.meta),
    }
    if codec is not None:
        value, how, error = decode_payload(bytes(task.args), codec)
        row["args"], row["decoded_as"], row["decode_error"] = value, how, error
    return row


def worker_json(info: WorkerInfo, *, backend: str = "", now: float | None = None) -> dict[str, Any]:
    """The API's object for one registered worker."""
    now = time.time() if now is None else now
    return {
        "id": info.id,
        "name": info.name,
        "queue": info.queue,
        "backend": backend,
        "host": info.host,
        "pid": info.pid,
        "started_at": iso(info.started_at),
        "last_seen": iso(info.last_seen),
        "heartbeat_age": round(max(now - info.last_seen, 0.0), 3),
        "running": info.running,
        "layers": list(info.layers),
    }
