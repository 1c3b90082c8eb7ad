"""The SQLite queue as an `Inspector` (peek, count, and the operator's retry, kill and purge), a
`TaskBrowser` and an `ActivitySource` (the board's pages and activity)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.browsing import PageCursor, QueueActivity, TaskSearch
from apalis_cli.task import Status, Task, TaskId
from apalis_sql import (
    Queries,
    browse_tasks,
    queue_activity,
    stats_from_rows,
    task_from_row,
    worker_from_row,
)

from .connection import Database
from .signal import QueueSignal

__all__ = ["SqliteInspector"]


class SqliteInspector:
    """Inspector methods over the queue's `_db`, `_q` (statements), `queue` and `_signal`."""

    queue: str
    _db: Database
    _q: Queries
    _signal: QueueSignal

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Tasks of the queue (optionally of one status), oldest run_at first: the first pages by
        keyset (a listing of every status merges one index range per status instead of sorting)."""
        return (await self.browse(TaskSearch(status=status), limit=offset + limit))[offset:]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id (None when this queue has no such task)."""
        sql, params = self._q.get_task, {"queue": self.queue, "id": task_id}
        row = await self._db.read(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None else task_from_row(row)

    async def stats(self) -> QueueStats:
        """How many tasks the queue holds in each status."""
        sql, params = self._q.stats, {"queue": self.queue, "now": time.time()}
        rows = await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return stats_from_rows(self.queue, rows)

    async def workers(self) -> list[WorkerInfo]:
        """The workers registered on this queue, oldest first."""
        sql, params = self._q.list_workers, {"queue": self.queue}
        rows = await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return [worker_from_row(row) for row in rows]

    async def retry(self, task_id: TaskId) -> bool:
        """Make a failed or killed task pending again now, attempts reset; False if not found."""
        sql, params = self._q.retry, {"queue": self.queue, "id": task_id, "now": time.time()}
        changed = await self._db.write(lambda conn: _rowcount(conn, sql, params))
        if changed:
            self._signal.notify()
        return changed > 0

    async def kill(self, task_id: TaskId, reason: str = "killed by an operator") -> bool:
        """Kill a pending, failed or running task; False if not found or already final."""
        sql = self._q.kill
        params = {"queue": self.queue, "id": task_id, "reason": reason, "now": time.time()}
        return await self._db.write(lambda conn: _rowcount(conn, sql, params)) > 0

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete tasks of `status` finished (or created) more than `older_than` seconds ago."""
        sql = self._q.purge
        params = {"queue": self.queue, "status": Status(status).value, "cutoff": time.time() - (older_than or 0.0)}
        return await self._db.write(lambda conn: _rowcount(conn, sql, params))

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
        sql = self._q[name]
        rows: list[Any] = await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return rows


def _rowcount(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> int:
    return conn.execute(sql, params).rowcount
