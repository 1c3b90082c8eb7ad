"""The connections of one pgmq store: the PostgreSQL store's pool with retries and its
listener (`apalis_postgres.connection.Pool`, `apalis_postgres.listener.Listener`), the pgmq
check and schema at open, and the creation of pgmq queues on first use.

The driver is imported only when the store opens, so `import apalis_pgmq` works without the
extra; `PgmqStore.from_spec` names it when it is missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError
from apalis_cli.polling import Waker

from .config import PgmqConfig
from .hub import ControlHub
from .statements import SCHEMA, key_index_of, old_key_indexes_of, statement, statements_for

if TYPE_CHECKING:
    from apalis_postgres.connection import Pool
    from apalis_postgres.listener import Listener
    from psycopg import AsyncConnection

__all__ = ["CONTROL", "Connection", "channel_of"]

T = TypeVar("T")

DEFAULT_APPLICATION_NAME = "apalis-pgmq"

CONTROL = "apalis_pgmq"
"""The channel of the control plane, one per database (see `apalis_pgmq.control`)."""

_INSERT = ("pgmq.q_", ".INSERT")


def channel_of(queue: str) -> str:
    """The channel pgmq's insert trigger notifies for `queue` (`pgmq.enable_notify_insert`)."""
    return f"{_INSERT[0]}{queue}{_INSERT[1]}"


