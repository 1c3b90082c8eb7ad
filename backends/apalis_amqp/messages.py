"""Tasks as AMQP messages: the payload is the body, everything else travels in headers.

A message's `x-apalis-attempts` header counts the runs that finished (or were lost) before it was
published; the run a delivery starts is number `attempts + 1`. Copies published for a retry, a
release or a lost run carry the updated count, so the count survives every hop.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from apalis_cli.backend import NewTask
from apalis_cli.envelope import Envelope, header_meta, header_number
from apalis_cli.task import new_task_id

__all__ = ["Envelope", "copy_message", "new_message", "read_envelope"]

ID = "x-apalis-id"
ATTEMPTS = "x-apalis-attempts"
MAX_ATTEMPTS = "x-apalis-max-attempts"
RUN_AT = "x-apalis-run-at"
PRIORITY = "x-apalis-priority"
META = "x-apalis-meta"
KEY = "x-apalis-key"
ERROR = "x-apalis-error"
CREATED = "x-apalis-created-at"
DONE_AT = "x-apalis-done-at"

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


def new_message(task: NewTask, amqp_priority: int) -> aio_pika.Message:
    """The persistent message for a task about to be pushed."""
    headers: dict[str, Any] = {
        ID: task.id,
        ATTEMPTS: 0,
        MAX_ATTEMPTS: task.max_attempts,
        RUN_AT: task.run_at,
        CREATED: time.time(),
    }
    if task.priority:
        headers[PRIORITY] = task.priority
    if task.meta:
        headers[META] = json.dumps(task.meta, separators=(",", ":"))
    if task.idempotency_key is not None:
        headers[KEY] = task.idempotency_key
    return aio_pika.Message(
        task.payload,
        headers=headers,
        delivery_mode=_PERSISTENT,
        priority=amqp_priority or None,
        message_id=task.id,
    )


def copy_message(message: AbstractIncomingMessage, **changes: Any) -> aio_pika.Message:
    """A persistent copy of a delivered message with some headers changed (None removes one).

    Pass the task's `id` for a message another client sent without `x-apalis-id` or a
    message_id: otherwise each copy would be read as a new task."""
    headers = dict(message.headers or {})
    for name, value in changes.items():
        header = "x-apalis-" + name.replace("_", "-")
        if value is None:
            headers.pop(header, None)
        else:
            headers[header] = value
    headers.pop("x-death", None)  # the delay queue's trail: no use to the next reader
    return aio_pika.Message(
        message.body,
        headers=headers,
        delivery_mode=_PERSISTENT,
        priority=message.priority,
        message_id=message.message_id,
        content_type=message.content_type,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_envelope(message: AbstractIncomingMessage, default_max_attempts: int) -> Envelope:
    """The envelope of `message`; a message published by another client gets defaults."""
    headers = message.headers or {}
    done_at = headers.get(DONE_AT)
    return Envelope(
        id=_text(headers.get(ID)) or message.message_id or new_task_id(),
        attempts=int(header_number(headers.get(ATTEMPTS), 0)),
        max_attempts=int(header_number(headers.get(MAX_ATTEMPTS), default_max_attempts)),
        run_at=header_number(headers.get(RUN_AT), 0.0),
        priority=int(header_number(headers.get(PRIORITY), message.priority or 0)),
        meta=header_meta(_text(headers.get(META))),
        key=_text(headers.get(KEY)),
        error=_text(headers.get(ERROR)),
        created_at=header_number(headers.get(CREATED), 0.0),
        done_at=None if done_at is None else header_number(done_at, 0.0),
    )
