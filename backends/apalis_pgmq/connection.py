"""The connections of one pgmq store: a psycopg pool with retries, the listener of insert
notifications, and the creation of pgmq queues on first use.

The driver is imported only when the store opens, so `import apalis_pgmq` works without the
extra; `PgmqStore.from_spec` names it when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError, describe_error
from apalis_cli.polling import Waker
from apalis_cli.redact import redact_url, secrets_in
from apalis_cli.retrying import retrying

from .config import PgmqConfig
from .hub import ControlHub
from .listener import Listener
from .statements import SCHEMA, statement, statements_for

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["Connection"]

T = TypeVar("T")

DEFAULT_APPLICATION_NAME = "apalis-pgmq"


class Connection:
    """Connections to one PostgreSQL database with pgmq, shared by every queue on it."""

    def __init__(self, config: PgmqConfig) -> None:
        self.config = config
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._listener: Listener | None = None
        self._notify_available = False
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._wakers: dict[str, Waker] = {}
        self.hub = ControlHub(self._wakers)
        """Where control messages (cancels, pauses, finished tasks) go in this process."""
        self._open_lock = asyncio.Lock()
        self.contact = Contact()
        """This process's contact with the server: a heartbeat goes at once when it comes back."""

    def _connect_kwargs(self) -> dict[str, Any]:
        from psycopg.conninfo import conninfo_to_dict

        kwargs: dict[str, Any] = {"autocommit": True}
        if "application_name" not in conninfo_to_dict(self.config.url):
            kwargs["application_name"] = DEFAULT_APPLICATION_NAME
        return kwargs

    async def open(self) -> None:
        """Connect, check that pgmq is installed and create the `apalis_pgmq` schema."""
        async with self._open_lock:
            if self._pool is not None:
                return
            from psycopg import AsyncConnection as Connection
            from psycopg import Error
            from psycopg_pool import AsyncConnectionPool

            # One direct connection first, so that a server that is not there or a refused login
            # fails at once with libpq's reason (the pool would retry it for `connect_timeout`
            # and then say only "pool initialization incomplete").
            try:
                timeout = max(round(self.config.connect_timeout), 1)
                probe = await Connection.connect(self.config.url, connect_timeout=timeout, **self._connect_kwargs())
            except Error as exc:
                raise BackendError(f"cannot connect to {redact_url(self.config.url)}: {self._describe(exc)}") from None
            await probe.close()
            pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
                self.config.url,
                min_size=1,
                max_size=self.config.pool_size,
                kwargs=self._connect_kwargs(),
                timeout=self.config.connect_timeout,
                open=False,
            )
            try:
                await pool.open(wait=True, timeout=self.config.connect_timeout)
            except Exception as exc:
                await pool.close()
                raise BackendError(f"cannot connect to {redact_url(self.config.url)}: {self._describe(exc)}") from None
            self._pool = pool
        try:
            installed, notify = await self.run(self._install)
        except BaseException:
            await self.close()
            raise
        if not installed:
            await self.close()
            raise BackendError(
                f"pgmq is not installed in {redact_url(self.config.url)}: "
                "run CREATE EXTENSION pgmq, or load pgmq's SQL install script"
            )
        self._notify_available = notify and self.config.notify
        if self.config.notify:
            # The control channel is plain LISTEN/NOTIFY, there even where pgmq's insert trigger
            # is not (an older pgmq); `notify = false` (a pooler without LISTEN) turns both off.
            listener = Listener(
                self.config.url, self._connect_kwargs(), self._wakers, self.hub.dispatch, inserts=self._notify_available
            )
            listener.reconnected = self.hub.wake_waiters
            self._listener = listener

    def _describe(self, exc: BaseException) -> str:
        # libpq may echo pieces of the URL (a host that took part of a password with an '@').
        return describe_error(exc, secrets_in(self.config.url))

    async def _install(self, conn: AsyncConnection[Any]) -> tuple[bool, bool]:
        cur = await conn.execute(statement("installed"))
        row = await cur.fetchone()
        if not row or not row[0]:
            return False, False
        async with conn.transaction():
            for part in _split(SCHEMA):
                await conn.execute(part)
        return True, bool(row[1])

    async def close(self) -> None:
        """Stop listening and close every connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        self._ready.clear()
        if pool is not None:
            await pool.close()

    async def run(self, op: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`op` on a pooled connection; a dropped connection is retried with capped backoff
        (`apalis_cli.retrying`) while the server is away, then reported as `ConnectionLost`."""
        from psycopg import OperationalError

        if self._pool is None:
            await self.open()
        pool = self._pool
        if pool is None:
            raise BackendError("the pgmq store is closed")

        async def once() -> T:
            async with pool.connection() as conn:
                return await op(conn)

        async def recover(_: BaseException) -> None:
            # Drop every idle connection the server has closed; the server may still be down,
            # which the next try will tell.
            with contextlib.suppress(Exception):
                await pool.check()

        return await retrying(
            once,
            transient=lambda exc: isinstance(exc, OperationalError),
            recover=recover,
            what=f"pgmq at {redact_url(self.config.url)}",
            describe=self._describe,
            contact=self.contact,
        )

    # -- queues ----------------------------------------------------------------------------

    def waker(self, queue: str) -> Waker:
        """The waker of every poller of `queue` in this process."""
        return self._wakers.setdefault(queue, Waker())

    def listen(self, queue: str) -> None:
        """Have notifications of inserts into `queue` wake its pollers (when available), and
        control messages reach this process."""
        if self._listener is not None:
            self._listener.add(queue)

    async def control_listening(self, within: float = 2.0) -> bool:
        """Start listening to the control channel; True once it is (False: poll instead)."""
        if self._pool is None:
            await self.open()
        listener = self._listener
        if listener is None:
            return False
        listener.start()
        try:
            async with asyncio.timeout(within):
                await listener.listening.wait()
        except TimeoutError:
            return False
        return True

    async def ensure_queue(self, queue: str) -> None:
        """`pgmq.create` the queue (once per store) and enable insert notifications on it."""
        ready = self._ready.get(queue)
        if ready is not None and ready.done() and ready.exception() is None:
            return  # the hot path: created long ago
        if ready is None:
            ready = self._ready[queue] = asyncio.ensure_future(self.run(lambda conn: self._create(conn, queue)))
        try:
            await asyncio.shield(ready)
        except BaseException:
            if ready.done() and self._ready.get(queue) is ready:
                del self._ready[queue]  # a failed creation is tried again next time
            raise

    def forget_queue(self, queue: str) -> None:
        """Create `queue` again on next use (someone dropped it)."""
        self._ready.pop(queue, None)

    async def _create(self, conn: AsyncConnection[Any], queue: str) -> None:
        sql = statements_for(queue)
        params = {"queue": queue, "throttle_ms": round(self.config.notify_throttle * 1000)}
        async with conn.transaction():
            await conn.execute(sql["lock_queue"], params)
            await conn.execute(sql["create_queue"], params)
            if self._notify_available:
                cur = await conn.execute(sql["notify_enabled"], params)
                row = await cur.fetchone()
                if not row or not row[0]:  # a throttle someone else chose is left alone
                    await conn.execute(sql["enable_notify"], params)


def _split(script: str) -> list[str]:
    body = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    return [part.strip() for part in body.split(";") if part.strip()]
