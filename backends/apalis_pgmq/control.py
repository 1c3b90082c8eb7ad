"""The control plane of a pgmq queue: cancel, pause, wait and bulk actions, in the same database.

pgmq has no status column, no paused flag and no notification of a finished message, so apalis
keeps what it needs next to it, never altering pgmq's own tables' shape:
- a cancel is a patch of the message's "apalis" headers: a waiting message is marked cancelled
  and archived in the transaction that finds it waiting (`mark` locks the row, so it waits for a
  claim that holds it and then sees that claim's result: a claim and a cancel never both
  win); a running one keeps `cancel: <reason>` in its headers, which its worker's heartbeat reads
  back, and its worker is told at once on the control channel;
- the paused flag is a row of `apalis_pgmq.queues`, read by the claim itself (`read`), in the
  snapshot it reads the messages in;
- waiters are woken by a NOTIFY in every transaction that archives tasks of their queue.

The control channel is `apalis_pgmq` (one LISTEN per store, see `connection.py`); a message is
`c <queue> <msg_id> <reason>` (cancel a run), `p <queue> 1|0` (paused or resumed) or
`f <queue>` (tasks of the queue became final).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from apalis_cli.control import DEFAULT_CANCEL_REASON, BulkAction, BulkFilter, CancelResult, bulk_reason
from apalis_cli.polling import woken
from apalis_cli.task import Status, Task, TaskId
from apalis_sql import told_reason

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .connection import Connection

__all__ = ["PgmqControl"]

_BATCH = 5000
"""Ids per statement of a bulk action."""
_POLL_WITHOUT_PUSH = 0.05
_RECHECK_WITH_PUSH = 1.0
"""A waiter looks again this often even while notifications arrive: one missed while the
listener reconnected costs at most that long."""
_WAITING = ["pending", "failed"]
_WAIT_ROW_SLACK = 60.0
_WAIT_ROW_FOREVER = 86400.0
"""A waiter's row outlives its timeout by a minute (a day without one), should it die."""


