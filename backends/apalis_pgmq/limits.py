"""Global limits on a pgmq queue: the SQL stores' limited claim (`apalis_sql.limits`, over the
steps of `apalis_cli.fleet`) on pgmq's own tables.

A limited claim runs in one transaction that first takes a transaction-scoped advisory lock of
its queue (`limit_lock`), so every daemon's limited claims of the queue take turns. A message's
key is its "apalis" header `limit_key`; an index of the queue table by key and vt (made when a
worker with a keyed limit first claims) lets a claim step from key to key and take each key's
oldest ready message, so a key at its limit costs one index step however deep its backlog.
Messages in flight are those read and hidden by a live lease (vt), the lease its worker's
heartbeat extends: a killed worker's slots come back when its leases end. A chosen message is
read as `pgmq.read` reads one (vt moved by the lease, read_ct + 1), by a statement of ours that
counts as ready what was due when the claim began: `pgmq.read` would read the clock in a snapshot
of its own, and hand out a message pushed after a pause the claim had not seen yet. Rates are
GCRA times per key in `apalis_pgmq.limit_rates`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from apalis_cli.polling import Waker
from apalis_sql.database import Rows, Session

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .connection import Connection

__all__ = ["PgmqLimits"]

T = TypeVar("T")
Run = Callable[[Callable[["AsyncConnection[Any]"], Awaitable[T]]], Awaitable[T]]


class PgmqLimits:
    """What `apalis_sql.limits.LimitedClaims` asks of a store (`LimitsDatabase`), for one pgmq
    queue: its locked transaction over named statements, and its waker."""

    claims_by_select = False
    """The claim statements read the messages themselves (UPDATE ... RETURNING)."""

    def __init__(self, connection: Connection, sql: Mapping[str, str], run: Run[Any]) -> None:
        self._connection = connection
        self._sql = sql
        self._run = run

    def waker(self, queue: str) -> Waker:
        """The in-process waker of `queue`."""
        return self._connection.waker(queue)

    async def locked(
        self, lock: str, queue: str, key: str, op: Callable[[Session], Awaitable[T]], *, durable: bool
    ) -> T:
        """`op` in one transaction that first takes the advisory lock of `lock`, `queue` and
        `key` (`limit_lock`), freed by the commit or rollback, or by the server when the
        connection is lost; retried whole while the server is away."""
        sql = self._sql
        params = {"lock": lock, "queue": queue, "key": key, "commit": None if durable else "off"}

        async def in_transaction(conn: AsyncConnection[Any]) -> T:
            async with conn.transaction():
                await conn.execute(sql["limit_lock"], params)
                return await op(_Session(conn, sql))

        result: T = await self._run(in_transaction)
        return result


class _Session:
    """Named statements of the queue on one connection (`PgmqLimits.locked`)."""

    __slots__ = ("_conn", "_sql")

    def __init__(self, conn: AsyncConnection[Any], sql: Mapping[str, str]) -> None:
        self._conn = conn
        self._sql = sql

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        return (await self._conn.execute(self._sql[name], params)).rowcount

    async def fetch(self, name: str, params: Mapping[str, Any]) -> Rows:
        return await (await self._conn.execute(self._sql[name], params)).fetchall()
