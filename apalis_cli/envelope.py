"""`Envelope`: a task's context as a broker carries it beside the payload, in message headers.

Brokers (AMQP, NATS) keep no table: everything a worker needs besides the payload travels with
the message. Each store names and encodes its own headers; this is the shape they all decode to,
with the same leniency for a message another client sent (a missing or unreadable value is the
default, meta that is not JSON is kept as text). A task's end is kept apart, as a final record
(`final_record`, read back by `task_of_final`): AMQP appends it to a stream, NATS to a bucket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .task import Status, Task, TaskContext

__all__ = ["Envelope", "final_record", "header_meta", "header_number", "task_of_final"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """What a broker message's headers say about its task (the payload travels apart)."""

    id: str
    attempts: int
    max_attempts: int
    run_at: float
    priority: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    error: str | None = None
    created_at: float = 0.0
    done_at: float | None = None

    def task(self, queue: str, payload: bytes, *, status: Status, attempts: int, lock_by: str | None) -> Task[bytes]:
        """The task this envelope describes, in `status`."""
        return Task(
            id=self.id,
            args=payload,
            ctx=TaskContext(
                queue=queue,
                status=status,
                attempts=attempts,
                max_attempts=self.max_attempts,
                run_at=self.run_at,
                priority=self.priority,
                idempotency_key=self.key,
                meta=self.meta,
                lock_by=lock_by,
                last_error=self.error,
                created_at=self.created_at,
                done_at=self.done_at,
            ),
        )


def header_number(value: Any, default: float) -> float:
    """A numeric header's value; `default` when it is absent or not a number."""
    try:
        return default if value is None else float(value)
    except (TypeError, ValueError):
        return default


def header_meta(raw: str | None) -> Mapping[str, Any]:
    """The task's meta from its JSON header; text that is not JSON is kept as `{"raw": text}`."""
    if not raw:
        return {}
    try:
        meta: Mapping[str, Any] = json.loads(raw)
    except ValueError:
        return {"raw": raw}
    return meta


def final_record(
    status: Status,
    envelope: Envelope | None,
    *,
    attempts: int,
    error: str | None = None,
    result: str | None = None,
) -> dict[str, Any]:
    """The JSON body of a task's final record (its payload is not kept), as `task_of_final`
    reads it back."""
    body: dict[str, Any] = {"status": status.value, "attempts": attempts, "done_at": time.time()}
    if envelope is not None:
        body.update(
            id=envelope.id, max_attempts=envelope.max_attempts, created_at=envelope.created_at, run_at=envelope.run_at
        )
        if envelope.meta:
            body["meta"] = envelope.meta
        if envelope.key is not None:
            body["key"] = envelope.key
    if error is not None:
        body["error"] = error
    if result is not None:
        body["result"] = result
    return body


def task_of_final(queue: str, task_id: str, body: Any) -> Task[bytes] | None:
    """The final task a record's body describes (its payload is not kept: empty), None if it
    cannot be read as one."""
    try:
        return Task(
            id=task_id,
            args=b"",
            ctx=TaskContext(
                queue=queue,
                status=Status(body["status"]),
                attempts=int(body.get("attempts", 0)),
                max_attempts=int(body.get("max_attempts", 1)),
                run_at=float(body.get("run_at", 0.0)),
                meta=body.get("meta") or {},
                idempotency_key=body.get("key"),
                last_error=body.get("error"),
                result=body.get("result"),
                created_at=float(body.get("created_at", 0.0)),
                done_at=float(body.get("done_at", 0.0)),
            ),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
