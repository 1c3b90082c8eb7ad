"""Inspecting and administering one queue of a server-backed SQL store, written once.

Plain named statements on the tasks and workers tables (`get_task`, `stats`, `workers`,
`retry`, `kill`, `purge`) and the board's pages and activity (`browse`), run through the
store's `SqlDatabase`. A retry wakes the queue's pollers: here at once, elsewhere through the
server's push path where it has one (PostgreSQL's `retry` statement NOTIFYs), else by polling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.browsing import PageCursor, QueueActivity, TaskSearch
from apalis_cli.task import Status, Task, TaskId

from .browse import browse_tasks, queue_activity
from .database import SqlDatabase
from .rows import stats_from_rows, task_from_row, worker_from_row

__all__ = ["SqlInspector"]


class SqlInspector:
    """The `Inspector` half of a `SqlQueue` (also a `TaskBrowser` and an `ActivitySource`)."""

    queue: str
    _db: SqlDatabase

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Tasks of the queue (optionally of one status), by run_at: the first pages by keyset."""
        return (await self.browse(TaskSearch(status=status), limit=offset + limit))[offset:]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id."""
        rows = await self._db.fetch("get_task", {"queue": self.queue, "id": task_id})
        return task_from_row(rows[0]) if rows else None

    async def stats(self) -> QueueStats:
        """Counts per status."""
        return stats_from_rows(self.queue, await self._db.fetch("stats", {"queue": self.queue}))

    async def workers(self) -> list[WorkerInfo]:
        """Workers registered on this queue."""
        return [worker_from_row(row) for row in await self._db.fetch("workers", {"queue": self.queue})]

    async def retry(self, task_id: TaskId) -> bool:
        """A failed or killed task runs again now with a fresh count of attempts."""
        changed = await self._db.execute("retry", {"queue": self.queue, "id": task_id})
        if changed:
            self._db.waker(self.queue).notify()
        return changed > 0

    async def kill(self, task_id: TaskId, reason: str = "killed by an operator") -> bool:
        """Kill a task that has not finished."""
        killed = await self._db.execute("kill", {"queue": self.queue, "id": task_id, "reason": reason}) > 0
        if killed:
            await self._db.notify_control()
        return killed

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete tasks of `status` older than `older_than` seconds."""
        params = {"queue": self.queue, "status": status.value, "older_than": older_than or 0.0}
        return await self._db.execute("purge", params)

    async def browse(
        self,
        where: TaskSearch,
        *,
        after: PageCursor | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> list[Task[bytes]]:
        """A page of tasks matching `where`, by (run_at, id), strictly past `after`."""
        return await browse_tasks(
            self._fetch, self.queue, where, after=after, limit=limit, newest_first=newest_first, preview=preview
        )

    async def activity(self, since: float) -> QueueActivity:
        """The oldest ready task's run_at and the tasks finished per minute since `since`."""
        return await queue_activity(self._fetch, self.queue, since)

    async def _fetch(self, name: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return await self._db.fetch(name, params)