class PgmqControl:
    """The control half of a `PgmqQueue`: `Canceller`, `Pausable`, `Waiter`, `BulkActor`."""

    queue: str
    _connection: Connection
    _sql: dict[str, str]

    async def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # the queue's

    if TYPE_CHECKING:

        async def get(self, task_id: TaskId) -> Task[bytes] | None:
            """The inspector half's (`PgmqInspector.get`)."""

    async def _in_transaction(self, steps: Any) -> Any:
        """`steps(conn, sql)` in one transaction on a pooled connection (queue made sure of)."""
        await self._connection.ensure_queue(self.queue)
        sql = self._sql

        async def op(conn: AsyncConnection[Any]) -> Any:
            async with conn.transaction():
                return await steps(conn, sql)

        return await self._connection.run(op)

    # -- cancel ----------------------------------------------------------------------------

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """A waiting message is cancelled and archived at once; a running one's worker is told."""
        if not task_id.isdigit():
            return CancelResult.not_found()
        msg_id = int(task_id)
        cancelled, requested = await self._cancel([msg_id], reason, waiting=True, running=True)
        if cancelled:
            return CancelResult.cancelled()
        if requested:
            return CancelResult.requested()
        rows = await self._rows("final_status", {"ids": [msg_id]})
        return CancelResult.already_final(Status(rows[0][1])) if rows else CancelResult.not_found()

    async def _cancel(
        self, ids: Sequence[int], reason: str, *, waiting: bool, running: bool
    ) -> tuple[list[int], list[int]]:
        """Cancel the waiting ones of `ids` and request the cancel of the running ones, in one
        transaction; returns (cancelled, requested)."""
        queue = self.queue
        patch = json.dumps({"status": "cancelled", "error": reason}, ensure_ascii=False)

        async def steps(conn: AsyncConnection[Any], sql: dict[str, str]) -> tuple[list[int], list[int]]:
            cancelled: list[int] = []
            requested: list[int] = []
            if waiting:
                params = {"queue": queue, "ids": list(ids), "statuses": _WAITING, "patch": patch}
                cur = await conn.execute(sql["mark"], params)
                cancelled = [row[0] for row in await cur.fetchall()]
                if cancelled:
                    await conn.execute(sql["archive_marked"], {"queue": queue, "ids": cancelled})
            if running:
                params = {"queue": queue, "ids": list(ids), "reason": reason, "told": told_reason(reason)}
                cur = await conn.execute(sql["request_cancel"], params)
                requested = [row[0] for row in await cur.fetchall()]
            return cancelled, requested

        result: tuple[list[int], list[int]] = await self._in_transaction(steps)
        return result

    async def _end(self, ids: Sequence[int], statuses: Sequence[str], patch: dict[str, Any]) -> int:
        """Mark `ids` (those in `statuses` now) with `patch` (killed or cancelled) and archive
        them, in one transaction; returns how many."""
        queue = self.queue
        text = json.dumps(patch, ensure_ascii=False)

        async def steps(conn: AsyncConnection[Any], sql: dict[str, str]) -> int:
            params = {"queue": queue, "ids": list(ids), "statuses": list(statuses), "patch": text}
            cur = await conn.execute(sql["mark"], params)
            marked = [row[0] for row in await cur.fetchall()]
            if marked:
                await conn.execute(sql["archive_marked"], {"queue": queue, "ids": marked})
            return len(marked)

        ended: int = await self._in_transaction(steps)
        return ended

    # -- pause -----------------------------------------------------------------------------

    async def pause(self) -> None:
        """Claims of this queue read nothing from now on, in every process (`apalis_pgmq.queues`)."""
        await self._rows("set_paused", {"paused": True})

    async def resume(self) -> None:
        """Claims read again; waiting pollers everywhere are woken (NOTIFY)."""
        await self._rows("set_paused", {"paused": False})
        self._connection.waker(self.queue).notify()

    async def paused(self) -> bool:
        """True while the queue is paused."""
        rows = await self._rows("is_paused", {})
        return bool(rows and rows[0][0])

    # -- wait ------------------------------------------------------------------------------

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once archived (done, killed or cancelled), woken by the NOTIFY of the
        transaction that archived it (sent because this waiter's row in `apalis_pgmq.waits`
        names the task); None on timeout or for an unknown id."""
        if not task_id.isdigit():
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        pushed = await self._connection.control_listening()
        finals = self._connection.hub.finals(self.queue)
        event = finals.subscribe()
        within = _WAIT_ROW_SLACK + (timeout if timeout is not None else _WAIT_ROW_FOREVER)
        rows: list[tuple[Any, ...]] = []
        if pushed:
            rows = await self._rows("wait_begin", {"id": int(task_id), "within": within})
            await self._rows("wait_settle", {"id": int(task_id)})
        try:
            while True:
                event.clear()
                task = await self.get(task_id)
                if task is None:
                    return None
                if task.ctx.status.is_final:
                    return task
                pause = _RECHECK_WITH_PUSH if pushed else _POLL_WITHOUT_PUSH
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    pause = min(pause, left)
                await woken(event, pause)
        finally:
            finals.unsubscribe(event)
            if rows:
                with contextlib.suppress(Exception):  # it expires by itself otherwise
                    await self._rows("wait_end", {"wait": rows[0][0]})

    # -- bulk ------------------------------------------------------------------------------

    async def bulk(
        self, action: BulkAction, where: BulkFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """`action` on every task `where` matches, oldest first, a statement per 5,000 tasks."""
        kept = bulk_reason(action, reason)
        statuses = sorted(status.value for status in where.statuses_for(action))
        if not statuses:
            return 0
        params = {
            "statuses": statuses,
            "since": where.since,
            "until": where.until,
            "error": where.error_contains,
            "limit": where.limit,
        }
        rows = await self._rows("bulk_select", params)
        if dry_run:
            return len(rows)
        live = [msg_id for src, msg_id in rows if src == "q"]
        archived = [msg_id for src, msg_id in rows if src == "a"]
        done = 0
        for chunk in _chunks(live):
            done += await self._bulk_live(action, chunk, statuses, kept)
        for chunk in _chunks(archived):
            done += await self._bulk_archived(action, chunk, statuses)
        if done and action is BulkAction.RETRY:
            self._connection.waker(self.queue).notify()
        return done

    async def _bulk_live(self, action: BulkAction, ids: list[int], statuses: list[str], reason: str) -> int:
        if action is BulkAction.RETRY:
            return len(await self._rows("retry_failed", {"ids": ids}))
        if action is BulkAction.KILL:
            return await self._end(ids, statuses, {"status": "killed", "error": reason})
        if action is BulkAction.CANCEL:
            waiting = bool(set(_WAITING) & set(statuses))
            cancelled, requested = await self._cancel(
                ids, reason, waiting=waiting, running=Status.RUNNING.value in statuses
            )
            return len(cancelled) + len(requested)
        rows = await self._rows("bulk_delete_live", {"ids": ids, "statuses": statuses})
        return int(rows[0][0]) if rows else 0

    async def _bulk_archived(self, action: BulkAction, ids: list[int], statuses: list[str]) -> int:
        if action is BulkAction.RETRY:
            return len(await self._rows("retry_killed", {"ids": ids}))
        if action is BulkAction.PURGE:
            rows = await self._rows("bulk_delete_archived", {"ids": ids, "statuses": statuses})
            return int(rows[0][0]) if rows else 0
        return 0  # cancel and kill take no archived (final) task


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[start : start + _BATCH] for start in range(0, len(ids), _BATCH)]