class Connection:
    """Connections to one PostgreSQL database with pgmq, shared by every queue on it.

    pgmq's insert trigger NOTIFYs channel `pgmq.q_<name>.INSERT` (throttled) on every insert
    into a queue this store enabled it on: the listener wakes that queue's pollers. Channel
    `apalis_pgmq` carries the control plane. Polling with backoff stays the fallback: retries
    and scheduled messages become visible without any insert, so no notification announces them.
    """

    def __init__(self, config: PgmqConfig) -> None:
        self.config = config
        self._pool: Pool | None = None
        self._listener: Listener | None = None
        self._notify_available = False
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._indexed: dict[str, asyncio.Future[None]] = {}
        self._claim_fns: dict[str, asyncio.Future[None]] = {}
        self._wakers: dict[str, Waker] = {}
        self.hub = ControlHub(self._wakers)
        """Where control messages (cancels, pauses, finished tasks) go in this process."""
        self._open_lock = asyncio.Lock()
        self.contact = Contact()
        """This process's contact with the server: a heartbeat goes at once when it comes back."""

    def _make_pool(self) -> Pool:
        from apalis_postgres.connection import Pool, conninfo
        from psycopg.conninfo import conninfo_to_dict

        config = self.config
        # The URL's application_name, where it has one, names the connections (tests find them so).
        named = {"application_name": DEFAULT_APPLICATION_NAME}
        if "application_name" in conninfo_to_dict(config.url):
            named = {}
        return Pool(
            conninfo(config.url, config.connect_timeout, **named),
            what=f"pgmq at {config.redacted}",
            secrets=config.secrets,
            min_size=1,
            max_size=config.pool_size,
            timeout=config.connect_timeout,
            name="apalis-pgmq",
            contact=self.contact,
        )

    async def open(self) -> None:
        """Connect, check that pgmq is installed and create the `apalis_pgmq` schema."""
        async with self._open_lock:
            if self._pool is not None:
                return
            pool = self._make_pool()
            installed, notify = await pool.open(self._install)
            if not installed:
                await pool.close()
                raise BackendError(
                    f"pgmq is not installed in {self.config.redacted}: "
                    "run CREATE EXTENSION pgmq, or load pgmq's SQL install script"
                )
            self._pool = pool
        self._notify_available = notify and self.config.notify
        if self.config.notify:
            from apalis_postgres.listener import Listener

            # The control channel is plain LISTEN/NOTIFY, there even where pgmq's insert trigger
            # is not (an older pgmq); `notify = false` (a pooler without LISTEN) turns both off.
            self._listener = Listener(
                lambda: pool.conninfo, (CONTROL,), self._heard, self._rejoined, name="apalis-pgmq-listener"
            )

    def _heard(self, channel: str, payload: str) -> None:
        if channel == CONTROL:
            self.hub.dispatch(payload)
            return
        queue = channel.removeprefix(_INSERT[0]).removesuffix(_INSERT[1])
        if (waker := self._wakers.get(queue)) is not None:
            waker.notify()

    async def _rejoined(self) -> None:
        # Listening (again): notifications may have been missed meanwhile.
        for waker in self._wakers.values():
            waker.notify()
        self.hub.wake_waiters()

    async def _install(self, conn: AsyncConnection[Any]) -> tuple[bool, bool]:
        cur = await conn.execute(statement("installed"))
        row = await cur.fetchone()
        if not row or not row[0]:
            return False, False
        async with conn.transaction():
            for part in _split(SCHEMA):
                await conn.execute(part)
        await conn.execute(statement("drop_orphan_claim_fns"))  # left by pgmq.drop_queue
        return True, bool(row[1])

    async def close(self) -> None:
        """Stop listening and close every connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        pool, self._pool = self._pool, None
        self._ready.clear()
        self._indexed.clear()
        self._claim_fns.clear()
        if pool is not None:
            await pool.close()

    async def run(self, op: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`op` on a pooled connection, opened on first use; a dropped connection is retried with
        capped backoff (`apalis_cli.retrying`) while the server is away, then reported as
        `ConnectionLost`."""
        if self._pool is None:
            await self.open()
        pool = self._pool
        if pool is None:
            raise BackendError("the pgmq store is closed")
        return await pool.run(op)

    # -- queues ----------------------------------------------------------------------------

    def waker(self, queue: str) -> Waker:
        """The waker of every poller of `queue` in this process."""
        return self._wakers.setdefault(queue, Waker())

    def listen(self, queue: str) -> None:
        """Have notifications of inserts into `queue` wake its pollers (when available), and
        control messages reach this process."""
        if self._listener is not None:
            if self._notify_available:
                self._listener.add(channel_of(queue))
            self._listener.start()

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
                await listener.listening()
        except TimeoutError:
            return False
        return True

    async def ensure_queue(self, queue: str) -> None:
        """`pgmq.create` the queue (once per store) and enable insert notifications on it."""
        ready = self._ready.get(queue)
        if ready is not None and ready.done() and ready.exception() is None:
            return  # the hot path: created long ago
        await self._once(self._ready, queue, self._create)

    async def ensure_limits(self, queue: str, *, keyed: bool) -> None:
        """Give `queue` what a claim within global limits runs on (once per store): its limited
        claim function, and for a keyed limit its table's index by limit key (`sql/limits.sql`);
        the queue is made sure of first."""
        await self.ensure_queue(queue)
        wanted = [(self._claim_fns, self._create_claim_fn)]
        if keyed:
            wanted.insert(0, (self._indexed, self._create_key_index))
        for done, make in wanted:
            ready = done.get(queue)
            if ready is None or not ready.done() or ready.exception() is not None:
                await self._once(done, queue, make)

    async def _once(
        self,
        done: dict[str, asyncio.Future[None]],
        queue: str,
        make: Callable[[AsyncConnection[Any], str], Awaitable[None]],
    ) -> None:
        """`make(conn, queue)` once per store for `queue`, remembered in `done`; callers that
        come meanwhile wait for the same run, and a failed one is tried again next time."""
        ready = done.get(queue)
        if ready is None:
            ready = done[queue] = asyncio.ensure_future(self.run(lambda conn: make(conn, queue)))
        try:
            await asyncio.shield(ready)
        except BaseException:
            if ready.done() and done.get(queue) is ready:
                del done[queue]
            raise

    def forget_queue(self, queue: str) -> None:
        """Create `queue` (and its key index and claim function, if it had them) again on next use
        (someone dropped it)."""
        self._ready.pop(queue, None)
        self._indexed.pop(queue, None)
        self._claim_fns.pop(queue, None)

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

    async def _create_key_index(self, conn: AsyncConnection[Any], queue: str) -> None:
        sql = statements_for(queue)
        names = {
            "queue": queue,
            "index": f'pgmq."{key_index_of(queue)}"',
            "old_indexes": [f'pgmq."{name}"' for name in old_key_indexes_of(queue)],
        }
        cur = await conn.execute(sql["key_indexes"], names)
        indexed, old, swept = await cur.fetchone() or (False, False, False)
        if indexed and swept and not old:
            return  # made by an earlier process: CREATE INDEX would take a lock even so
        async with conn.transaction():
            await conn.execute(sql["lock_queue"], {"queue": queue})
            if not indexed:
                await conn.execute(sql["create_key_index"])
            if not (indexed and swept):
                # The messages lost so far, claimable again; the sweeps go on from here.
                await conn.execute(sql["mark_lost"], {"queue": queue})
            # Earlier versions' indexes (a daemon of one makes its own again)
            await conn.execute(sql["drop_old_key_index"])

    async def _create_claim_fn(self, conn: AsyncConnection[Any], queue: str) -> None:
        # Replaced at each process's first limited claim, so the function is this version's;
        # under pgmq's queue lock, as two replacements at once would fail.
        sql = statements_for(queue)
        async with conn.transaction():
            await conn.execute(sql["lock_queue"], {"queue": queue})
            await conn.execute(sql["create_limit_claim"].encode())


def _split(script: str) -> list[str]:
    body = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    return [part.strip() for part in body.split(";") if part.strip()]
