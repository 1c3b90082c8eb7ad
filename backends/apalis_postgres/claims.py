"""Claims ahead: tasks claimed for a polling worker by the statement that acknowledges its runs.

A busy worker would otherwise wait for two round trips and two commits per batch: one to
acknowledge the runs that ended, one to claim the tasks for the slots they freed. `ack.sql`
does both, claiming as many tasks as those runs free (never more: backpressure holds), and the
worker's poll stream takes them from its `Ahead` before it claims on its own. Tasks claimed
ahead count as running for the worker's heartbeat (they are not lost claims) and go back to
the queue when the stream closes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.task import Task

__all__ = ["Ahead", "wanted"]


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
