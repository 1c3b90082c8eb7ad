"""The connections of one MySQL/MariaDB store: an asyncmy pool with retries, and migrations.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncmy
from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError
from apalis_cli.polling import Waker
from apalis_cli.redact import redact
from apalis_cli.retrying import retrying
from apalis_sql import TASK_COLUMNS, load_migrations, load_queries

from .config import MysqlConfig

__all__ = ["Database", "Pool"]

T = TypeVar("T")
Conn = Any  # asyncmy ships no usable annotations for its Cython classes

NOW = "UNIX_TIMESTAMP(NOW(6))"
COLUMNS = ", ".join(TASK_COLUMNS)
# Lost connection, server gone, shutdown in progress, connection killed, lock wait/deadlock.
_TRANSIENT_CODES = {1040, 1053, 1205, 1213, 1927, 2003, 2006, 2013, 2014, 2055}
_DEADLOCK = 1213  # retried, but the server answered: not a loss of contact


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
    """A pool with retries and the statements bound to the table prefix."""

    def __init__(self, config: MysqlConfig) -> None:
        self.config = config
        self.names = {"prefix": config.table_prefix, "now": NOW, "columns": COLUMNS}
        self.sql = dict(load_queries(__package__ or "apalis_mysql", self.names).items())
        self.wakers: dict[str, Waker] = {}
        self.contact = Contact()
        """This process's contact with the server: the orphan sweep waits for a steady one."""
        self._pool: Pool | None = None

    async def open(self) -> list[int]:
        """Connect and migrate; returns the migrations applied now."""
        c = self.config

        async def connect() -> Any:
            return await asyncmy.connect(
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

        self._pool = Pool(connect, c.max_size)
        try:
            await self._pool.fill(max(c.min_size, 1))
        except Exception as exc:
            await self.close()
            raise BackendError(f"cannot connect to mysql at {c.redacted}: {self.describe(exc)}") from None
        try:
            return await self.run(self._migrate)
        except Exception as exc:
            await self.close()
            raise BackendError(f"cannot migrate mysql at {c.redacted}: {self.describe(exc)}") from None

    async def close(self) -> None:
        """Close every connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
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

        return await retrying(
            once,
            transient=_transient,
            what=f"mysql at {self.config.redacted}",
            describe=self.describe,
            contact=self.contact,
            answered=_deadlock,
        )

    async def fetch(self, query: str, params: Any = None) -> list[Any]:
        """All rows of `query`."""

        async def op(conn: Conn) -> list[Any]:
            cursor = conn.cursor()
            await cursor.execute(query, params)
            return list(await cursor.fetchall())

        return await self.run(op)

    async def execute(self, query: str, params: Any = None) -> int:
        """Run `query`; returns the number of rows it changed."""

        async def op(conn: Conn) -> int:
            return int(await conn.cursor().execute(query, params))

        return await self.run(op)

    async def _migrate(self, conn: Conn) -> list[int]:
        """Apply the migrations not yet recorded, under a named lock against concurrent starts."""
        prefix = self.config.table_prefix
        lock = f"apalis-migrate:{self.config.database}:{prefix}"[:64]
        applied: list[int] = []
        cursor = conn.cursor()
        await cursor.execute("SELECT GET_LOCK(%s, 30)", (lock,))
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


def _split(script: str) -> Sequence[str]:
    """The statements of a migration (they hold no `;` inside literals)."""
    body = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [part.strip() for part in body.split(";") if part.strip()]
