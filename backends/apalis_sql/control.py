"""The control plane of the server-backed SQL stores, written once: cancel, pause, wait, bulk.

- Cancel: one UPDATE cancels a task that has not started (`status IN ('pending', 'failed')`):
  the claim is an UPDATE of the same rows, so one of the two wins and a cancelled task never
  starts. A running task gets the request (`cancel_reason`) and its worker is told through the
  server's push path (PostgreSQL: a NOTIFY on the control channel; MySQL: a signal to the
  control listeners, `notify_control`; both within milliseconds), in this process directly, and
  by the answer to each of its heartbeats in any case.
- Pause: a `queues` row, read by every claim statement, so every worker on every host obeys it
  at its next claim; a resume wakes the pollers as a push does.
- Wait: the task is marked as waited for (the end of such a task is told: NOTIFYd by the
  statement on PostgreSQL, signalled by the ack on MySQL), then read; a waiter sleeps until
  woken or its store's poll interval (`SqlDatabase.wait_polls`).
- Bulk: one statement per batch of `SqlDatabase.bulk_batch` tasks, the filter in its WHERE.
"""

from __future__ import annotations

import asyncio
from typing import Any

from apalis_cli.browsing import like_pattern
from apalis_cli.control import DEFAULT_CANCEL_REASON, BulkAction, BulkFilter, CancelResult, bulk_reason
from apalis_cli.polling import woken
from apalis_cli.task import Status, Task, TaskId

from .database import SqlDatabase, told_reason
from .rows import task_from_row

__all__ = ["SqlControl"]

_WAITING = frozenset({Status.PENDING, Status.FAILED})
_NO_LIMIT = 2**62  # a LIMIT every server takes, past any count of tasks
_STATEMENTS = {
    BulkAction.RETRY: "bulk_retry",
    BulkAction.KILL: "bulk_end",
    BulkAction.CANCEL: "bulk_end",
    BulkAction.PURGE: "bulk_purge",
}


class SqlControl:
    """`Canceller`, `Pausable`, `Waiter` and `BulkActor` of a `SqlQueue`."""

    queue: str
    _db: SqlDatabase

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """Cancel `task_id`: at once if it has not started, by asking its worker if it runs."""
        db = self._db
        params = {"queue": self.queue, "id": task_id, "reason": reason, "told": told_reason(reason)}
        while True:  # each turn ends unless a claim or a release moved the task meanwhile
            if await db.execute("cancel_waiting", params):
                db.controls.ended(task_id)
                await db.notify_control()
                return CancelResult.cancelled()
            requested = await db.execute("cancel_running", params) > 0
            if requested:
                await db.notify_control()
            rows = await db.fetch("task_status", params)
            if requested:  # whatever it is now: its worker may have stopped it already
                if rows and rows[0][0] == Status.RUNNING.value:
                    db.controls.cancel(rows[0][1], task_id, reason)  # a worker of this process: at once
                return CancelResult.requested()
            if not rows:
                return CancelResult.not_found()
            status = Status(rows[0][0])
            if status.is_final:
                return CancelResult.already_final(status)

    async def pause(self) -> None:
        """Claims of this queue hand out nothing from now on, on every host."""
        await self._db.execute("set_paused", {"queue": self.queue, "paused": True})
        self._tell_paused(True)

    async def resume(self) -> None:
        """Claims hand out tasks again; waiting workers are woken."""
        await self._db.execute("set_paused", {"queue": self.queue, "paused": False})
        self._tell_paused(False)
        await self._db.notify(self.queue)

    async def paused(self) -> bool:
        """True while the queue is paused."""
        rows = await self._db.fetch("paused", {"queue": self.queue})
        return bool(rows and rows[0][0])

    def _tell_paused(self, paused: bool) -> None:
        for worker in list(self._db.controls.workers.values()):
            if worker.queue == self.queue:
                worker.on_paused(paused)

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once it is done, killed or cancelled; None after `timeout` seconds or for an
        unknown id."""
        db = self._db
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        first, cap = db.wait_polls
        params = {"queue": self.queue, "id": task_id}
        with db.controls.waiting(task_id) as ended:
            await db.listening()  # before the task is marked and read: no end goes unheard
            rows = await db.fetch("watch", params)
            pause = first
            while rows:
                task = task_from_row(rows[0])
                if task.ctx.status.is_final:
                    return task
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return None
                await woken(ended, pause if left is None else min(pause, left))
                ended.clear()
                pause = min(pause * 2, cap)
                rows = await db.fetch("get_task", params)
            return None

    async def bulk(
        self, action: BulkAction, where: BulkFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """Apply `action` to the tasks `where` matches, a statement per batch; how many it
        changed (with `dry_run`, would change)."""
        kept = bulk_reason(action, reason)
        db = self._db
        statuses = where.statuses_for(action)
        base: dict[str, Any] = {
            "queue": self.queue,
            "since": where.since,
            "until": where.until,
            "pattern": like_pattern(where.error_contains) if where.error_contains else None,
            "reason": kept,
            "told": told_reason(kept),
            "status": Status.CANCELLED.value if action is BulkAction.CANCEL else Status.KILLED.value,
            "fresh": False,
        }
        steps: list[tuple[str, frozenset[Status], bool]] = [(_STATEMENTS[action], statuses, False)]
        if action is BulkAction.CANCEL:  # waiting tasks are cancelled, running ones asked (once)
            steps = [("bulk_end", statuses & _WAITING, False), ("bulk_cancel_running", statuses - _WAITING, True)]
        total = 0
        for name, matched, fresh in steps:
            left = None if where.limit is None else where.limit - total
            if not matched or left == 0:
                continue
            params = {**base, "statuses": sorted(s.value for s in matched), "fresh": fresh}
            if dry_run:
                rows = await db.fetch("bulk_count", {**params, "batch": _NO_LIMIT if left is None else left})
                total += int(rows[0][0])
                continue
            while left is None or left > 0:
                batch = db.bulk_batch if left is None else min(db.bulk_batch, left)
                changed = await db.execute(name, {**params, "batch": batch})
                total += changed
                left = None if left is None else left - changed
                if changed < batch:
                    break
        if action is BulkAction.RETRY and total and not dry_run:
            db.waker(self.queue).notify()
        elif total and not dry_run and action is not BulkAction.PURGE:
            await db.notify_control()
        return total
