"""The SQLite queue's control plane (`apalis_cli.control`): cancel, pause, wait and bulk actions.

A cancel of a task that has not started is one UPDATE conditioned on its status, as the claim
is: SQLite's write lock orders the two, so a cancelled task never starts. A running task's
cancel is recorded on its row (`cancel_reason`) and its worker told: at once in this process,
through the cancel doorbell in the others (`bells.py`), and by every heartbeat anyway. Pause is
a row of the `queues` table that the claim statement reads. A waiter reads its task again each
time the done doorbell rings. A bulk action is one statement per batch of `_BATCH` tasks, each
batch its own short transaction so other writers get their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from apalis_cli.browsing import like_pattern
from apalis_cli.control import DEFAULT_CANCEL_REASON, BulkAction, BulkFilter, CancelResult, bulk_reason
from apalis_cli.task import Status, Task, TaskId
from apalis_sql import Queries, task_from_row

from .bells import Bells
from .connection import Database
from .signal import QueueSignal

__all__ = ["SqliteControl"]

_BATCH = 10_000
"""Tasks per bulk statement: each holds the write lock for tens of milliseconds at most."""
_POLL = 0.05
"""How often a waiter reads its task when no doorbell can be heard."""
_RECHECK = 1.0
"""How often a waiter reads its task anyway while doorbells are heard (a bell lost to a full
inotify queue costs this much, not the whole timeout)."""


class SqliteControl:
    """Control-plane methods over the queue's `_db`, `_q`, `queue`, `_signal`, `_bells` and `_watch`
    (which starts hearing other processes' doorbells)."""

    queue: str
    _db: Database
    _q: Queries
    _signal: QueueSignal
    _bells: Bells
    _watch: Callable[[], None]

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """Cancel `task_id`: at once if it has not started, by telling its worker if it runs."""
        q, params = self._q, {"queue": self.queue, "id": task_id, "reason": reason, "now": time.time()}

        def work(conn: sqlite3.Connection) -> tuple[CancelResult, str | None]:
            if conn.execute(q.cancel_waiting, params).rowcount:
                return CancelResult.cancelled(), None
            row = conn.execute(q.cancel_running, params).fetchone()
            if row is not None:
                return CancelResult.requested(), row[0]
            found = conn.execute(q.task_status, params).fetchone()
            return (CancelResult.not_found() if found is None else CancelResult.already_final(Status(found[0]))), None

        result, lock_by = await self._db.write(work)
        if result == CancelResult.cancelled():
            self._bells.ended()
        elif result == CancelResult.requested():
            self._bells.cancel_requested([(task_id, reason, lock_by)])
        return result

    async def pause(self) -> None:
        """Claims hand out nothing from now on, in every process (the claim reads the row)."""
        await self._set_paused(True)

    async def resume(self) -> None:
        """Claims hand out tasks again; pollers here are woken (and elsewhere, by the WAL watch)."""
        await self._set_paused(False)
        self._signal.notify()

    async def paused(self) -> bool:
        """True while the queue is paused."""
        sql, params = self._q.is_paused, {"queue": self.queue}
        row = await self._db.read(lambda conn: conn.execute(sql, params).fetchone())
        return bool(row and row[0])

    async def _set_paused(self, paused: bool) -> None:
        sql, params = self._q.set_paused, {"queue": self.queue, "paused": int(paused), "now": time.time()}
        await self._db.write(lambda conn: conn.execute(sql, params).rowcount)

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once it is done, killed or cancelled; None after `timeout` seconds or when
        there is no such task. Read again each time the done doorbell rings."""
        self._watch()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        event = self._bells.finished.subscribe()
        try:
            while True:
                event.clear()  # before the read: a bell during the read is not lost
                task = await self._task(task_id)
                if task is None or task.ctx.status.is_final:
                    return task
                every = _RECHECK if self._bells.watching() else _POLL
                left = every if deadline is None else min(deadline - loop.time(), every)
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await event.wait()
        finally:
            self._bells.finished.unsubscribe(event)

    async def _task(self, task_id: TaskId) -> Task[bytes] | None:
        sql, params = self._q.get_task, {"queue": self.queue, "id": task_id}
        row = await self._db.read(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None else task_from_row(row)

    async def bulk(
        self, action: BulkAction, where: BulkFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """Apply `action` to every task `where` matches, one statement per batch of `_BATCH`."""
        kept = bulk_reason(action, reason)
        statuses = where.statuses_for(action)
        if not statuses or (where.limit is not None and where.limit <= 0):
            return 0
        params: dict[str, Any] = {
            "queue": self.queue,
            "statuses": json.dumps(sorted(s.value for s in statuses)),
            "since": where.since,
            "until": where.until,
            "pattern": like_pattern(where.error_contains) if where.error_contains else None,
            "reason": kept,
            "cancel": action is BulkAction.CANCEL,
        }
        if dry_run:
            sql = self._q.bulk_count
            counted = {**params, "limit": where.limit if where.limit is not None else -1}
            row = await self._db.read(lambda conn: conn.execute(sql, counted).fetchone())
            return int(row[0])
        sql = self._q[f"bulk_{action.value}"]
        total = 0
        while True:
            batch = _BATCH if where.limit is None else min(_BATCH, where.limit - total)
            done = await self._bulk_batch(action, sql, {**params, "limit": batch, "now": time.time()})
            total += done
            if done < batch or (where.limit is not None and total >= where.limit):
                break
        if total and action is BulkAction.RETRY:
            self._signal.notify()
        if total and action in (BulkAction.CANCEL, BulkAction.KILL):
            self._bells.ended()
        return total

    async def _bulk_batch(self, action: BulkAction, sql: str, params: dict[str, Any]) -> int:
        """One statement over at most `params["limit"]` tasks (a mapping may hold more names
        than the statement uses)."""
        if action is not BulkAction.CANCEL:
            return await self._db.write(lambda conn: conn.execute(sql, params).rowcount)
        rows = await self._db.write(lambda conn: conn.execute(sql, params).fetchall())
        reason = params["reason"]
        self._bells.cancel_requested(
            [(task_id, reason, lock_by) for task_id, status, lock_by in rows if status == "running"]
        )
        return len(rows)
