"""Global limits on a pgmq queue: the SQL stores' limited claim (`apalis_sql.limits`, the steps
of `apalis_cli.fleet`) on pgmq's own tables.

A limited claim is one call of the queue's own PL/pgSQL function (`create_limit_claim` in
`sql/limits.sql`, made or brought up to date by each process's first limited claim of the
queue), as PostgreSQL's store runs its `limit_claim`. It first takes a transaction-scoped
advisory lock of the queue (`lock_scope`), so every daemon's limited claims of the queue take
turns. A message's key is its "apalis" header `limit_key`; an index of the queue table's
claimable messages by key and vt (made when a worker with a keyed limit first claims) lets a
claim step from key to key onto each key's oldest ready message, so a key at its limit costs one
index step however deep its backlog. Messages in flight are those read and hidden by a live
lease (vt), the lease its worker's heartbeat extends: a killed worker's slots come back when its
leases end, and its messages come back into the index when the sweep beside a keyed worker's
heartbeat marks them lost (`limit_sweep`). A chosen
message is read as `pgmq.read` reads one (vt moved by the lease, read_ct + 1), counting as
ready what was due when the claim began: `pgmq.read` would read the clock in a snapshot of its
own, and hand out a message pushed after a pause the claim had not seen yet. Rates are GCRA
times per key in `apalis_pgmq.limit_rates`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from apalis_cli.polling import Waker
from apalis_sql.acks import AckPlan
from apalis_sql.database import Rows, Session, WholeClaims

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .connection import Connection

__all__ = ["PgmqLimits"]

T = TypeVar("T")
Run = Callable[[Callable[["AsyncConnection[Any]"], Awaitable[T]]], Awaitable[T]]


class PgmqLimits:
    """What `apalis_sql.limits.LimitedClaims` asks of a store whose limited claim is one call
    (`WholeClaims`), for one pgmq queue: the call, its lock's scope, and the queue's waker."""

    claims_by_select = False
    """The claim reads the messages itself (UPDATE ... RETURNING)."""
    account_at = 6
    """Where the account's columns start in a row of `limit_claim` (after a message's)."""

    def __init__(self, connection: Connection, sql: Mapping[str, str], run: Run[Any]) -> None:
        self._connection = connection
        self._sql = sql
        self._run = run

    @property
    def whole_claims(self) -> WholeClaims:
        """The limited claim is one call (this returns self as a `WholeClaims`: the type check
        proves it is one)."""
        return self

    def waker(self, queue: str) -> Waker:
        """The in-process waker of `queue`."""
        return self._connection.waker(queue)

    def lock_scope(self, lock: str, queue: str) -> str:
        """The scope of the advisory lock the claim function takes for `lock` and `queue` (the
        one the separate statements of earlier versions took: both take turns)."""
        return f"apalis_pgmq:{lock}:{queue}"

    async def fetch(self, name: str, params: Mapping[str, Any]) -> Rows:
        """All rows of the named statement (`limit_claim`)."""
        from psycopg.errors import UndefinedFunction, UndefinedObject

        query = self._sql[name]

        async def op(conn: AsyncConnection[Any]) -> Rows:
            return await (await conn.execute(query, params)).fetchall()

        try:
            rows: Rows = await self._run(op)
        except (UndefinedFunction, UndefinedObject):
            # The function, or for a keyed limit the queue's key index, is gone since this process
            # made it (another client dropped the queue, and may have made it again): made again.
            queue = params["queue"]
            self._connection.forget_queue(queue)
            await self._connection.ensure_limits(queue, keyed=bool(params["keyed_concurrency"] or params["keyed_rate"]))
            rows = await self._run(op)
        return rows

    def ack_statement(self, queue: str, plan: AckPlan) -> NoReturn:
        """Never asked: pgmq's acknowledgements carry no claim (it claims no tasks ahead)."""
        raise NotImplementedError("pgmq's acknowledgements carry no limited claim")

    async def locked(
        self, lock: str, queue: str, key: str, op: Callable[[Session], Awaitable[T]], *, durable: bool
    ) -> NoReturn:
        """Never asked: the limited claim is one call (`fetch`), not a transaction of statements."""
        raise NotImplementedError("pgmq's limited claim is one call of its queue's function")
