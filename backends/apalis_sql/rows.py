"""Tasks as rows: the canonical column order, a row -> `Task` mapping, insert parameters.

A store's SELECT/RETURNING lists the `TASK_COLUMNS` in this order and hands each row to
`task_from_row`; its INSERT takes `INSERT_COLUMNS` in order, from `insert_params`. Times are
epoch seconds; a driver that returns `datetime`s (timestamptz) is converted here. Meta is JSON
text (NULL when empty); a result is the JSON text `encode_result` made (a driver that parses
jsonb hands back the value, which is encoded again so `ctx.result` is always text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from apalis_cli.backend import NewTask, QueueStats, WorkerContext, WorkerInfo
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task, TaskContext

__all__ = [
    "INSERT_COLUMNS",
    "TASK_COLUMNS",
    "decode_meta",
    "encode_meta",
    "insert_params",
    "stats_from_rows",
    "task_from_row",
    "worker_from_row",
    "worker_params",
]

TASK_COLUMNS: tuple[str, ...] = (
    "id",
    "queue",
    "payload",
    "status",
    "attempts",
    "max_attempts",
    "run_at",
    "priority",
    "idempotency_key",
    "meta",
    "lock_by",
    "last_error",
    "result",
    "created_at",
    "done_at",
)
"""The columns `task_from_row` expects, in this order."""

INSERT_COLUMNS: tuple[str, ...] = (*TASK_COLUMNS[: TASK_COLUMNS.index("lock_by")], "created_at")
"""The columns of the tuples `insert_params` makes, in this order."""

_STATUS = {status.value: status for status in Status}
_EMPTY: Mapping[str, Any] = {}


def encode_meta(meta: Mapping[str, Any] | None) -> str | None:
    """Meta as JSON text; None when there is none (most tasks)."""
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False) if meta else None


def decode_meta(value: Any) -> Mapping[str, Any]:
    """Meta from JSON text (or an already parsed mapping); empty when NULL."""
    if value is None or value == "":
        return _EMPTY
    if isinstance(value, Mapping):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8")
    decoded = json.loads(value)
    return decoded if isinstance(decoded, Mapping) else {"value": decoded}


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def task_from_row(row: Sequence[Any]) -> Task[bytes]:
    """The task of one row whose columns are `TASK_COLUMNS`, in that order."""
    (
        task_id,
        queue,
        payload,
        status,
        attempts,
        max_attempts,
        run_at,
        priority,
        idempotency_key,
        meta,
        lock_by,
        last_error,
        result,
        created_at,
        done_at,
    ) = row
    if result is not None and not isinstance(result, str):
        result = bytes(result).decode("utf-8") if isinstance(result, bytes | memoryview) else encode_result(result)
    return Task(
        id=str(task_id),
        args=payload if type(payload) is bytes else bytes(payload),
        ctx=TaskContext(
            queue=queue,
            status=_STATUS[status],
            attempts=attempts,
            max_attempts=max_attempts,
            run_at=_epoch(run_at),
            priority=priority,
            idempotency_key=idempotency_key,
            meta=decode_meta(meta),
            lock_by=lock_by,
            last_error=last_error,
            result=result,
            created_at=_epoch(created_at),
            done_at=None if done_at is None else _epoch(done_at),
        ),
    )


def insert_params(queue: str, tasks: Sequence[NewTask], now: float) -> list[tuple[Any, ...]]:
    """One `INSERT_COLUMNS` tuple per new task (status pending, no attempts yet)."""
    pending = Status.PENDING.value
    return [
        (
            t.id,
            queue,
            t.payload,
            pending,
            0,
            t.max_attempts,
            t.run_at,
            t.priority,
            t.idempotency_key,
            encode_meta(t.meta),
            now,
        )
        for t in tasks
    ]


def worker_params(worker: WorkerContext, queue: str) -> dict[str, Any]:
    """A worker's registry row as the `beat` statements take it (the caller adds `running`, and
    SQLite its `now`): the reverse of `worker_from_row`."""
    return {
        "id": worker.id,
        "name": worker.name,
        "queue": queue,
        "host": worker.host,
        "pid": worker.pid,
        "started_at": worker.started_at,
        "layers": json.dumps(list(worker.layers)),
    }


def worker_from_row(row: Sequence[Any]) -> WorkerInfo:
    """A worker registry row (id, name, queue, host, pid, started_at, last_seen, layers, running)
    as a `WorkerInfo`; `layers` may be JSON text or an already-parsed list."""
    wid, name, queue, host, pid, started_at, last_seen, layers, running = row
    if isinstance(layers, str | bytes):
        layers = json.loads(layers or "[]")
    return WorkerInfo(
        id=wid,
        name=name,
        queue=queue,
        host=host,
        pid=pid,
        started_at=_epoch(started_at),
        last_seen=_epoch(last_seen),
        layers=tuple(layers or ()),
        running=running,
    )


def stats_from_rows(queue: str, rows: Sequence[Sequence[Any]]) -> QueueStats:
    """`(status, count, scheduled)` rows as `QueueStats`, `scheduled` counting the row's tasks
    waiting for a run_at still to come; a status without a row counts 0, repeated rows add."""
    counts: dict[Status, int | None] = dict.fromkeys(Status, 0)
    scheduled = 0
    for status, count, waiting in rows:
        counts[Status(status)] = (counts[Status(status)] or 0) + int(count)
        scheduled += int(waiting or 0)
    return QueueStats(queue=queue, counts=counts, scheduled=scheduled)
