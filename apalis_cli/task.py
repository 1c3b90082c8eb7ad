"""The task as the worker and the stores see it: identity, payload, and its context.

Times are epoch seconds (`float`) everywhere inside the system: they are cheap to compare on the
hot path and every store can hold them; the CLI renders them as ISO 8601.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar, final

_bits = random.getrandbits

__all__ = ["Args", "Status", "Task", "TaskContext", "TaskId", "iso", "new_task_id"]

Args = TypeVar("Args")
TaskId = str


class Status(StrEnum):
    """Where a task is in its life: pending -> running -> done | failed (runs again) | killed,
    and cancelled (by an operator, from pending, failed or running: never retried)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    KILLED = "killed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a task never leaves by itself."""
        return self in _FINAL


_FINAL = frozenset({Status.DONE, Status.KILLED, Status.CANCELLED})


@final  # its __init__ relies on the layout of exactly these slots
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class TaskContext:
    """Everything the store knows about a task besides its payload.

    `attempts` counts the runs started so far: it is 1 while the first run is in progress, and a
    task whose `attempts` reached `max_attempts` is killed instead of retried.

    `cancelled` turns true, in the worker running the task, once an operator cancelled this run
    (`cancel_reason` says why): a sync handler running in a thread, which nothing can interrupt,
    polls it and returns early; an async handler gets `CancelledError` instead.
    """

    queue: str
    status: Status = Status.PENDING
    attempts: int = 0
    max_attempts: int = 1
    run_at: float = 0.0
    priority: int = 0
    idempotency_key: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    lock_by: str | None = None
    last_error: str | None = None
    result: Any = None
    created_at: float = 0.0
    done_at: float | None = None
    cancel_reason: str | None = field(default=None, init=False, compare=False, repr=False)

    def __init__(
        self,
        *,
        queue: str,
        status: Status = Status.PENDING,
        attempts: int = 0,
        max_attempts: int = 1,
        run_at: float = 0.0,
        priority: int = 0,
        idempotency_key: str | None = None,
        meta: Mapping[str, Any] | None = None,
        lock_by: str | None = None,
        last_error: str | None = None,
        result: Any = None,
        created_at: float = 0.0,
        done_at: float | None = None,
    ) -> None:
        # One is built for every task a store hands out. The generated __init__ of a frozen
        # dataclass sets each field through object.__setattr__ (~3 µs for these 13); writing the
        # slots while the object is its unfrozen twin costs a third of that. Still frozen after.
        cls = type(self)
        object.__setattr__(self, "__class__", _UnfrozenContext)
        ctx: Any = self
        ctx.queue = queue
        ctx.status = status
        ctx.attempts = attempts
        ctx.max_attempts = max_attempts
        ctx.run_at = run_at
        ctx.priority = priority
        ctx.idempotency_key = idempotency_key
        ctx.meta = {} if meta is None else meta
        ctx.lock_by = lock_by
        ctx.last_error = last_error
        ctx.result = result
        ctx.created_at = created_at
        ctx.done_at = done_at
        ctx.cancel_reason = None
        object.__setattr__(self, "__class__", cls)

    @property
    def cancelled(self) -> bool:
        """True once this run was cancelled: a handler that sees it should return soon."""
        return self.cancel_reason is not None

    def mark_cancelled(self, reason: str) -> None:
        """Set `cancelled` (the worker does, when a store tells it of a cancel): the one field
        that changes, read by a handler's thread while the loop writes it."""
        object.__setattr__(self, "cancel_reason", reason)

    @property
    def attempts_left(self) -> int:
        """How many more runs this task may have after the current one."""
        return max(self.max_attempts - self.attempts, 0)


@final  # as TaskContext
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Task(Generic[Args]):
    """A unit of work: its id, its arguments (decoded, or compact bytes) and its context."""

    id: TaskId
    args: Args
    ctx: TaskContext

    def __init__(self, *, id: TaskId, args: Args, ctx: TaskContext) -> None:
        # Built for every task handed out, like its context: see TaskContext.__init__.
        cls = type(self)
        object.__setattr__(self, "__class__", _UnfrozenTask)
        task: Any = self
        task.id = id
        task.args = args
        task.ctx = ctx
        object.__setattr__(self, "__class__", cls)


class _UnfrozenContext:
    """TaskContext's slots without its frozen __setattr__: only ever seen inside its __init__."""

    __slots__ = TaskContext.__slots__


class _UnfrozenTask(Generic[Args]):
    """Task's slots without its frozen __setattr__: only ever seen inside its __init__."""

    __slots__ = Task.__slots__


class _IdSource:
    """What makes this process's ids unique and ordered: 40 random bits drawn once per process
    (again in a forked child, which must not repeat its parent's ids) and a counter."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        """Start a new sequence, for a new process."""
        self.process = _bits(40)
        self.middle = self.process << 32  # the process's bits where an id holds them
        self.counter = itertools.count()


_ids = _IdSource()
os.register_at_fork(after_in_child=_ids.renew)


def new_task_id() -> TaskId:
    """A 30-character, time-ordered, URL-safe id: 48 bits of milliseconds, then 40 bits that
    are random per process and a 32-bit counter, in hex.

    Ids made by one process sort in the order they were made, also within a millisecond: stores
    break ties between tasks of equal priority and run_at by id, so tasks pushed together (with
    one `--at`) run first in, first out. Hex rather than base32 because Python formats it
    natively: ids are made per pushed task, and `base64.b32encode` alone cost 10x the rest. Ids
    need to be unique, not secret.
    """
    return task_id_at(time.time_ns() // 1_000_000)


def task_id_at(ms: int) -> TaskId:
    """`new_task_id` made at `ms` (epoch milliseconds), for a caller that has read the clock.

    The three fields are one number formatted once: three formats of their own took 10,000
    instructions, 6% of a Redis push one at a time (bench/README.md, "Redis, session 13: a push
    one at a time"). The text is the same (the milliseconds' 12 hex digits, or more after the
    year 10889, then 10 and 8)."""
    return "%030x" % (ms << 72 | _ids.middle | next(_ids.counter) & 0xFFFFFFFF)


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (None stays None)."""
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        # Outside years 1..9999 (written by an older version or another client): shown as the
        # number it is, so that one such task does not break the listing of a whole queue.
        return repr(epoch)
