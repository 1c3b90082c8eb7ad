"""The connections of one PostgreSQL store: a pool, the LISTEN connection, retries, and the
PostgreSQL side of the shared SQL queue (`apalis_sql.SqlQueue`): inserts, claims and acks as
one statement each, woken across processes by NOTIFY.

Every operation goes through `Database.run`, which retries with capped backoff when the
connection is lost (a server restart, `pg_terminate_backend`, a network cut): the pool drops
broken connections, `check()` weeds out the idle ones that died with them, and the operation runs
again on a fresh one. Every statement is safe to run twice: pushes skip ids already stored, acks
apply only to tasks still running under the same worker, and a claim whose reply was lost is
released by the worker's next heartbeat.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from apalis_cli.backend import NewTask
from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError
from apalis_cli.polling import Waker, woken
from apalis_cli.redact import redact
from apalis_cli.retrying import retrying
from apalis_cli.task import Task
from apalis_sql import AckPlan, Controls, encode_meta, task_from_row
from apalis_sql.database import Session
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from .config import PostgresConfig
from .listener import Listener
from .schema import control_channel, load_statements, migrate

__all__ = ["Database"]

T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]

_RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def _transient(exc: BaseException) -> bool:
    # A closed pool (the store was closed) is final; a pool timeout or a lost connection is not.
    return isinstance(exc, _RETRYABLE) and not isinstance(exc, PoolClosed)


def _answered(exc: BaseException) -> bool:
    # A deadlock or serialization failure the server rolled back, or a lock it would not wait
    # for: retried at once, and not a loss of contact.
    return isinstance(exc, psycopg.errors.TransactionRollback | psycopg.errors.LockNotAvailable)


class Database:
    """A pool with retries (made by `open()`), the statements bound to the schema, the shared
    listener, and the dialect the shared SQL queue asks for (`apalis_sql.SqlDatabase`)."""

    ahead_on_backlog = False  # an ack's claim ahead costs no commit of its own: always claim
    releases_sweep_lock = False  # the advisory lock is the transaction's
    wait_polls = (1.0, 1.0)  # waiters are woken by NOTIFY; a read a second is the safety net
    bulk_batch = 10_000
    cancel_poll: float | None = None  # a NOTIFY tells the worker

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self.sql: dict[str, bytes] = {name: text.encode() for name, text in load_statements(config.schema).items()}
        self.channel = config.schema
        self.wakers: dict[str, Waker] = {}
        self.contact = Contact()
        """This process's contact with the server: the orphan sweep waits for a steady one."""
        self._conninfo = make_conninfo(
            config.url,
            application_name=config.application_name,
            connect_timeout=max(int(config.connect_timeout), 1),
            **_KEEPALIVES,
        )
        self._pool: AsyncConnectionPool[Conn] | None = None
        self.controls = Controls()
        self._listener = Listener(
            lambda: self._conninfo,
            self.channel,
            self.wakers,
            control_channel(config.schema),
            self.controls,
            self._rejoined,
        )

    async def open(self) -> list[int]:
        """Connect and migrate; returns the migrations applied now.

        One direct connection comes first: it migrates, and a refused login fails here at once
        with the server's reason (a pool would retry it until its timeout and say only that).
        """
        where = self.config.redacted
        try:
            async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                applied = await migrate(conn, self.config.schema)
        except psycopg.Error as exc:
            raise BackendError(f"cannot open postgres at {where}: {self.describe(exc)}") from None
        config = self.config
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._conninfo,
            min_size=config.min_size,
            max_size=config.max_size,
            open=False,
            kwargs={"autocommit": True},
            timeout=config.connect_timeout,
            name=f"apalis-{config.schema}",
        )
        try:
            await pool.open(wait=True, timeout=config.connect_timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise BackendError(f"cannot connect to postgres at {where}: {self.describe(exc)}") from None
        self._pool = pool
        return applied

    async def close(self) -> None:
        """Stop listening and close every connection."""
        await self._listener.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def waker(self, queue: str) -> Waker:
        """The `Waker` of `queue`, fed by NOTIFYs once polling has started."""
        waker = self.wakers.get(queue)
        if waker is None:
            waker = self.wakers[queue] = Waker()
        return waker

    def listen(self) -> Listener:
        """The store's one LISTEN connection, started on first use."""
        self._listener.start()
        return self._listener

    async def _rejoined(self) -> None:
        """Listening (again): the cancels requested while no one listened are asked for, as the
        heartbeat of each worker of this process would."""
        for worker in list(self.controls.workers.values()):
            runs = list(worker.running())
            if runs:
                for task_id, reason in await self.fetch("cancels_requested", {"running": runs}):
                    worker.on_cancel(task_id, reason)

    async def listening(self) -> None:
        """Return once the LISTEN is in place, or after a second without it (a waiter then
        reads its task every `wait_polls` until it is)."""
        await woken(self.listen().ready, 1.0)

    def describe(self, exc: BaseException) -> str:
        """An error's text without the password (libpq may echo parts of the conninfo)."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return redact(text, self.config.secrets)

    async def run(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        """`op(conn)` on a pooled connection, retried with capped backoff while it is lost."""
        if self._pool is None:
            raise BackendError(f"postgres store at {self.config.redacted} is not open")
        pool = self._pool

        async def once() -> T:
            async with pool.connection() as conn:
                return await op(conn)

        async def recover(_: BaseException) -> None:
            await pool.check()  # drop idle connections that died with the one we used

        return await retrying(
            once,
            transient=_transient,
            recover=recover,
            what=f"postgres at {self.config.redacted}",
            describe=self.describe,
            contact=self.contact,
            answered=_answered,
        )

    async def fetch(self, name: str, params: Mapping[str, Any]) -> list[Any]:
        """All rows of the named statement (read in binary: payloads come as bytes, unescaped)."""
        query = self.sql[name]

        async def op(conn: Conn) -> list[Any]:
            async with conn.cursor(binary=True) as cursor:
                await cursor.execute(query, params)
                return await cursor.fetchall()

        return await self.run(op)

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        """Run the named statement; the rows it touched (or returned)."""
        query = self.sql[name]

        async def op(conn: Conn) -> int:
            cursor = await conn.execute(query, params)
            return cursor.rowcount

        return await self.run(op)

    async def session(self, op: Callable[[Session], Awaitable[T]]) -> T:
        """`op` in one transaction, committed without waiting for the WAL flush (it serves the
        heartbeat: a write lost in a crash is done again at the next beat)."""

        async def in_transaction(conn: Conn) -> T:
            async with conn.transaction():
                await conn.execute(b"SET LOCAL synchronous_commit = off")
                return await op(_Session(conn, self.sql))

        return await self.run(in_transaction)

    async def notify(self, queue: str) -> None:
        """Wake the pollers of `queue` here at once, and in other processes by NOTIFY."""
        self.waker(queue).notify()
        await self.execute("notify", {"queue": queue})

    def sweep_params(self, queue: str) -> dict[str, Any]:
        """The advisory lock's two keys: the schema and the queue."""
        return {"scope": self.channel, "queue": queue}

    # -- the dialect: inserts, claims and acks as PostgreSQL writes them ----------------------

    async def insert(self, queue: str, tasks: Sequence[NewTask]) -> int:
        """Insert `tasks` in one statement (NOTIFY included); ids and keys already there are skipped."""
        params: dict[str, Any] = {
            "queue": queue,
            "commit": None if self.config.durable_push else "off",
            "ids": [t.id for t in tasks],
            "payloads": [t.payload for t in tasks],
            "run_ats": [t.run_at for t in tasks],
            "priorities": [t.priority for t in tasks],
            "max_attempts": [t.max_attempts for t in tasks],
            "keys": [t.idempotency_key for t in tasks],
            "metas": [encode_meta(t.meta) for t in tasks],
        }
        return len(await self.fetch("enqueue", params))

    async def claim(self, queue: str, worker_id: str, limit: int) -> list[Task[bytes]]:
        """One UPDATE over a SKIP LOCKED select (`claim.sql`)."""
        return _in_claim_order(await self.fetch("claim", {"queue": queue, "worker": worker_id, "limit": limit}))

    async def ack(self, queue: str, plan: AckPlan, slots: Sequence[tuple[str, int]]) -> list[list[Task[bytes]]]:
        """One statement applies every outcome of `plan` (arrays of one element per outcome) and
        claims for `slots` (`ack.sql`)."""
        rows = plan.rows()
        columns: list[Sequence[Any]] = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 6
        ids, lock_bys, statuses, results, errors, run_ats = columns
        params = {
            "ids": ids,
            "lock_bys": lock_bys,
            "statuses": statuses,
            "results": results,
            "errors": errors,
            "run_ats": run_ats,
            "queue": queue,
            "slots": [worker_id for worker_id, count in slots for _ in range(count)],
            "wake": plan.wake,
        }
        if not slots:
            await self.execute("ack", params)
            return []
        claimed = _in_claim_order(await self.fetch("ack", params))
        return [[task for task in claimed if task.ctx.lock_by == worker_id] for worker_id, _ in slots]


class _Session:
    """Named statements on one connection (`Database.session`)."""

    __slots__ = ("_conn", "_sql")

    def __init__(self, conn: Conn, statements: Mapping[str, bytes]) -> None:
        self._conn = conn
        self._sql = statements

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        return (await self._conn.execute(self._sql[name], params)).rowcount

    async def fetch(self, name: str, params: Mapping[str, Any]) -> list[Any]:
        return await (await self._conn.execute(self._sql[name], params)).fetchall()


def _in_claim_order(rows: Sequence[Any]) -> list[Task[bytes]]:
    """Claimed rows as tasks, highest priority and oldest first (RETURNING keeps no order)."""
    tasks = [task_from_row(row) for row in rows]
    if len(tasks) > 1:
        tasks.sort(key=lambda t: (-t.ctx.priority, t.ctx.run_at, t.id))
    return tasks
