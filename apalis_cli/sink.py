"""`PushMixin`: push, push_bulk and push_compact over a store's one `enqueue` primitive."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Unpack

from .backend import NewTask, PushOptions
from .bounds import (
    ATTEMPTS,
    EARLIEST_TIME,
    ID_LENGTH,
    KEY_LENGTH,
    LATEST_TIME,
    PRIORITY,
    check_length,
    check_time,
)
from .codec import Codec
from .errors import Unsupported, UsageError
from .fleet.unique import unique_from
from .task import TaskId, new_task_id

__all__ = ["PushMixin", "new_task"]


def new_task(payload: bytes, *, default_max_attempts: int, **options: Unpack[PushOptions]) -> NewTask:
    """A `NewTask` with the defaults filled in: a fresh id, due now (or after `delay`)."""
    run_at, delay = options.get("run_at"), options.get("delay")
    priority, max_attempts = options.get("priority", 0), options.get("max_attempts")
    task_id, idempotency_key, meta = options.get("task_id"), options.get("idempotency_key"), options.get("meta")
    limit_key, unique = options.get("limit_key"), options.get("unique")
    if run_at is not None and delay is not None:
        raise UsageError("give either a delay or a run_at time, not both")
    if run_at is None:
        run_at = time.time() + (delay or 0.0)
    # The bounds every store can hold (`apalis_cli.bounds`), checked before anything is written.
    if (
        not (PRIORITY.low <= priority <= PRIORITY.high and EARLIEST_TIME <= run_at <= LATEST_TIME)
        or (max_attempts is not None and not ATTEMPTS.low <= max_attempts <= ATTEMPTS.high)
        or (idempotency_key is not None and len(idempotency_key) > KEY_LENGTH)
        or (task_id is not None and len(task_id) > ID_LENGTH)
    ):
        _refuse(priority, max_attempts, run_at, idempotency_key, task_id)
    return NewTask(
        id=task_id or new_task_id(),
        payload=payload,
        run_at=run_at,
        priority=priority,
        max_attempts=max_attempts if max_attempts is not None else default_max_attempts,
        idempotency_key=idempotency_key,
        meta=dict(meta) if meta else {},
        limit_key=None if limit_key is None else str(limit_key)[:KEY_LENGTH],
        unique=None if unique is None else unique_from(unique),
        waited=options.get("waited", False),
    )


def _refuse(priority: int, max_attempts: int | None, run_at: float, key: str | None, task_id: str | None) -> None:
    try:
        PRIORITY.check(priority)
    except ValueError as exc:
        raise UsageError(f"priority {exc}") from None
    try:
        ATTEMPTS.check(max_attempts if max_attempts is not None else 1)
    except ValueError as exc:
        raise UsageError(f"max_attempts {exc}") from None
    try:
        check_time(run_at)
    except ValueError as exc:
        raise UsageError(f"the run time (run_at or now + delay) {exc}") from None
    try:
        check_length(key or "", KEY_LENGTH)
    except ValueError as exc:
        raise UsageError(f"idempotency_key {exc}") from None
    try:
        check_length(task_id or "", ID_LENGTH)
    except ValueError as exc:
        raise UsageError(f"task_id {exc}") from None


class PushMixin:
    """Implements the `TaskSink` conveniences; the class provides `codec`, `max_attempts` and
    `enqueue`."""

    codec: Codec
    max_attempts: int

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """The store's insert of encoded tasks (implemented by the store)."""
        raise NotImplementedError

    async def push(self, args: Any, **options: Unpack[PushOptions]) -> TaskId:
        """Encode `args` and enqueue it."""
        return await self.push_compact(self.codec.encode(args), **options)

    async def push_compact(self, compact: bytes, **options: Unpack[PushOptions]) -> TaskId:
        """Enqueue already-encoded bytes."""
        task = new_task(compact, default_max_attempts=self.max_attempts, **options)
        if task.unique is not None:
            _require_unique(self)
        ids = await self.enqueue([task])
        return ids[0]

    async def push_bulk(self, items: Iterable[Any], **options: Unpack[PushOptions]) -> list[TaskId]:
        """Encode and enqueue many values with the same options, in one `enqueue` call."""
        if any(options.get(name) is not None for name in ("task_id", "idempotency_key", "unique")):
            raise UsageError("push_bulk takes no task_id, idempotency_key or unique: they must be unique per task")
        encode = self.codec.encode
        tasks = [new_task(encode(item), default_max_attempts=self.max_attempts, **options) for item in items]
        return await self.enqueue(tasks) if tasks else []


def _require_unique(sink: object) -> None:
    """A store that would not check a unique key refuses it, rather than make duplicates."""
    from .backend import Capabilities, Capability

    capabilities = getattr(sink, "capabilities", Capabilities())
    if not capabilities.has(Capability.UNIQUE):
        raise Unsupported(f"this store cannot push a unique task: {capabilities.why_not(Capability.UNIQUE)}")
