"""Inspection and admin of a pgmq queue: plain SELECTs on `pgmq.q_<name>` and `pgmq.a_<name>`.

Reading the tables never changes a message (unlike `pgmq.read`, which would count an attempt).
Statuses come from the columns and the "apalis" headers (see `sql/status.sql`); messages in
the archive are done, or killed or cancelled when their headers say so (`sql/archived.sql`).
`pgmq.metrics()` counts only queued and visible messages, which cannot tell pending from failed
or running, so `stats` counts the tables itself (the same scan metrics() makes). What pgmq has
no call for (lowering
`read_ct` for a retry, moving a killed message back from the archive) writes the tables directly.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.browsing import PageCursor, QueueActivity, TaskSearch, previewed
from apalis_cli.control import DEFAULT_KILL_REASON
from apalis_cli.task import Status, Task, TaskId
from apalis_sql import queue_activity, worker_from_row

from .messages import task_of

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["PgmqInspector"]

_KILLABLE = ["pending", "failed", "running"]
_FAR = 1e300
_MAX_ID = (1 << 63) - 1


def _msg_id(task_id: TaskId) -> int:
    """A cursor's id as a message id (a cursor of another store's ids sorts before every one)."""
    return int(task_id) if task_id.isdigit() and len(task_id) < 19 else -1


class PgmqInspector:
    """The `Inspector` half of a `PgmqQueue`: the protocol over a pgmq queue's tables (also a
    `TaskBrowser` and an `ActivitySource`: the board's pages and activity)."""

    queue: str
    max_attempts: int
    _connection: Connection
    _sql: dict[str, str]

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError  # the queue's: statements run with a dropped queue made again

    def _task(self, row: tuple[Any, ...]) -> Task[bytes]:
        msg_id, read_ct, enqueued_at, run_at, message, apalis, status, done_at = row
        return task_of(
            self.queue,
            msg_id,
            read_ct,
            message,
            apalis,
            status=Status(status),
            default_max_attempts=self.max_attempts,
            created_at=enqueued_at,
            run_at=run_at,
            done_at=done_at,
        )

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Messages of the queue and its archive, by visibility time."""
        params = {"status": status.value if status else None, "id": None, "limit": limit, "offset": offset}
        return [self._task(row) for row in await self._rows("tasks", params)]

    async def browse(
        self,
        where: TaskSearch,
        *,
        after: PageCursor | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> list[Task[bytes]]:
        """A page of tasks by keyset `(run_at, msg_id)` (the board's; no OFFSET): the task whose
        id or key is the search text, else those whose last error contains it."""
        text = where.text or None
        status = where.status.value if where.status is not None else None
        tasks: list[Task[bytes]] = []
        if text is not None:
            exact = {"id": int(text) if text.isdigit() and len(text) < 19 else None, "search": text}
            tasks = [self._task(row) for row in await self._rows("find_exact", exact)]
            tasks = [t for t in tasks if where.status is None or t.ctx.status is where.status]
            if tasks and after is not None:
                return []
        if not tasks:
            far = (_FAR, _MAX_ID) if newest_first else (-_FAR, -1)
            run_at, msg_id = (after.run_at, _msg_id(after.id)) if after is not None else far
            params = {"status": status, "search": text, "run_at": run_at, "id": msg_id, "limit": limit}
            page = "page_backward" if newest_first else "page_forward"
            return [previewed(self._task(row), preview) for row in await self._rows(page, params)]
        tasks.sort(key=lambda t: (t.ctx.run_at, int(t.id)), reverse=newest_first)
        return [previewed(task, preview) for task in tasks[:limit]]

    async def activity(self, since: float) -> QueueActivity:
        """The oldest due waiting task's run_at, and the archive's done and killed per minute."""
        return await queue_activity(self._rows, self.queue, since)

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One message by id, from the queue or the archive."""
        if not task_id.isdigit():
            return None
        rows = await self._rows("tasks", {"status": None, "id": int(task_id), "limit": 1, "offset": 0})
        return self._task(rows[0]) if rows else None

    async def stats(self) -> QueueStats:
        """Counts per status (queue table and archive)."""
        counts: dict[Status, int | None] = dict.fromkeys(Status, 0)
        scheduled = 0
        for status, count, waiting in await self._rows("stats", {}):
            counts[Status(status)] = (counts[Status(status)] or 0) + count
            scheduled += waiting
        return QueueStats(queue=self.queue, counts=counts, scheduled=scheduled)

    async def workers(self) -> list[WorkerInfo]:
        """Workers registered on this queue in `apalis_pgmq.workers`."""
        rows = await self._rows("list_workers", {})
        return [worker_from_row(row) for row in rows]

    async def retry(self, task_id: TaskId) -> bool:
        """A failed message runs again now with `read_ct` reset; a killed or cancelled one comes
        back from the archive under its own id."""
        if not task_id.isdigit():
            return False
        params = {"ids": [int(task_id)]}
        found = await self._rows("retry_failed", params) or await self._rows("retry_killed", params)
        if found:
            self._connection.waker(self.queue).notify()
        return bool(found)

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """Mark the message killed in its headers and archive it."""
        if not task_id.isdigit():
            return False
        return await self._end([int(task_id)], _KILLABLE, {"status": "killed", "error": reason}) > 0

    if TYPE_CHECKING:

        async def _end(self, ids: Sequence[int], statuses: Sequence[str], patch: dict[str, Any]) -> int:
            """The control half's (`PgmqControl._end`)."""

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete messages of `status` archived (or enqueued, for live ones) before the cutoff."""
        params = {"status": status.value, "cutoff": time.time() - (older_than or 0.0)}
        name = "purge_archive_status" if status.is_final else "purge_queue_status"
        rows = await self._rows(name, params)
        return int(rows[0][0]) if rows else 0
