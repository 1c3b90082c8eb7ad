"""The connections of one PostgreSQL store: a pool, the LISTEN connection, retries.

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
from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError
from apalis_cli.polling import Waker
from apalis_cli.redact import redact
from apalis_cli.retrying import retrying
from psycopg import AsyncConnection, sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from .config import PostgresConfig
from .listener import Listener
from .schema import load_statements, migrate

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
    """A pool with retries (made by `open()`), the statements bound to the schema, and the shared listener."""

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
        self._listener = Listener(lambda: self._conninfo, self.channel, self.wakers)

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

    async def fetch(self, query: bytes, params: Mapping[str, Any], *, binary: bool = False) -> list[Any]:
        """All rows of `query`."""

        async def op(conn: Conn) -> list[Any]:
            async with conn.cursor(binary=binary) as cursor:
                await cursor.execute(query, params)
                return await cursor.fetchall()

        return await self.run(op)

    async def execute(self, query: bytes | sql.Composed, params: Mapping[str, Any] | Sequence[Any]) -> int:
        """Run `query`; returns the number of rows it touched."""

        async def op(conn: Conn) -> int:
            cursor = await conn.execute(query, params)
            return cursor.rowcount

        return await self.run(op)
