"""The connections of one MySQL/MariaDB store: an asyncmy pool with retries, migrations, and
the MySQL side of the shared SQL queue (`apalis_sql.SqlQueue`): multi-row inserts, claims and
batched acks in short transactions (`claims`, `acks`), and wake-ups across processes by a
sleeping connection that a signal's `KILL QUERY` ends (`listener`: MySQL has no LISTEN/NOTIFY).

Every operation goes through `Database.run`: when its connection is lost (a server restart,
`KILL`, a network cut) the broken connection is closed so the pool drops it, and the operation
runs again on a fresh one with capped backoff. Every operation is safe to run twice: inserts skip
stored ids, acks apply only to tasks still running under the same worker, and a claim whose
reply was lost is released by the worker's next heartbeat.

Sessions run at READ COMMITTED: a claim's `FOR UPDATE SKIP LOCKED` then locks only the rows it
returns (no gap locks), so claimers and producers do not block each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncmy
from apalis_cli.backend import NewTask
from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError
from apalis_cli.polling import Waker
from apalis_cli.redact import redact
from apalis_cli.retrying import retrying
from apalis_cli.task import Task
from apalis_sql import (
    TASK_COLUMNS,
    AckPlan,
    BeatAsk,
    Beaten,
    Controls,
    Session,
    encode_meta,
    load_migrations,
    load_queries,
    task_from_row,
)
from apalis_sql.database import WholeBeat

from . import turns
from .acks import ack_statements
from .beside import Beside
from .claims import transact
from .config import MysqlConfig
from .handing import GONE_WITHIN, NONE_IDLE_FIRST, NONE_IDLE_FOR, SPAN, WATCH_AFTER, Handed, Listing, hand_push, left
from .listener import LIVE_LOCK, Listener, Signals, end_sleep, tag
from .locked import in_named_lock

__all__ = ["Database", "Pool"]

T = TypeVar("T")
Conn = Any  # asyncmy ships no usable annotations for its Cython classes

NOW = "UNIX_TIMESTAMP(NOW(6))"
COLUMNS = ", ".join(TASK_COLUMNS)
BULK_WHERE = """queue = %(queue)s AND status IN %(statuses)s
    AND (%(since)s IS NULL OR COALESCE(done_at, created_at) >= %(since)s)
    AND (%(until)s IS NULL OR COALESCE(done_at, created_at) <= %(until)s)
    AND (%(pattern)s IS NULL OR last_error COLLATE utf8mb4_general_ci LIKE %(pattern)s)
    AND (NOT %(fresh)s OR cancel_reason IS NULL)"""
"""The filter of every bulk statement: statuses, since/until on the last change, an error's
substring in any case, and (`fresh`) only tasks not asked to cancel before."""
_INSERT_ROW = f"(%s, %s, %s, 'pending', 0, %s, %s, %s, %s, %s, %s, {NOW})"
_INSERT_ROW_KEYED = f"(%s, %s, %s, 'pending', 0, %s, %s, %s, %s, %s, %s, {NOW}, %s, %s)"
_KEYED_ARGS = 11  # parameters of a row of `_INSERT_ROW_KEYED`, its number last
_CHUNK_BYTES = 4 * 1024 * 1024  # stay well under the server's default max_allowed_packet (16 MiB)
# Lost connection, server gone, shutdown in progress, connection killed, lock wait/deadlock.
_TRANSIENT_CODES = {1040, 1053, 1205, 1213, 1927, 2003, 2006, 2013, 2014, 2055}
_DEADLOCK = 1213  # retried, but the server answered: not a loss of contact
WAKE_AT_CLOSE = 5.0  # seconds a closing store waits for its wake-ups (a held KILL: up to 4 s)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, asyncmy.errors.OperationalError | asyncmy.errors.InternalError):
        code = exc.args[0] if exc.args else None
        return code in _TRANSIENT_CODES or not isinstance(code, int)
    return isinstance(exc, asyncmy.errors.InterfaceError | ConnectionError | OSError | EOFError)


def _deadlock(exc: BaseException) -> bool:
    return isinstance(exc, asyncmy.errors.OperationalError | asyncmy.errors.InternalError) and (
        bool(exc.args) and exc.args[0] == _DEADLOCK
    )


class Pool:
    """At most `max_size` connections made by `connect()`, idle ones kept for reuse.

    asyncmy's own pool can be left waiting for ever when a task is cancelled in the middle of a
    query (a worker stopping while its heartbeat runs). Here a connection that saw any error or a
    cancellation is closed, never reused, since its protocol state is unknown; the slot it held is
    freed in all cases, and a fresh connection is made on demand.
    """

    def __init__(self, connect: Callable[[], Awaitable[Any]], max_size: int) -> None:
        self._connect = connect
        self._slots = asyncio.Semaphore(max_size)
        self._idle: list[Any] = []
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection for the duration of the block; closed instead of kept if it failed."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                yield conn
            except BaseException:
                conn.close()
                raise
            if self._closed or not conn.connected:
                conn.close()
            else:
                self._idle.append(conn)

    async def fill(self, size: int) -> None:
        """Open `size` connections now (so a bad login fails at `open()`)."""
        made = [await self._connect() for _ in range(size)]
        self._idle.extend(made)

    def close(self) -> None:
        """Close the idle connections; busy ones are closed when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Database:
    """A pool with retries, the statements bound to the table prefix, and the dialect the
    shared SQL queue asks for (`apalis_sql.SqlDatabase`)."""

    ahead_on_backlog = True  # a locking select in every ack costs the server: only under a backlog
    releases_sweep_lock = True  # GET_LOCK is the session's: `sweep_unlock` frees it
    purges_beside = False  # each statement commits by itself, and a beat long in sweeping beats again
    wait_polls = (0.02, 0.5)  # a waiter is woken by a signal; a read now and then is the safety net
    bulk_batch = 10_000
    claims_by_select = True  # no UPDATE ... RETURNING: a claim locks rows, then marks them
    turn_walk = turns  # a limited claim walks the keys and locks their heads in one statement per turn
    keyless_from = True  # a keyed claim's keyless scan starts where the worker's last one stopped
    handing = None  # pushes never hand a task over: workers always claim
    whole_claims = None  # a limited claim is a transaction of statements (`turns`)

    @property
    def whole_beat(self) -> WholeBeat:
        """A heartbeat is one script, one round trip (`beat`)."""
        return self

    def __init__(self, config: MysqlConfig) -> None:
        self.config = config
        self._what = f"mysql at {config.redacted}"
        """What `run`'s errors name: redacting the URL is ~11 us of regexes, and `run` serves
        every statement (a lone task's push, KILL, hand read and ack: four)."""
        self.names = {
            "prefix": config.table_prefix,
            "now": NOW,
            "columns": COLUMNS,
            "task_columns": ", ".join(f"t.{name}" for name in TASK_COLUMNS),  # joined as `t`
            "bulk_where": BULK_WHERE,
            "live_lock": f"'{LIVE_LOCK}'",
        }
        self.sql = dict(load_queries(__package__ or "apalis_mysql", self.names).items())
        self.wakers: dict[str, Waker] = {}
        self.controls = Controls()
        """This process's workers and waiters, told by the control listener."""
        self.contact = Contact()
        """This process's contact with the server: the orphan sweep waits for a steady one."""
        self._pool: Pool | None = None
        self.signals = Signals()
        self._listeners: dict[str, Listener] = {}
        self._control_tag = tag(config.database, config.table_prefix)
        self._queue_tags: dict[str, str] = {}
        self._asking: asyncio.Task[None] | None = None
        self._ask_again = False
        self._listings: dict[str, Listing] = {}
        """Polling workers of this process that pushes may hand tasks to (`handing`)."""
        self.beside = Beside(lambda tag: self.signal(tag))
        """The wake-ups of pushes, sent beside them (`beside`)."""
        self._hands_waking: set[asyncio.Future[Any]] = set()
        """Wake-ups of workers handed a task, still on their way after the push (`hand_push`)."""
        self._watched: list[tuple[float, str, Handed, str]] = []
        """Hands whose listener a KILL woke, to look at (`_watch`): when, the queue, the hand,
        the task."""
        self._looking: asyncio.Future[None] | None = None
        self._none_idle: dict[str, float] = {}
        """Per queue, until when (monotonic) its pushes insert plainly: the last hand found no
        idle worker (a hand costs a push about twice the statements of a plain insert)."""
        self._none_idle_wait: dict[str, float] = {}
        """Per queue, how long its last hand that found no idle worker made pushes plain
        (`NONE_IDLE_FIRST`, doubled by each such hand in a row, up to `NONE_IDLE_FOR`)."""

    async def _connect(self) -> Any:
        c = self.config
        conn = await asyncmy.connect(
            host=c.host,
            port=c.port,
            user=c.user,
            password=c.password,
            database=c.database,
            unix_socket=c.unix_socket,
            connect_timeout=c.connect_timeout,
            autocommit=True,
            charset="utf8mb4",
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        # Every stamp is UNIX_TIMESTAMP(NOW(6)). In the server's SYSTEM time zone that is a local
        # time read back through the C library (about 1 us more per row it is evaluated for), and
        # in a zone with daylight saving one of the two hours that read the same reads back an hour
        # off (the mapping is not one-to-one: MySQL's manual on UNIX_TIMESTAMP). In UTC
        # it is exact. The literals' collation is the tables' (utf8mb4_bin): under the driver's
        # utf8mb4_general_ci, a walk of the keys (`GROUP BY ready_key ORDER BY ready_key LIMIT n`,
        # the keyed claim's turn) was not read in index order: every key with waiting tasks was
        # read and sorted to keep the first n (500 keys: 1.4 ms a walk of 50 instead of 0.2).
        # `release_lost` and `recover` list the ids they change with GROUP_CONCAT: at most 10,000
        # quoted ids of up to 64 characters fit in its length, whatever the server's default.
        # `@apalis_boot`: the end of the second the server started in, for `hand_push` to pass by
        # listings made before it (`handing`). Uptime is whole seconds between the statement's
        # start and the server's (`query_start() - server_start_time`, both truncated), so the
        # whole second is known exactly and no more: `NOW(6) - Uptime`, as read before, fell
        # anywhere in it, up to a second before the start on a connection made early in a second.
        try:
            await conn.cursor().execute(
                "SET time_zone = '+00:00', collation_connection = 'utf8mb4_bin', group_concat_max_len = 1048576,"
                f" @apalis_boot = FLOOR({NOW}) + 1 - (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
                " WHERE VARIABLE_NAME = 'UPTIME')"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    async def open(self) -> list[int]:
        """Connect and migrate; returns the migrations applied now."""
        c = self.config
        self._pool = Pool(self._connect, c.max_size)
        try:
            # Two at least: a push that hands its task over holds one for its transaction and ends
            # the worker's listener's sleep from another, whose answer it waits for `GONE_WITHIN`
            # (`handing`). A second connection made then under load took longer, and the push was
            # handed to a listener that was gone (6 of 12 first pushes at load 24).
            await self._pool.fill(max(c.min_size, min(2, c.max_size)))
        except Exception as exc:
            await self.close()
            raise BackendError(f"cannot connect to mysql at {c.redacted}: {self.describe(exc)}") from None
        try:
            return await self.run(self._migrate)
        except Exception as exc:
            await self.close()
            raise BackendError(f"cannot migrate mysql at {c.redacted}: {self.describe(exc)}") from None

    async def close(self) -> None:
        """Send the wake-ups still on their way (for up to `WAKE_AT_CLOSE` s), stop listening and
        close every connection."""
        if self._pool is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WAKE_AT_CLOSE):
                    await asyncio.gather(self.beside.drain(), *self._hands_waking, return_exceptions=True)
            self.beside.cancel()
        listeners, self._listeners = list(self._listeners.values()), {}
        ids = [i for i in [await listener.stop() for listener in listeners] if i is not None]
        if self._asking is not None:
            self._asking.cancel()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if ids:  # the server would notice the closed connections only when their sleeps end
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0), pool.connection() as conn:
                    for i in ids:
                        with contextlib.suppress(asyncmy.errors.OperationalError, asyncmy.errors.InternalError):
                            await conn.cursor().execute(f"KILL {i}")
        pool.close()

    def waker(self, queue: str) -> Waker:
        """The in-process `Waker` of `queue` (a push here wakes pollers here at once)."""
        waker = self.wakers.get(queue)
        if waker is None:
            waker = self.wakers[queue] = Waker()
        return waker

    def describe(self, exc: BaseException) -> str:
        """An error's text without the password."""
        return redact(str(exc).strip() or type(exc).__name__, self.config.secrets)

    async def run(self, op: Callable[[Conn], Awaitable[T]]) -> T:
        """`op(conn)` on a pooled connection, retried with capped backoff while it is lost."""
        if self._pool is None:
            raise BackendError(f"mysql store at {self.config.redacted} is not open")

        pool = self._pool

        async def once() -> T:
            async with pool.connection() as conn:
                return await op(conn)

        async def recover(_: BaseException) -> None:
            self.signals.forget()  # a restarted server numbers its connections again

        return await retrying(
            once,
            transient=_transient,
            recover=recover,
            what=self._what,
            describe=self.describe,
            contact=self.contact,
            answered=_deadlock,
        )

    async def fetch(self, name: str, params: Mapping[str, Any]) -> list[Any]:
        """All rows of the named statement."""
        return await self.run(lambda conn: _fetch(conn, self.sql[name], _bind(params)))

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        """Run the named statement; the rows it changed."""
        return await self.run(lambda conn: _execute(conn, self.sql[name], _bind(params)))

    async def beat(self, ask: Callable[[], BeatAsk]) -> Beaten:
        """A heartbeat in one round trip: `beat`, `cancels_requested`, `paused` and `release_lost`,
        then the sweep where `ask` says this process may sweep and the queue's sweep lock is free
        (`beat_sweep_lock`, `beat_sweep`), each statement committed by itself as when they were
        sent one by one (a round trip each: eight where this worker sweeps, which a slow server
        or a loaded machine made longer than stale_after, and the other workers' sweeps ran its
        tasks a second time). `ask()` is read at each try, just before the script is sent."""
        sql = self.sql

        async def beat_in(conn: Conn) -> Beaten:
            a = ask()
            cursor = conn.cursor()
            parts = [sql["beat_start"], cursor.mogrify(sql["beat"], a.seen)]
            if a.runs:
                parts.append(cursor.mogrify(sql["cancels_requested"], _bind({"running": a.runs})))
            parts += [
                cursor.mogrify(sql["paused"], {"queue": a.stale["queue"]}),
                cursor.mogrify(sql["release_lost"], _bind(a.lost)),
                cursor.mogrify(sql["beat_sweep_lock"], {"sweep": a.sweep, **a.lock}),
            ]
            if a.sweep:  # else not sent: the server would parse the sweep's block for nothing
                sweep = {**a.stale, "retention": a.retention}
                swept = cursor.mogrify(sql["beat_sweep"], {"id": a.seen["id"], "keep_alive": a.keep_alive})
                swept = swept.replace("{recover}", cursor.mogrify(sql["recover"], _bind(a.stale)))
                tidy = (cursor.mogrify(sql[name], sweep) for name in ("forget_workers", "purge_expired"))
                parts.append(swept.replace("{sweep}", ";\n".join(tidy)))
            parts.append(cursor.mogrify(sql["beat_end"], a.lock))
            await cursor.execute(";\n".join(parts))
            read: list[Any] = []
            while True:
                if cursor.description:
                    read.append(await cursor.fetchall())
                if not await cursor.nextset():
                    break
            *told, ((woke, recovered, locked, _),) = read
            cancels = list(told[0]) if a.runs else []
            paused = bool(told[-1] and told[-1][0][0])
            return Beaten(bool(woke) or bool(recovered), cancels, paused, bool(locked))

        return await self.run(beat_in)

    async def session(self, op: Callable[[Session], Awaitable[T]]) -> T:
        """`op` on one connection, each statement committed by itself (a named lock, not a
        transaction, keeps two sweeps apart)."""
        return await self.run(lambda conn: op(_Session(conn, self.sql)))

    def listen(self, queue: str | None = None) -> None:
        """Start hearing the control plane's signals, and other processes' wake-ups of `queue`."""
        self._listener(self._control_tag, self._control_heard)
        if queue is not None:
            self._listener(self._queue_tag(queue), self.waker(queue).notify)

    async def listening(self) -> None:
        """Return once every listener started sleeps, or after a second without (a waiter
        then reads its task every `wait_polls` until it does)."""
        self.listen()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                for listener in list(self._listeners.values()):
                    await listener.ready.wait()

    async def notify(self, queue: str) -> None:
        """Wake the pollers of `queue`, here at once and in other processes by a signal sent
        beside the caller (`beside`: the server may hold it for seconds)."""
        self.waker(queue).notify()
        self.beside.wake(self._queue_tag(queue))

    async def limited_claim_filled(self, queue: str) -> None:
        """A limited claim took all it asked for (`apalis_sql.limits`): it may have left tasks
        with room that the queue's other daemons, idle since their last claim found every key at
        its limit, could start; their listeners are woken as by a push."""
        await self.notify(queue)

    async def notify_control(self) -> None:
        """Tell the other processes' control listeners to look: a cancel was asked of a running
        task, or a task someone may wait for ended. This process looks too (its own listener
        is left out of its signals). The signal goes beside the caller (`beside`)."""
        self._control_woken()
        self.beside.wake(self._control_tag)

    async def tidy(self) -> None:
        """Nothing to do: InnoDB's purge removes old row versions by itself."""

    async def signal(self, tag: str) -> None:
        """End the sleep of the other processes' listeners of `tag` (`listener.Signals`)."""
        await self.run(lambda conn: self.signals.send(conn, tag))

    def _queue_tag(self, queue: str) -> str:
        """The queue's wake-up tag, kept: every claim and plain push names it (a SHA-1 each)."""
        known = self._queue_tags.get(queue)
        if known is None:
            if len(self._queue_tags) >= 1024:  # queues named on the fly: kept bounded
                self._queue_tags.clear()
            known = self._queue_tags[queue] = tag(self.config.database, self.config.table_prefix, queue)
        return known

    def _listener(self, name: str, woken: Callable[[], object]) -> None:
        listener = self._listeners.get(name)
        if listener is None:
            announce = functools.partial(self.signal, self._control_tag)
            listener = self._listeners[name] = Listener(self._connect, name, woken, self.signals.own, announce)
            listener.start()

    def _control_heard(self) -> None:
        """The control listener was woken: by a control signal, or by a listener of another
        process announcing itself (`listener.Signals.heard`)."""
        self.signals.heard()
        self._control_woken()

    def _control_woken(self) -> None:
        """A control signal (it says not which task): one lookup finds which tasks waited for
        here have ended, and their waiters alone read them; the runs of this process's workers
        that have a cancel requested are asked for (one round of lookups at a time)."""
        if self._asking is not None and not self._asking.done():
            self._ask_again = True
            return
        self._asking = asyncio.create_task(self._ask(), name="apalis-mysql-control")

    async def _ask(self) -> None:
        self._ask_again = True
        while self._ask_again:
            self._ask_again = False
            waited = self.controls.waited()
            if waited:
                try:
                    for (task_id,) in await self.fetch("ended_of", {"ids": waited}):
                        self.controls.ended(task_id)
                except Exception:  # the waiters read their tasks themselves, then
                    self.controls.wake_waiters()
            for worker in list(self.controls.workers.values()):
                runs = list(worker.running())
                if not runs:
                    continue
                with contextlib.suppress(Exception):  # the heartbeat asks too
                    for task_id, reason in await self.fetch("cancels_requested", {"running": runs}):
                        worker.on_cancel(task_id, reason)

    async def locked(
        self, lock: str, queue: str, key: str, op: Callable[[Session], Awaitable[T]], *, durable: bool
    ) -> T:
        """`op` in one transaction inside a named lock of the database, prefix, `lock`, `queue`
        and `key` (`named_lock`, 64 characters at most: a digest of them), freed after the
        commit; a connection that fails is closed (`Pool`), which rolls back and frees it.
        Every commit waits for the server's log flush (`durable` is the server's setting)."""
        scope = f"{self.config.database}:{self.config.table_prefix}:{queue}:{key}"
        name = {"lock": f"apalis-{lock}:" + hashlib.sha1(scope.encode()).hexdigest()}

        async def in_lock(conn: Conn) -> T:
            # The lock and BEGIN ride with the first read, the commit and the unlock with the
            # statements left (`locked`). A holder whose client stops mid-transaction (a frozen
            # process keeps its connection open) is ended by the server after 10 s idle in it,
            # which frees the lock.
            cursor = conn.cursor()
            lock, unlock = (cursor.mogrify(self.sql[which], name) for which in ("named_lock", "named_unlock"))
            return await in_named_lock(conn, self.sql, _bind, lock, unlock, op)

        return await self.run(in_lock)

    def sweep_params(self, queue: str) -> dict[str, Any]:
        """The named lock of the queue's sweep (64 characters at most: a digest of its scope)."""
        scope = f"{self.config.database}:{self.config.table_prefix}:{queue}"
        return {"lock": "apalis-sweep:" + hashlib.sha1(scope.encode()).hexdigest()}

    # -- the dialect: inserts, claims and acks as MySQL/MariaDB writes them --------------------

    async def insert(self, queue: str, tasks: Sequence[NewTask]) -> int:
        """Insert tasks, many rows per statement; ids and keys already there are skipped. A
        lone task due now may be handed to an idle worker (`handing`)."""
        if len(tasks) == 1 and _handable(tasks[0]) and time.monotonic() >= self._none_idle.get(queue, 0.0):
            return await self._hand(queue, tasks[0])
        inserted = 0
        keyed = any(t.limit_key is not None for t in tasks)  # then with each task's key and number
        statement, row = (self.sql["insert_keyed"], _INSERT_ROW_KEYED) if keyed else (self.sql["insert"], _INSERT_ROW)
        for chunk in _chunks(tasks):
            args: list[Any] = []
            for t in chunk:
                args += (t.id, queue, t.payload, t.max_attempts, t.run_at, t.priority, t.idempotency_key)
                args += (encode_meta(t.meta), t.waited)
                if keyed:
                    args += (t.limit_key, None)  # its number: `_insert_numbered`
            query = statement.replace("{rows}", ", ".join([row] * len(chunk)))
            # Affected rows count inserts only (asyncmy sets no CLIENT_FOUND_ROWS): a skipped
            # duplicate counts 0, so a shortfall means some id or key was already there.
            if keyed:
                inserted += await self.run(functools.partial(self._insert_numbered, queue, chunk, query, args))
            else:
                inserted += await self.run(functools.partial(_execute, query=query, params=args))
        if inserted:
            self.beside.wake(self._queue_tag(queue))
        return inserted

    async def _insert_numbered(
        self, queue: str, chunk: Sequence[NewTask], query: str, args: list[Any], conn: Conn
    ) -> int:
        """Insert a chunk with keys (`insert_keyed`), each keyed task numbered within its key
        (migration 0009): the key's next number as `limit_numbers` reads it, plus the task's place
        among the chunk's tasks of its key. Two pushes of one key at once may share a number,
        which only puts their tasks side by side."""
        keys = list(dict.fromkeys(t.limit_key for t in chunk if t.limit_key is not None))
        if not keys:  # a chunk of a keyed batch's tasks without a key
            return await _execute(conn, query, args)
        lookup = self.sql["limit_numbers"].replace("{keys}", ", ".join(["%s"] * len(keys)))
        found = {key: seq for key, seq in await _fetch(conn, lookup, [queue, *keys, queue])}
        first = found.pop(None, None)
        places: dict[str, int] = {}
        for at, t in enumerate(chunk):
            if t.limit_key is not None:
                place = places.get(t.limit_key, 0)
                places[t.limit_key] = place + 1
                start = found.get(t.limit_key)
                args[at * _KEYED_ARGS + _KEYED_ARGS - 1] = int(start if start is not None else first or 1) + place
        return await _execute(conn, query, args)

    async def _hand(self, queue: str, task: NewTask) -> int:
        """Push one task, claimed for the most recently listed idle worker if there is one
        (`hand_push`); then wake that worker's listener alone, or every listener of the queue
        (also when that listener was gone: the task is taken back, `hand_gone`)."""
        params = {
            "id": task.id,
            "queue": queue,
            "payload": task.payload,
            "max_attempts": task.max_attempts,
            "run_at": task.run_at,
            "priority": task.priority,
            "meta": encode_meta(task.meta),
            "waited": task.waited,
        }
        # Ours are told by the queue's waker (0, which no connection is numbered, when none).
        args = _bind({**params, "own": list(self.signals.own) or [0], "span": SPAN})
        handed = await self.run(lambda conn: hand_push(conn, self.sql, args, self.wake_listener))
        if not handed.listed:  # not only passed by a listing held for a moment: none to hand to
            wait = self._none_idle_wait[queue] = min(
                2 * self._none_idle_wait.get(queue, NONE_IDLE_FIRST / 2), NONE_IDLE_FOR
            )
            self._none_idle[queue] = time.monotonic() + wait
        elif handed.worker is not None:
            self._none_idle_wait.pop(queue, None)
        if not handed.inserted:
            return 0
        if handed.waking is not None:
            # Answered at once when the listener is gone, usually before the COMMIT's flush.
            await asyncio.wait({handed.waking}, timeout=GONE_WITHIN)
            if handed.gone():
                # Stored already: a take-back that fails leaves the task to the orphan sweep.
                with contextlib.suppress(Exception):
                    await self._take_back(queue, handed, task.id)
            else:
                self._hand_waking(queue, handed, task.id)
        elif handed.worker is None:
            self.beside.wake(self._queue_tag(queue))
        return 1

    async def wake_listener(self, listener: int) -> None:
        """End the sleep of one listener (of a worker a push handed a task to)."""
        await self.run(lambda conn: end_sleep(conn, listener))

    async def _take_back(self, queue: str, handed: Handed, task_id: str) -> None:
        """The listener of the worker `task_id` was handed to is gone: the task goes back to
        the queue's other workers, woken as by a plain push (`hand_gone`)."""
        await self.execute("hand_gone", {"worker": handed.worker, "listener": handed.listener, "id": task_id})
        self.beside.wake(self._queue_tag(queue))

    def _hand_waking(self, queue: str, handed: Handed, task_id: str) -> None:
        """A handed task's wake-up goes on after its push: kept until it ends. Should it find
        the listener gone, or should the listener it ended be found gone `WATCH_AFTER` later (its
        process was killed while it slept: `_watch`), the task is taken back (`_take_back`)."""
        waking = handed.waking
        assert waking is not None

        def ended(waking: asyncio.Future[None]) -> None:
            self._hands_waking.discard(waking)
            if self._pool is None:
                return
            if handed.gone():
                self._beside_hand(self._take_back(queue, handed, task_id))
            elif handed.watched and handed.woke():
                self._watch(queue, handed, task_id)

        if waking.done():
            ended(waking)
        else:
            self._hands_waking.add(waking)
            waking.add_done_callback(ended)

    def _beside_hand(self, job: Awaitable[None]) -> None:
        """Run `job` for a hand beside the push (kept for `close` to wait for; its failure is no
        loss: the orphan sweep gives the task back)."""
        doing = asyncio.ensure_future(job)
        self._hands_waking.add(doing)
        doing.add_done_callback(self._hands_waking.discard)
        doing.add_done_callback(_no_loss)

    def _watch(self, queue: str, handed: Handed, task_id: str) -> None:
        """The KILL that woke the listener of the worker `task_id` was handed to succeeded:
        `WATCH_AFTER` later, if that listener's connection has ended (its live lock is free),
        its process is gone and the task is taken back (`_look`)."""
        self._watched.append((time.monotonic(), queue, handed, task_id))
        if self._looking is None or self._looking.done():
            self._looking = asyncio.ensure_future(self._look())
            self._beside_hand(self._looking)

    async def _look(self) -> None:
        """Look at the listeners of the hands `_watch` was given, `WATCH_AFTER` after the first,
        in one statement for all those woken at least `WATCH_AFTER / 5` ago (a round trip
        costs the pusher ~175 us of CPU, a stream of 200 hands a second gives ~10 a look); the
        others at the next look."""
        while self._watched:
            await asyncio.sleep(self._watched[0][0] + WATCH_AFTER - time.monotonic())
            now = time.monotonic()
            ripe = [w for w in self._watched if now - w[0] >= WATCH_AFTER / 5]
            self._watched = [w for w in self._watched if now - w[0] < WATCH_AFTER / 5]
            listeners = sorted({handed.listener for _, _, handed, _ in ripe})
            with contextlib.suppress(Exception):  # not looked at: the orphan sweep gives them back
                ended = await self.run(functools.partial(left, listeners=listeners))
                for _, queue, handed, task_id in ripe:
                    if handed.listener in ended:
                        await self._take_back(queue, handed, task_id)

    async def claim(self, queue: str, worker_id: str, limit: int) -> list[Task[bytes]]:
        """The tasks pushes handed to this worker while it was listed idle, if any came (a
        plain read); else one short transaction: a SKIP LOCKED select, then the UPDATE of those
        ids (`claims`), which also lists the worker idle when it comes back short (or again,
        when its listing runs low), or unlists it when it comes back full (`handing`)."""
        listing = self._listings.setdefault(worker_id, Listing())
        listener = self._listeners.get(self._queue_tag(queue))
        heard_by = listener.connection_id if listener is not None else None
        # Listed, or was until lately: hands may have come (under the listener it has now).
        if listing.until > time.time() - SPAN and heard_by is not None:
            params = {"worker": worker_id, "listener": heard_by, "seen": listing.seen_json()}
            rows = await self.fetch("handed", params)
            if rows:
                rows.sort(key=lambda row: row[-1])  # in the order they were handed
                handed = [task_from_row(row[:-1]) for row in rows[:limit]]
                listing.free -= len(handed)
                listing.seen.update(task.id for task in handed)
                return handed

        def list_or_unlist(claimed: list[list[Task[bytes]]]) -> list[tuple[str, Mapping[str, Any]]]:
            if len(claimed[0]) < limit:
                heard_on = None if listener is None else listener.connection
                if heard_on is None or not listing.due(limit, heard_on):
                    return []
                listing.listed(limit - len(claimed[0]), heard_on)
                params = {"worker": worker_id, "queue": queue, "listener": heard_on[1]}
                return [(self.sql["list"], {**params, "span": SPAN, "free": listing.free})]
            if not listing.until or not listing.free:
                return []
            # No more hands; those already made are still read by its claims until the listing
            # would have lapsed (one may have come just before this transaction).
            listing.unlisted()
            return [(self.sql["unlist"], {"worker": worker_id})]

        _, (claimed,) = await self.run(
            lambda conn: transact(conn, self.sql, queue, (), [(worker_id, limit)], list_or_unlist)
        )
        listing.seen.update(task.id for task in claimed)
        return claimed

    async def stopped_polling(self, worker_id: str) -> None:
        """`worker_id` stopped polling: unlisted, and the tasks handed to it that it never read
        go back to the queue, their attempts not counted (`farewell_idle`)."""
        listing = self._listings.pop(worker_id, None)
        if listing is not None:
            await self.fetch("farewell_idle", {"worker": worker_id, "seen": listing.seen_json()})

    async def ack(self, queue: str, plan: AckPlan, slots: Sequence[tuple[str, int]]) -> list[list[Task[bytes]]]:
        """Apply `plan` in as few statements as `acks` makes (usually one) and claim for
        `slots`, in one transaction when there is more than one statement or a claim."""
        # In the same round trip: did a task someone waits for end here? Then they are told.
        sql = self.sql
        relist = self._relisting(queue, plan)
        statements = [(sql["acked_start"], []), *ack_statements(sql, plan), *relist, (sql["acked_waited"], [])]
        waited = False

        async def ack_in(conn: Conn) -> list[list[Task[bytes]]]:
            nonlocal waited
            cursor = conn.cursor()
            bound = [cursor.mogrify(query, args) for query, args in statements]
            if len(statements) == 3 and not slots:  # one UPDATE: no transaction
                await cursor.execute(";\n".join(bound))
                await cursor.nextset()
                await cursor.nextset()
                waited = bool(await cursor.fetchall())
                return []
            changed, claimed = await transact(conn, self.sql, queue, bound, slots)
            waited = changed[-1] > 0
            return claimed

        claimed = await self.run(ack_in)
        await self._acked(queue, plan, waited, slots, claimed)
        return claimed

    def _relisting(self, queue: str, plan: AckPlan) -> list[tuple[str, Any]]:
        """The statements that list again, with the slots the runs of `plan` give back, each
        listed worker of this process whose listing runs low (`handing`), for the
        acknowledgement's transaction: no round trip or flush of their own."""
        listings = self._listings
        freed: dict[str, int] = {}
        for task_id, lock_by, *_ in plan.rows() if listings else ():
            if lock_by is None:
                continue
            listing = listings.get(lock_by)
            if listing is not None and listing.open and task_id in listing.seen:
                freed[lock_by] = freed.get(lock_by, 0) + 1
        listener = self._listeners.get(self._queue_tag(queue)) if freed else None
        heard_on = None if listener is None else listener.connection
        if heard_on is None:
            return []
        statements: list[tuple[str, Any]] = []
        for worker_id, count in freed.items():
            listing = listings[worker_id]
            listing.freed += count
            slots = listing.free + listing.freed
            if listing.due(slots, heard_on):
                listing.listed(slots, heard_on)
                params = {"worker": worker_id, "queue": queue, "listener": heard_on[1]}
                params |= {"span": SPAN, "free": slots}
                # One entry a statement: the transaction counts its statements' results.
                statements += [(part, params) for part in self.sql["list"].split(";\n")]
        return statements

    def ack_ahead(self, session: Any, plan: AckPlan) -> list[Any]:
        """Send the acknowledgement of `plan` ahead of a limited claim's first read, in its
        transaction (`locked.LockedSession.ahead`); the rows filled once sent say whether some
        task of it ended while someone waits for it (`acked_ahead`, after the commit): the
        UPDATEs say so as they run (`acked_waited`), no second read of the batch's rows."""
        session.ahead(self.sql["acked_start"], [])
        for query, args in ack_statements(self.sql, plan):
            session.ahead(query, args)
        kept: list[Any] = session.ahead(self.sql["acked_waited"], [])
        return kept

    async def acked_ahead(self, queue: str, plan: AckPlan, waited: list[Any]) -> None:
        """`plan`, sent ahead of a limited claim (`ack_ahead`), was committed with it."""
        await self._acked(queue, plan, bool(waited), (), [])

    async def _acked(
        self,
        queue: str,
        plan: AckPlan,
        waited: bool,
        slots: Sequence[tuple[str, int]],
        claimed: list[list[Task[bytes]]],
    ) -> None:
        """After the commit of `plan` and of the claims for `slots`: the hand-over's listings
        follow the tasks, waiters of a task that ended are told, and a task ready again wakes
        the queue's pollers in other processes (those signals sent beside)."""
        listings = self._listings
        if listings:
            for task_id, lock_by, *_ in plan.rows():  # no longer running under that worker
                listing = listings.get(lock_by) if lock_by is not None else None
                if listing is not None:
                    listing.seen.discard(task_id)
            for (worker_id, _), tasks in zip(slots, claimed, strict=False):
                listing = listings.get(worker_id)
                if listing is not None:
                    listing.seen.update(task.id for task in tasks)
        # Beside the acknowledgement, as a push's (`beside`): a KILL the server holds for seconds
        # held the worker's next acknowledgements and the tasks claimed ahead in this one.
        if waited:
            await self.notify_control()
        if plan.wake:
            self.beside.wake(self._queue_tag(queue))

    async def _migrate(self, conn: Conn) -> list[int]:
        """Apply the migrations not yet recorded, under a named lock against concurrent starts."""
        prefix = self.config.table_prefix
        lock = f"apalis-migrate:{self.config.database}:{prefix}"[:64]
        applied: list[int] = []
        cursor = conn.cursor()
        await cursor.execute("SELECT GET_LOCK(%s, 30)", (lock,))
        # Made only where missing: a CREATE TABLE IF NOT EXISTS of a table that exists leaves a
        # note, which the driver fetches with one more round trip and logs as a warning at every
        # start ("Table 'apalis_schema_version' already exists").
        await cursor.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (f"{prefix}schema_version",),
        )
        exists = await cursor.fetchone()
        if not (exists and exists[0]):
            await cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {prefix}schema_version (version INT NOT NULL PRIMARY KEY,"
                " name VARCHAR(191) NOT NULL, applied_at DOUBLE NOT NULL) ENGINE = InnoDB"
            )
        await cursor.execute(f"SELECT COALESCE(MAX(version), 0) FROM {prefix}schema_version")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        for migration in load_migrations(__package__ or "apalis_mysql", self.names):
            if migration.version <= current:
                continue
            for statement in _split(migration.sql):
                await cursor.execute(statement)
            await cursor.execute(
                f"INSERT INTO {prefix}schema_version (version, name, applied_at) VALUES (%s, %s, {NOW})",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
        await cursor.execute("SELECT RELEASE_LOCK(%s)", (lock,))  # on an error, closing frees it
        return applied


class _Session:
    """Named statements on one connection (`Database.session`)."""

    __slots__ = ("_conn", "_sql")

    def __init__(self, conn: Conn, statements: Mapping[str, str]) -> None:
        self._conn = conn
        self._sql = statements

    async def execute(self, name: str, params: Mapping[str, Any]) -> int:
        return await _execute(self._conn, self._sql[name], _bind(params))

    async def fetch(self, name: str, params: Mapping[str, Any]) -> list[Any]:
        return await _fetch(self._conn, self._sql[name], _bind(params))


async def _fetch(conn: Conn, query: str, params: Any) -> list[Any]:
    """The rows of the statement (of the last one, where it is a script of several)."""
    cursor = conn.cursor()
    await cursor.execute(query, params)
    rows = await cursor.fetchall()
    while await cursor.nextset():
        rows = await cursor.fetchall()
    return list(rows)


async def _execute(conn: Conn, query: str, params: Any) -> int:
    """Run the statement; the rows it changed (of a script of several: its last statement's,
    `release_lost` and `recover`: their UPDATE's)."""
    cursor = conn.cursor()
    changed = int(await cursor.execute(query, params))
    while await cursor.nextset():
        changed = int(cursor.rowcount)
    return changed


def _no_loss(done: asyncio.Future[Any]) -> None:
    """A help that ended: its failure (the store away, or closed meanwhile) is no loss."""
    if not done.cancelled():
        done.exception()


def _bind(params: Mapping[str, Any]) -> dict[str, Any]:
    """Named parameters with each list as a tuple, which the driver writes as an `IN` list; an
    empty list as `('')`, which no id or key equals (`IN ()` is not SQL)."""
    return {k: (tuple(v) or ("",)) if isinstance(v, list) else v for k, v in params.items()}


def _handable(task: NewTask) -> bool:
    """A task a push may hand to an idle worker: due now, and claimed by any worker (no key a
    global limit counts, no unique or idempotency key to look up)."""
    plain = task.limit_key is None and task.unique is None and task.idempotency_key is None
    return plain and task.run_at <= time.time()


def _chunks(tasks: Sequence[NewTask]) -> list[Sequence[NewTask]]:
    """Tasks cut into statements of at most about `_CHUNK_BYTES` of payload (usually one)."""
    out: list[Sequence[NewTask]] = []
    start, size = 0, 0
    for i, task in enumerate(tasks):
        size += len(task.payload) + 256
        if size > _CHUNK_BYTES and i > start:
            out.append(tasks[start:i])
            start, size = i, len(task.payload) + 256
    if start < len(tasks):
        out.append(tasks[start:])
    return out


def _split(script: str) -> Sequence[str]:
    """The statements of a migration (they hold no `;` inside literals)."""
    body = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [part.strip() for part in body.split(";") if part.strip()]
