"""The SQLite queue as an `Inspector`: peek, count, and the operator's retry, kill and purge."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.task import Status, Task, TaskId
from apalis_sql import Queries, stats_from_rows, task_from_row, worker_from_row

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
        """Tasks of the queue (optionally of one status), oldest run_at first."""
        params: dict[str, Any] = {"queue": self.queue, "limit": limit, "offset": offset}
        if status is None:
            sql = self._q.list_all
        else:
            sql, params["status"] = self._q.list_status, Status(status).value
        rows = await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return [task_from_row(row) for row in rows]

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


def _rowcount(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> int:
    return conn.execute(sql, params).rowcount
