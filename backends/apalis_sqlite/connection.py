"""One aiosqlite connection per store and process: pragmas, migrations, one-hop transactions,
and reconnecting when the connection was closed or broke under us.

aiosqlite runs every call on the connection's own thread, in order. A whole transaction is
queued there as ONE function (`aiosqlite.Connection._execute`), so a batch costs one hop between
the event loop and that thread, and no other coroutine's statement can land inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite
from apalis_cli.contact import Contact
from apalis_cli.errors import BackendError
from apalis_cli.retrying import retrying
from apalis_sql import Migration, Queries

from .config import SqliteConfig

__all__ = ["Database", "split_statements"]

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

_CLOSED = ("connection closed", "no active connection", "closed database")
_RECONNECT = ("disk i/o error", "unable to open", *_CLOSED)
_CLOSE_WITHIN = 10.0
_BUSY = ("database is locked", "database is busy", "database table is locked")
_CHECKPOINT_EVERY = 200  # writes made by `write_now` between two checkpoints
_READ_NOW_STEPS = 10_000  # SQLite VM steps a `read_now` may take (0.15 ms here) before it is cut
_HOLD_AFTER = 400  # `write_now` writes between two checkpoints that hold them back (WAL ~8 MB)


def _message(exc: BaseException) -> str:
    return str(exc).lower()


def transient(exc: BaseException) -> bool:
    """True for errors worth another try: a closed or broken connection, a busy database."""
    if isinstance(exc, ValueError | sqlite3.ProgrammingError | sqlite3.OperationalError):
        message = _message(exc)
        return any(part in message for part in _RECONNECT + _BUSY)
    return False


def _needs_reconnect(exc: BaseException) -> bool:
    message = _message(exc)
    return any(part in message for part in _RECONNECT)


class Database:
    """The store's connection: opened lazily, migrated on connect, reopened after a drop."""

    def __init__(self, config: SqliteConfig, queries: Queries, migrations: Sequence[Migration]) -> None:
        self.config = config
        self._queries = queries
        self._migrations = list(migrations)
        self._conn: aiosqlite.Connection | None = None
        self._generation = 0
        self.reconnects = 0
        """How many times a failed connection was dropped to open a new one."""
        self.contact = Contact()
        """This process's contact with the file: a busy or broken database stalls every worker,
        so the orphan sweep waits for a steady one."""
        self._lock = asyncio.Lock()
        self._closed = True
        self._closing: dict[aiosqlite.Connection, asyncio.Future[None]] = {}
        self._now: sqlite3.Connection | None = None  # `write_now`'s
        self._written_now = 0
        self._checkpointing: asyncio.Future[None] | None = None
        self._holding = False  # True until a checkpoint that must see no write has run
        self._since_afresh = 0  # `write_now` writes since the WAL last started afresh
        self._copier: _Copier | None = None

    @property
    def connected(self) -> bool:
        """True while the store holds a connection (it may still turn out to be broken)."""
        return self._conn is not None

    async def open(self) -> None:
        """Connect and migrate (idempotent)."""
        self._closed = False
        await self._connection()

    async def close(self) -> None:
        """Close the connection; later operations fail until `open()` again."""
        self._closed = True
        now, self._now = self._now, None
        if now is not None:
            now.close()
        checkpointing = self._checkpointing
        if checkpointing is not None:
            with contextlib.suppress(Exception):  # its failure is nothing to report at close
                await asyncio.shield(checkpointing)
        copier, self._copier = self._copier, None
        if copier is not None:
            copier.close()
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await self._close(conn)

    async def drop(self) -> None:
        """Close the connection out from under the store, as a failure would (for tests)."""
        conn = self._conn
        if conn is not None:
            await self._close(conn)

    async def _close(self, conn: aiosqlite.Connection) -> None:
        """Close `conn` once, however many callers ask at the same time: aiosqlite's `close()`
        run twice concurrently waits for ever on a worker thread that already stopped."""
        closing = self._closing.get(conn)
        if closing is None:
            closing = self._closing[conn] = asyncio.ensure_future(_close_quietly(conn))
            closing.add_done_callback(lambda _: self._closing.pop(conn, None))
        await asyncio.shield(closing)

    async def read(self, work: Work[T]) -> T:
        """Run `work(connection)` on the connection's thread, outside a transaction."""
        return await self._run(work)

    async def write(self, work: Work[T]) -> T:
        """Run `work(connection)` in one `BEGIN IMMEDIATE` transaction on the connection's thread.

        IMMEDIATE takes the write lock up front, so a read-modify-write never fails half way
        with SQLITE_BUSY_SNAPSHOT when another process wrote in between: it waits (busy_timeout).
        """
        return await self._run(lambda conn: _transaction(conn, work))

    def read_now(self, work: Work[T]) -> tuple[bool, T | None]:
        """Run `work(connection)`, which only reads, right here on the event loop on
        `write_now`'s connection, outside a transaction: `(True, result)`, or `(False, None)`
        where that connection is not to be had (then `read` it). `work` reads its cursors to the
        end: a statement left mid-way would hold its snapshot, and the WAL could not start afresh.

        For a question asked often whose answer is usually no, such as an idle worker's "is
        anything ready?": the hop to the connection's thread costs several times the read.
        """
        conn = self._now_connection()
        if conn is None:
            return False, None
        # A read that turns out long (a scan past many tasks not due yet) is cut short and asked
        # the usual way: the loop must not stall on it.
        conn.set_progress_handler(_stop, _READ_NOW_STEPS)
        try:
            return True, work(conn)
        except sqlite3.Error:
            return False, None  # cut short, or the usual way says what is wrong, or retries
        finally:
            conn.set_progress_handler(None, 0)

    def _now_connection(self) -> sqlite3.Connection | None:
        conn = self._now
        if conn is None:
            if self._conn is None or self.config.in_memory or self.config.synchronous != "normal":
                return None
            conn = self._now = _open_now(self.config.path)
        return conn

    def write_now(self, work: Work[T]) -> tuple[bool, T | None]:
        """Run `work(connection)` in one transaction right here on the event loop, when that
        costs no wait: `(True, result)`, else `(False, None)` and nothing was written (the
        caller then uses `write`).

        For small writes such as one push: the hop to the connection's thread and back costs
        more than the write itself (an insert and its commit take about 30 µs; the hop, 150 µs
        and more on a loaded machine). It runs on a connection of its own that never waits for
        the write lock (busy_timeout 0: a lock held elsewhere answers at once, and the write
        goes the usual way) and never checkpoints (a commit that copies the WAL back would stall
        the loop on its fsyncs): a checkpoint is started in the background after every
        `_CHECKPOINT_EVERY` writes here (`_copy_back`). Only with synchronous = "normal" (no
        fsync per commit) and a file. A caller that writes this way in a loop yields to the
        event loop now and then.
        """
        if self._holding:
            return False, None  # the WAL is being started afresh: no write may race it (see below)
        conn = self._now_connection()
        if conn is None:
            return False, None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return False, None  # the write lock is held elsewhere (or the file is gone)
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            if isinstance(exc, sqlite3.Error):
                return False, None  # the usual way says what is wrong, or retries
            raise
        self._written_now += 1
        self._since_afresh += 1
        if self._since_afresh >= _HOLD_AFTER + _CHECKPOINT_EVERY:
            self._holding = True  # the checkpoint running is slow: wait for it, then start afresh
        if self._checkpointing is None and (
            self._written_now % _CHECKPOINT_EVERY == 0 or self._since_afresh >= _HOLD_AFTER
        ):
            self._checkpointing = asyncio.ensure_future(self._copy_back())
            self._checkpointing.add_done_callback(self._copied_back)
        return True, result

    @property
    def holding(self) -> bool:
        """True while `write_now` holds writes back for a checkpoint (`held()` waits for it)."""
        return self._holding

    async def held(self) -> None:
        """Wait until `write_now` takes writes again (a checkpoint that must see none is done)."""
        checkpointing = self._checkpointing
        if self._holding and checkpointing is not None:
            with contextlib.suppress(Exception):  # failed: written the usual way, tried again later
                await asyncio.shield(checkpointing)

    async def _copy_back(self) -> None:
        """Copy the WAL back into the database while this process goes on writing; after
        `_HOLD_AFTER` writes here since the WAL last started afresh, once more with them held.

        A checkpoint's cost is its two fsyncs (the WAL's, then the database's: about 4 ms here,
        where copying 1,000 pages takes 0.2 ms), so it runs on a connection and thread of its own
        (`_Copier`) while pushes go on being written on the loop. But SQLite starts the WAL
        afresh (writes from its start again, the file stops growing) only when a write begins
        after a checkpoint copied all of it, which one overlapped by writes did not. So every
        `_HOLD_AFTER` writes, right after such a copy, a second checkpoint copies what was
        written during it (little: its fsyncs are short) on the store's connection, and this
        process's pushes wait for it (`held`), as they waited for every checkpoint before. A copy
        slow enough for another `_HOLD_AFTER` writes to pile up holds them back at once.
        """
        try:
            if not self._holding:
                before = self._written_now
                wal, copied = await self._copy_aside()
                if 0 <= wal <= copied and self._written_now == before:
                    self._since_afresh = 0  # all copied, nothing written since: the next write restarts it
                if self._since_afresh < _HOLD_AFTER:
                    return
                self._holding = True
            await self._run(_checkpoint)
            self._since_afresh = 0
        finally:
            self._holding = False

    async def _copy_aside(self) -> tuple[int, int]:
        copier = self._copier
        if copier is None:
            copier = self._copier = _Copier(self.config)
        try:
            return await copier.copy()
        except Exception:
            self._copier = None  # a new connection next time
            copier.close()
            raise

    def _copied_back(self, task: asyncio.Future[None]) -> None:
        self._checkpointing = None
        if not task.cancelled():
            task.exception()  # a failed checkpoint is tried again after the next writes

    async def _run(self, work: Work[T]) -> T:
        seen = self._generation

        async def once() -> T:
            nonlocal seen
            conn = await self._connection()
            seen = self._generation
            # `_execute` is aiosqlite's own queueing primitive (see the module docstring).
            result = await cast(Any, conn)._execute(_call, conn, work)
            return cast(T, result)

        async def recover(exc: BaseException) -> None:
            if _needs_reconnect(exc):
                await self._discard(seen)

        return await retrying(once, transient=transient, recover=recover, what="sqlite", contact=self.contact)

    async def _connection(self) -> aiosqlite.Connection:
        conn = self._conn
        if conn is not None:
            return conn
        if self._closed:
            raise BackendError("the sqlite store is closed")
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    async def _discard(self, generation: int) -> None:
        """Forget a connection that failed (once, however many operations saw it fail)."""
        async with self._lock:
            if generation != self._generation:
                return
            self._generation += 1
            self.reconnects += 1
            conn, self._conn = self._conn, None
            if conn is not None:
                await self._close(conn)

    async def _connect(self) -> aiosqlite.Connection:
        config = self.config
        if not config.in_memory:
            Path(config.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(config.path, isolation_level=None, timeout=config.busy_timeout)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open sqlite database {config.path}: {exc}") from exc
        try:
            await cast(Any, conn)._execute(_call, conn, self._prepare)
        except BaseException:
            await self._close(conn)
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Pragmas for this connection, then the schema brought up to date."""
        config = self.config
        conn.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout * 1000)}")
        if not config.in_memory:
            # WAL: readers never block the writer; NORMAL is durable across crashes of the
            # process (not of the machine's power) and skips an fsync per commit.
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {config.synchronous.upper()}")
        _transaction(conn, self._migrate)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        queries = self._queries
        conn.execute(queries.version_table)
        row = conn.execute(queries.get_version).fetchone()
        current = row[0] if row else 0
        latest = self._migrations[-1].version if self._migrations else 0
        if current > latest:
            raise BackendError(
                f"the database {self.config.path} has schema version {current}, newer than this "
                f"apalis-cli knows ({latest}): upgrade apalis-cli"
            )
        for migration in self._migrations:
            if migration.version > current:
                for statement in split_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(queries.set_version, {"version": migration.version, "now": time.time()})


def _checkpoint(conn: sqlite3.Connection) -> tuple[int, int]:
    """A PASSIVE checkpoint (it waits for no one): the pages the WAL held, and those copied."""
    # Read to the end: a statement left mid-way would make the next COMMIT here fail.
    rows = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return (int(rows[0][1]), int(rows[0][2])) if rows else (0, 0)


class _Copier:
    """A connection of its own for checkpoints in the background, used from one thread at a time
    (`asyncio.to_thread`, one checkpoint at a time): sqlite3 runs a statement without the GIL,
    so the fsyncs wait there while the event loop goes on."""

    __slots__ = ("_conn",)

    def __init__(self, config: SqliteConfig) -> None:
        conn = sqlite3.connect(config.path, isolation_level=None, timeout=0, check_same_thread=False)
        # The checkpoint's fsyncs follow the checkpointing connection's own setting.
        conn.execute(f"PRAGMA synchronous = {config.synchronous.upper()}")
        self._conn = conn

    async def copy(self) -> tuple[int, int]:
        """Checkpoint: the pages the WAL held, and those copied."""
        return await asyncio.to_thread(_checkpoint, self._conn)

    def close(self) -> None:
        """Close the connection (no checkpoint may be running)."""
        self._conn.close()


def _stop() -> int:
    return 1  # a progress handler's non-zero: interrupt the statement


def _open_now(path: str) -> sqlite3.Connection:
    """`write_now`'s connection: never waits for the write lock, never checkpoints."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def _call(conn: aiosqlite.Connection, work: Work[T]) -> T:
    # Runs on the connection's thread; `_conn` raises if the connection was closed meanwhile.
    return work(cast(Any, conn)._conn)


def _transaction(conn: sqlite3.Connection, work: Work[T]) -> T:
    if conn.in_transaction:  # left open by a failure we could not roll back: start clean
        conn.rollback()
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    return result


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    # Bounded: a close that never finishes must not hold the store's lock for ever.
    with contextlib.suppress(Exception):  # already closed or broken: nothing left to release
        async with asyncio.timeout(_CLOSE_WITHIN):
            await conn.close()


def split_statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, split where SQLite itself sees one end."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if _has_sql(buffer):
                yield buffer.strip()
            buffer = ""
    if _has_sql(buffer):
        yield buffer.strip()


def _has_sql(text: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in text.splitlines())
