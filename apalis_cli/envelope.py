"""`Envelope`: a task's context as a broker carries it beside the payload, in message headers.

Brokers (AMQP, NATS) keep no table: everything a worker needs besides the payload travels with
the message. Each store names and encodes its own headers; this is the shape they all decode to,
with the same leniency for a message another client sent (a missing or unreadable value is the
default, meta that is not JSON is kept as text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .task import Status, Task, TaskContext

__all__ = ["Envelope", "header_meta", "header_number"]


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
