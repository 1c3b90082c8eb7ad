"""The SQLite queue as an `Inspector` (peek, count, and the operator's retry, kill and purge), a
`TaskBrowser` and an `ActivitySource` (the board's pages and activity)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from apalis_sql import Queries, StatementInspector

from .connection import Database
from .signal import QueueSignal

__all__ = ["SqliteInspector"]


class SqliteInspector(StatementInspector):
    """The shared inspector's statements (`apalis_sql.StatementInspector`) over the queue's
    `_db`, `_q` (statements) and `_signal`: reads on the reader connections, writes on the
    writer."""

    queue: str
    _db: Database
    _q: Queries
    _signal: QueueSignal

    async def _fetch(self, name: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        sql = self._q[name]
        rows: list[Any] = await self._db.read(lambda conn: conn.execute(sql, params).fetchall())
        return rows

    async def _execute(self, name: str, params: Mapping[str, Any]) -> int:
        sql = self._q[name]
        return await self._db.write(lambda conn: _rowcount(conn, sql, params))

    def _woken(self) -> None:
        self._signal.notify()


def _rowcount(conn: sqlite3.Connection, sql: str, params: Mapping[str, Any]) -> int:
    return conn.execute(sql, params).rowcount
