"""Claims: tasks locked for one worker, in the caller's transaction, and those claimed ahead.

A commit waits for the server's redo-log flush, which costs milliseconds, far more than a round
trip. So the transaction that acknowledges a worker's finished runs also claims as many new
tasks as those runs free slots (never more: backpressure holds), and the worker's poll stream
takes them from its `Ahead` before it claims on its own: a busy worker pays one commit per
batch, not two. Tasks claimed ahead count as running for the worker's heartbeat (they are not
lost claims) and go back to the queue when the stream closes.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.task import Status, Task
from apalis_sql import task_from_row

__all__ = ["Ahead", "claim", "wanted"]

Cursor = Any  # asyncmy ships no usable annotations for its Cython classes


class Ahead:
    """Tasks claimed for one polling worker alongside its acknowledgements, not yet handed out."""

    __slots__ = ("open", "tasks", "worker_id")

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.tasks: deque[Task[bytes]] = deque()
        self.open = True

    def take(self, limit: int) -> list[Task[bytes]]:
        """Up to `limit` of the tasks claimed ahead, in claim order."""
        return [self.tasks.popleft() for _ in range(min(limit, len(self.tasks)))]


async def claim(cursor: Cursor, sql: Mapping[str, str], queue: str, worker_id: str, limit: int) -> list[Task[bytes]]:
    """Lock up to `limit` ready tasks of `queue` for `worker_id`; run inside a transaction, so
    the rows `FOR UPDATE SKIP LOCKED` picks stay locked until the UPDATE that claims them."""
    await cursor.execute(sql["claim_select"], {"queue": queue, "limit": limit})
    rows = await cursor.fetchall()
    if not rows:
        return []
    ids = [row[0] for row in rows]
    await cursor.execute(sql["claim_update"].replace("{ids}", ", ".join(["%s"] * len(ids))), [worker_id, *ids])
    return [_claimed(task_from_row(row), worker_id) for row in rows]


def wanted(ahead: Mapping[str, Ahead], items: Sequence[tuple[Task[Any], Outcome]]) -> list[tuple[Ahead, int]]:
    """How many tasks to claim ahead per polling worker: the slots its finished runs free, less
    what it already holds."""
    freed: dict[str, int] = {}
    for task, outcome in items:
        lock = task.ctx.lock_by
        if lock is not None and outcome.kind is not OutcomeKind.RELEASE:  # a release: it is stopping
            freed[lock] = freed.get(lock, 0) + 1
    out = []
    for lock, count in freed.items():
        holder = ahead.get(lock)
        if holder is not None and holder.open and count > len(holder.tasks):
            out.append((holder, count - len(holder.tasks)))
    return out


def _claimed(task: Task[bytes], worker_id: str) -> Task[bytes]:
    """The selected row as the claim's UPDATE left it."""
    ctx = dataclasses.replace(task.ctx, status=Status.RUNNING, attempts=task.ctx.attempts + 1, lock_by=worker_id)
    return Task(id=task.id, args=task.args, ctx=ctx)
