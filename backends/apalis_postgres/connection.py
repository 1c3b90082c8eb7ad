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

import logging
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
from apalis_sql.database import Session, WholeClaims
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from .config import PostgresConfig
from .handing import Handing
from .listener import Listener
from .schema import control_channel, load_statements, migrate

__all__ = ["Database"]

T = TypeVar("T")
_log = logging.getLogger(__name__)
Conn = AsyncConnection[tuple[Any, ...]]

_NO_LISTING = {"channel": "", "list_workers": [], "list_spans": [], "list_gots": []}
"""The `_listing` parameters of a claim for a worker no push hands to."""
_RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def _transient(exc: BaseException) -> bool:
    # A closed pool (the store was closed) is final; a pool timeout or a lost connection is not.
    return isinstance(exc, _RETRYABLE) and not isinstance(exc, PoolClosed)


def _answered(exc: BaseException) -> bool:
    # A deadlock or serialization failure the server rolled back, or a lock it would not wait
    # for: retried at once, and not a loss of contact.
    return isinstance(exc, psycopg.errors.TransactionRollback | psycopg.errors.LockNotAvailable)


class Pool:
    """A psycopg pool with the core's retries, for every store on PostgreSQL (this one and pgmq).

    `open(setup)` makes one direct connection first and runs `setup` on it (a migration, a
    check): a server that is not there or a refused login fails at once with the server's
    reason (a pool would retry it until its timeout and say only that). `run(op)` runs `op` on a
    pooled connection, retried with capped backoff (`apalis_cli.retrying`) while the connection
    is lost: the pool drops broken connections, `check()` weeds out the idle ones that died with
    them, and `op` runs again on a fresh one.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        what: str,
        secrets: frozenset[str],
        min_size: int,
        max_size: int,
        timeout: float,
        name: str,
        contact: Contact | None = None,
        session_setup: str | None = None,
    ) -> None:
        self.conninfo = conninfo
        self._session_setup = session_setup
        self.what = what
        """The store and where it is, password left out ("postgres at postgresql://u:***@h/db")."""
        self._secrets = secrets
        self._sizes = (min_size, max_size)
        self._timeout = timeout
        self._name = name
        self._pool: AsyncConnectionPool[Conn] | None = None
        self.contact = contact or Contact()
        """This process's contact with the server: the orphan sweep waits for a steady one."""

    @property
    def opened(self) -> bool:
        """True between `open()` and `close()`."""
        return self._pool is not None

    async def open(self, setup: Callable[[Conn], Awaitable[T]]) -> T:
        """Connect, run `setup` on a direct connection, then fill the pool; `setup`'s answer."""
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                answer = await setup(conn)
        except psycopg.Error as exc:
            raise BackendError(f"cannot open {self.what}: {self.describe(exc)}") from None
        await self.fill()
        return answer

    async def fill(self) -> None:
        """Make the pool (its `min_size` connections at once), without a direct connection first."""
        min_size, max_size = self._sizes
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True},
            configure=self._configure if self._session_setup else None,
            timeout=self._timeout,
            name=self._name,
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise BackendError(f"cannot connect to {self.what}: {self.describe(exc)}") from None
        self._pool = pool

    async def _configure(self, conn: Conn) -> None:
        # A statement on each new session rather than the startup packet's `options`: poolers
        # such as PgBouncer refuse a startup parameter they do not know.
        await conn.execute(self._session_setup or "", prepare=False)

    async def close(self) -> None:
        """Close every connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def describe(self, exc: BaseException) -> str:
        """An error's text without the password (libpq may echo parts of the conninfo)."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return redact(text, self._secrets)

    async def run(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        """`op(conn)` on a pooled connection, retried with capped backoff while it is lost."""
        pool = self._pool
        if pool is None:
            raise BackendError(f"{self.what} is not open")

        async def once() -> T:
            async with pool.connection() as conn:
                return await op(conn)

        async def recover(_: BaseException) -> None:
            await pool.check()  # drop idle connections that died with the one we used

        return await retrying(
            once,
            transient=_transient,
            recover=recover,
            what=self.what,
            describe=self.describe,
            contact=self.contact,
            answered=_answered,
        )


GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"
"""The setup of the sessions that run the worker's claims and acknowledgements.

PostgreSQL keeps a prepared statement's generic plan only if it is estimated no dearer than its
first custom plans, and a `LIMIT` given as a parameter is costed at a tenth of the rows: once the
tasks table's statistics show a backlog, a claim (or an acknowledgement that claims ahead) never
passes that test and is planned again at every call (half the server's CPU of a lone task). The
worker's claims and acknowledgements run on sessions that always keep the generic plan, which has
the custom plans' shape (an index scan of `tasks_ready`)."""


def conninfo(url: str, connect_timeout: float, **params: Any) -> str:
    """`url` as libpq's conninfo, with TCP keepalives (a silently dead server is noticed within
    half a minute) and `params` added."""
    return make_conninfo(url, connect_timeout=max(int(connect_timeout), 1), **_KEEPALIVES, **params)


class Database:
    """A pool with retries (made by `open()`), the statements bound to the schema, the shared
    listener, and the dialect the shared SQL queue asks for (`apalis_sql.SqlDatabase`)."""

    ahead_on_backlog = False  # an ack's claim ahead costs no commit of its own: always claim
    releases_sweep_lock = False  # the advisory lock is the transaction's
    # The beat is one transaction, its last_seen the transaction's start, seen by the other
    # daemons once it commits: a large purge in it made the beat as old as the purge was long.
    purges_beside = True
    wait_polls = (1.0, 1.0)  # waiters are woken by NOTIFY; a read a second is the safety net
    bulk_batch = 10_000
    claims_by_select = False  # UPDATE ... RETURNING claims in one statement

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self.sql: dict[str, bytes] = {name: text.encode() for name, text in load_statements(config.schema).items()}
        self.channel = config.schema
        self.wakers: dict[str, Waker] = {}
        self.pool = Pool(
            conninfo(config.url, config.connect_timeout, application_name=config.application_name),
            what=f"postgres at {config.redacted}",
            secrets=config.secrets,
            min_size=config.min_size,
            max_size=config.max_size,
            timeout=config.connect_timeout,
            name=f"apalis-{config.schema}",
        )
        self.contact = self.pool.contact
        """This process's contact with the server: the orphan sweep waits for a steady one."""
        self.claims = Pool(
            conninfo(
                config.url,
                config.connect_timeout,
                application_name=config.application_name,
            ),
            what=f"postgres at {config.redacted}",
            secrets=config.secrets,
            min_size=0,
            max_size=config.max_size,
            timeout=config.connect_timeout,
            name=f"apalis-{config.schema}-claims",
            contact=self.contact,
            session_setup=GENERIC_PLANS,
        )
        """The sessions of the worker's claims and acknowledgements (`GENERIC_PLANS`), opened on
        a process's first claim: a process that only pushes or reads opens none."""
        self.run = self.pool.run
        self.describe = self.pool.describe
        self.controls = Controls()
        self._control = control_channel(config.schema)
        self.handing = Handing(self, lambda: self._listener.ready.is_set())
        """Pushes hand their task to this process's idle workers (`handing`)."""
        self._handed = self.handing.channel
        self._listener = Listener(
            lambda: self.pool.conninfo,
            (self.channel, self._control, self._handed),
            self._heard,
            self._rejoined,
            name=f"apalis-listen-{self.channel}",
        )

    async def open(self) -> list[int]:
        """Connect and migrate; returns the migrations applied now (on the direct connection
        that comes first)."""
        applied = await self.pool.open(lambda conn: migrate(conn, self.config.schema))
        await self.claims.fill()
        return applied

    async def close(self) -> None:
        """Stop listening and close every connection."""
        await self._listener.stop()
        await self.claims.close()
        await self.pool.close()

    def waker(self, queue: str) -> Waker:
        """The `Waker` of `queue`, fed by NOTIFYs once polling has started."""
        waker = self.wakers.get(queue)
        if waker is None:
            waker = self.wakers[queue] = Waker()
        return waker

    def listen(self, queue: str | None = None) -> Listener:
        """The store's one LISTEN connection (every queue's, and the control channel's),
        started on first use."""
        self._listener.start()
        return self._listener

    def _heard(self, channel: str, payload: str) -> None:
        if channel == self._handed:
            self.handing.heard(payload)
        elif channel == self._control:
            self.controls.told(payload)
        elif (waker := self.wakers.get(payload)) is not None:
            waker.notify()

    async def _rejoined(self) -> None:
        """Listening (again): every poller and waiter looks again, and the cancels requested
        while no one listened are asked for, as the heartbeat of each worker of this process
        would."""
        for waker in self.wakers.values():
            waker.notify()
        self.controls.wake_waiters()
        await self.handing.rejoined()
        for worker in list(self.controls.workers.values()):
            runs = list(worker.running())
            if runs:
                for task_id, reason in await self.fetch("cancels_requested", {"running": runs}):
                    worker.on_cancel(task_id, reason)

    async def listening(self) -> None:
        """Return once the LISTEN is in place, or after a second without it (a waiter then
        reads its task every `wait_polls` until it is)."""
        await woken(self.listen().ready, 1.0)

    async def fetch(self, name: str, params: Mapping[str, Any], *, pool: Pool | None = None) -> list[Any]:
        """All rows of the named statement (read in binary: payloads come as bytes, unescaped),
        on `pool` (by default the store's)."""
        query = self.sql[name]

        async def op(conn: Conn) -> list[Any]:
            async with conn.cursor(binary=True) as cursor:
                await cursor.execute(query, params)
                return await cursor.fetchall()

        return await (pool or self.pool).run(op)

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

    whole_beat = None  # a beat is one transaction, a round trip a statement (MariaDB sends it whole)

    @property
    def whole_claims(self) -> WholeClaims:
        """A limited claim is one call of migration 0009's `limit_claim` (this returns self as a
        `WholeClaims`: the type check proves it is one)."""
        return self

    def lock_scope(self, lock: str, queue: str) -> str:
        """The scope of the advisory lock `locked` takes (a limited claim, migration 0009's
        `limit_claim`, takes the one of `limits` itself)."""
        return f"{self.channel}:{lock}:{queue}"

    async def locked(
        self, lock: str, queue: str, key: str, op: Callable[[Session], Awaitable[T]], *, durable: bool
    ) -> T:
        """`op` in one transaction that first takes a transaction-scoped advisory lock on the
        schema, `lock`, `queue` and `key` (`advisory_lock`): freed by the commit or rollback, or
        by the server when the connection is lost."""
        params = {
            "scope": self.lock_scope(lock, queue),
            "key": key,
            "commit": None if durable and self.config.durable_push else "off",
        }
        statement = self.sql["advisory_lock"]

        async def in_transaction(conn: Conn) -> T:
            async with conn.transaction():
                await conn.execute(statement, params)
                return await op(_Session(conn, self.sql))

        return await self.run(in_transaction)

    async def notify(self, queue: str) -> None:
        """Wake the pollers of `queue` here at once, and in other processes by NOTIFY."""
        self.waker(queue).notify()
        await self.execute("notify", {"queue": queue})

    async def tidy(self) -> None:
        """VACUUM the tasks table when the server's autovacuum is off and dead row versions
        piled up (`vacuum.sql`): the claim's index scan would otherwise walk every task ever
        handed out; else ANALYZE it when it outgrew its statistics: the limited claim's plans,
        made for a far smaller table, are made again. A failure (not the table's owner, say) is
        logged and left at that."""

        async def op(conn: Conn) -> None:
            due = await (await conn.execute(self.sql["vacuum_due"], prepare=False)).fetchone()
            if due and due[0]:
                await conn.execute(self.sql["vacuum"], prepare=False)  # the statistics too
            elif due and due[1]:
                await conn.execute(self.sql["analyze"], prepare=False)

        try:
            await self.run(op)
        except Exception as exc:  # the sweep is done; a vacuum is only a help
            _log.warning(
                "postgres at %s: VACUUM or ANALYZE of the tasks table failed: %s",
                self.config.redacted,
                self.describe(exc),
            )

    async def notify_control(self) -> None:
        """Nothing to do: the statements that cancel or end a task NOTIFY the control channel."""

    def sweep_params(self, queue: str) -> dict[str, Any]:
        """The advisory lock's two keys: the schema and the queue."""
        return {"scope": self.channel, "queue": queue}

    # -- the dialect: inserts, claims and acks as PostgreSQL writes them ----------------------

    async def insert(self, queue: str, tasks: Sequence[NewTask]) -> int:
        """Insert `tasks` in one statement (NOTIFY included); ids and keys already there are
        skipped. Tasks with a limit key go in with it (`enqueue_keyed`); one task alone may be
        handed to an idle worker (`enqueue_hand`)."""
        if len(tasks) == 1 and tasks[0].limit_key is None:
            task = tasks[0]
            one = {
                "queue": queue,
                "commit": None if self.config.durable_push else "off",
                "id": task.id,
                "payload": task.payload,
                "run_at": task.run_at,
                "priority": task.priority,
                "max_attempts": task.max_attempts,
                "key": task.idempotency_key,
                "meta": encode_meta(task.meta),
            }
            [(pushed, unflushed)] = await self.fetch("enqueue_hand", one)  # its id, None when already stored
            if unflushed:  # handed: the worker was told before the flush, the caller is told after it
                await self.execute("flush_push", {})
            return 0 if pushed is None else 1
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
        if any(t.limit_key is not None for t in tasks):
            params["limit_keys"] = [t.limit_key for t in tasks]
            return len(await self.fetch("enqueue_keyed", params))
        return len(await self.fetch("enqueue", params))

    async def claim(self, queue: str, worker_id: str, limit: int) -> list[Task[bytes]]:
        """One UPDATE over a SKIP LOCKED select (`claim.sql`), which lists the worker idle when
        it finds nothing (`handing`)."""
        handing = self.handing
        params = {"queue": queue, "worker": worker_id, "limit": limit, **(handing.params((worker_id,)) or _NO_LISTING)}
        claimed = _in_claim_order(await self.fetch("claim", params, pool=self.claims))
        handing.claimed(worker_id, len(claimed) == limit)
        return claimed

    def ack_statement(self, queue: str, plan: AckPlan, slots: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
        """The `ack.sql` statement that applies `plan`, claiming a task for each worker of
        `slots`, and its parameters: `ack_done` for the common batch, runs of one worker all done
        with no result, sent as its ids alone; `ack` (arrays of one element per outcome) else."""
        lock_by = _done_by(plan)
        if lock_by is None:
            return "ack", self.ack_params(queue, plan, slots)
        ids = [task_id for _, _, task_id, _ in plan.done]
        return "ack_done", {"ids": ids, "lock_by": lock_by, "queue": queue, **_claim_for(slots)}

    def ack_params(self, queue: str, plan: AckPlan, slots: Sequence[str] = ()) -> dict[str, Any]:
        """The parameters of `ack.sql`'s statements for `plan` (arrays of one element per
        outcome), claiming a task for each worker of `slots`."""
        rows = plan.rows()
        columns: list[Sequence[Any]] = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 6
        ids, lock_bys, statuses, results, errors, run_ats = columns
        return {
            "ids": ids,
            "lock_bys": lock_bys,
            "statuses": statuses,
            "results": results,
            "errors": errors,
            "run_ats": run_ats,
            "queue": queue,
            "wake": plan.wake,
            **_claim_for(slots),
        }

    async def ack(self, queue: str, plan: AckPlan, slots: Sequence[tuple[str, int]]) -> list[list[Task[bytes]]]:
        """One statement applies every outcome of `plan` (arrays of one element per outcome) and
        claims for `slots` (`ack.sql`)."""
        wanted = [worker_id for worker_id, count in slots for _ in range(count)]
        ack, params = self.ack_statement(queue, plan, wanted)
        handing, claims = self.handing, self.claims
        if not slots:
            await self.fetch(ack, params, pool=claims)
            return []
        listing = handing.params([worker_id for worker_id, _ in slots], ack=True)
        if listing is None:
            claimed = _in_claim_order(await self.fetch(ack, params, pool=claims))
        else:
            claimed = _in_claim_order(await self.fetch(f"{ack}_listing", {**params, **listing}, pool=claims))
        per_slot = [[task for task in claimed if task.ctx.lock_by == worker_id] for worker_id, _ in slots]
        for (worker_id, count), tasks in zip(slots, per_slot, strict=True):
            handing.claimed(worker_id, len(tasks) == count)
        return per_slot


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


def _done_by(plan: AckPlan) -> str | None:
    """The worker whose runs `plan` acknowledges, when every one of them is done with no result
    (`ack_done`); None for any other batch."""
    if not plan.done or plan.retry or plan.kill or plan.cancel or plan.release:
        return None
    lock_by = plan.done[0][3]
    for result, _, _, lock in plan.done:
        if result is not None or lock != lock_by:
            return None
    return lock_by


def _claim_for(slots: Sequence[str]) -> dict[str, Any]:
    """The claim ahead's parameters (`ack.sql`'s `_ack_picked`): a worker and a count when every
    slot is one worker's (always, in a process with one worker of the queue), else the worker of
    each slot.
    psycopg dumps a list in Python (~40 us for the 50 slots of a c50 drain, a few percent of the
    worker's CPU per task); one string and one int cost nothing."""
    if slots and slots.count(slots[0]) == len(slots):
        return {"slots": [], "claim_for": slots[0], "claim_n": len(slots)}
    return {"slots": list(slots), "claim_for": None, "claim_n": None}


def _in_claim_order(rows: Sequence[Any]) -> list[Task[bytes]]:
    """Claimed rows as tasks, highest priority and oldest first (RETURNING keeps no order)."""
    tasks = [task_from_row(row) for row in rows]
    if len(tasks) > 1:
        tasks.sort(key=lambda t: (-t.ctx.priority, t.ctx.run_at, t.id))
    return tasks
