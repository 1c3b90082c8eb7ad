"""Inspecting and administering one queue of a SQL store, written once.

Plain named statements on the tasks and workers tables (`get_task`, `stats`, `workers`,
`retry`, `kill`, `purge`) and the board's pages and activity (`browse`): `StatementInspector`
runs them through three hooks, which `SqlInspector` fills with the server stores' `SqlDatabase`
(PostgreSQL, MySQL/MariaDB) and SQLite's inspector with its own connection. Every statement is
given the same parameters; each dialect uses those it needs (SQLite takes its times from this
host, `now` and `cutoff`; the servers from their own clock). A retry wakes the queue's pollers:
here at once, elsewhere through the store's push path where it has one (PostgreSQL's `retry`
statement NOTIFYs), else by polling.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.browsing import PageCursor, QueueActivity, TaskSearch
from apalis_cli.control import DEFAULT_KILL_REASON
from apalis_cli.task import Status, Task, TaskId

from .browse import browse_tasks, queue_activity
from .database import SqlDatabase
from .rows import stats_from_rows, task_from_row, worker_from_row

__all__ = ["SqlInspector", "StatementInspector"]


class StatementInspector:
    """`Inspector`, `TaskBrowser` and `ActivitySource` of one queue, as named statements run
    through `_fetch` and `_execute`; `_woken` wakes the queue's pollers in this process."""

    queue: str

    async def _fetch(self, name: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        raise NotImplementedError

    async def _execute(self, name: str, params: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def _woken(self) -> None:
        raise NotImplementedError

    async def _killed(self) -> None:
        """A task was killed: tell whom the store tells (nobody, unless overridden)."""

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Tasks of the queue (optionally of one status), by run_at: the first pages by keyset."""
        return (await self.browse(TaskSearch(status=status), limit=offset + limit))[offset:]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id."""
        rows = await self._fetch("get_task", {"queue": self.queue, "id": task_id})
        return task_from_row(rows[0]) if rows else None

    async def stats(self) -> QueueStats:
        """How many tasks the queue holds in each status (and how many wait for their time)."""
        return stats_from_rows(self.queue, await self._fetch("stats", {"queue": self.queue, "now": time.time()}))

    async def workers(self) -> list[WorkerInfo]:
        """The workers registered on this queue."""
        return [worker_from_row(row) for row in await self._fetch("workers", {"queue": self.queue})]

    async def retry(self, task_id: TaskId) -> bool:
        """A failed, killed or cancelled task runs again now with a fresh count of attempts;
        False when there is no such task."""
        changed = await self._execute("retry", {"queue": self.queue, "id": task_id, "now": time.time()})
        if changed:
            self._woken()
        return changed > 0

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """Kill a task that has not finished; False when there is none, or it is final."""
        params = {"queue": self.queue, "id": task_id, "reason": reason, "now": time.time()}
        killed = await self._execute("kill", params) > 0
        if killed:
            await self._killed()
        return killed

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete tasks of `status` finished (or made) more than `older_than` seconds ago."""
        age = older_than or 0.0
        params = {"queue": self.queue, "status": Status(status).value, "older_than": age, "cutoff": time.time() - age}
        return await self._execute("purge", params)

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


class SqlInspector(StatementInspector):
    """The `Inspector` half of a `SqlQueue`: its statements run through the store's `SqlDatabase`."""

    _db: SqlDatabase

    async def _fetch(self, name: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return await self._db.fetch(name, params)

    async def _execute(self, name: str, params: Mapping[str, Any]) -> int:
        return await self._db.execute(name, params)

    def _woken(self) -> None:
        self._db.waker(self.queue).notify()

    async def _killed(self) -> None:
        await self._db.notify_control()
