"""One aiosqlite connection per store and process: pragmas, migrations, one-hop transactions,
and reconnecting when the connection was closed or broke under us.

aiosqlite runs every call on the connection's own thread, in order. A whole transaction is
queued there as ONE function (`aiosqlite.Connection._execute`), so a batch costs one hop between
the event loop and that thread, and no other coroutine's statement can land inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import struct
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
_READ_NOW_STEPS = 10_000  # SQLite VM steps a `read_now` may take (0.15 ms here) before it is cut
_COPY_AT = 1000  # WAL frames not yet copied back that start a copy (SQLite's own autocheckpoint)
_HOLD_AT = 2000  # WAL frames (~8 MB) at which a copy holds this process's writes to restart it
_HOLD_GAP = 200  # writes of this process between two copies that hold them
_COPY_TRIES = 3  # copies in the background, one after the other, that try to copy all of the WAL
_LOOK_EVERY = 8  # `write_now` writes between two looks at the WAL index (a system call each)
_BLIND_EVERY = 200  # writes between two held copies where the WAL index cannot be read


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
        self._writes = 0  # write transactions of this process
        self._held_at = 0  # `_writes` when a copy last held them
        self._checkpointing: asyncio.Future[None] | None = None
        self._holding = False  # True while a copy that must see no write of ours runs
        self._copier: _Copier | None = None
        self._wal = None if config.in_memory else _WalIndex(config.path)

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
        if self._wal is not None:
            self._wal.close()
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
        Its commit never checkpoints (`wal_autocheckpoint = 0`): the WAL is copied back in the
        background (`_wrote`).
        """
        if self._holding:
            await self.held()  # a copy that restarts the WAL runs: written right after it
        result = await self._run(lambda conn: _transaction(conn, work))
        self._wrote(look=True)
        return result

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
        the loop on its fsyncs): the WAL is copied back in the background (`_wrote`). Only with
        synchronous = "normal" (no fsync per commit) and a file. A caller that writes this way
        in a loop yields to the event loop now and then.
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
        self._wrote(look=False)
        return True, result

    @property
    def holding(self) -> bool:
        """True while a copy holds this process's writes back (`held()` waits for it)."""
        return self._holding

    async def held(self) -> None:
        """Wait until this process's writes go on (a copy that must see none of them is done)."""
        checkpointing = self._checkpointing
        if self._holding and checkpointing is not None:
            with contextlib.suppress(Exception):  # failed: written anyway, tried again later
                await asyncio.shield(checkpointing)

    def _wrote(self, *, look: bool) -> None:
        """After a write of this process: start copying the WAL back in the background when it
        holds `_COPY_AT` frames not copied yet, or has grown to `_HOLD_AT` (whoever wrote them).

        No commit of ours checkpoints (every connection has `wal_autocheckpoint = 0`): SQLite's
        own checkpoint ran inside the commit that took the WAL past 1,000 frames and that commit
        waited for its two fsyncs (a claim or a push, 4 ms here; a lone task's p99). The WAL
        index says how many frames the WAL holds and how many were copied (`_WalIndex`, a read
        of the -shm file): `write_now`'s writes look every `_LOOK_EVERY` (a system call is a few
        % of a push), the others each time (one may write thousands of frames).
        """
        self._writes += 1
        if self._wal is None or self._holding or (not look and self._writes % _LOOK_EVERY):
            return
        frames = self._wal.frames()
        if self._checkpointing is not None:
            if frames is not None and frames[0] >= _HOLD_AT + _COPY_AT:
                self._holding = True  # the copy running is slow: wait for it, then restart the WAL
            return
        if frames is None:
            due = self._writes - self._held_at >= _BLIND_EVERY
        else:
            last, copied = frames
            due = last - copied >= _COPY_AT or (last >= _HOLD_AT and self._may_hold())
        if due:
            self._checkpointing = asyncio.ensure_future(self._copy_back())
            self._checkpointing.add_done_callback(self._copied_back)

    def _may_hold(self) -> bool:
        return self._writes - self._held_at >= _HOLD_GAP

    async def _copy_back(self) -> None:
        """Copy the WAL back into the database while this process goes on writing; when the WAL
        has grown to `_HOLD_AT` frames all the same, once more with this process's writes held.

        A checkpoint's cost is its two fsyncs (the WAL's, then the database's: about 4 ms here,
        where copying 1,000 pages takes 0.2 ms), so it runs on a connection and thread of its own
        (`_Copier`) while this process's writes go on. But SQLite starts the WAL afresh (writes
        from its start again, the file stops growing) only when a write begins after a
        checkpoint copied all of it, which one overlapped by writes did not. So a copy is tried
        again at once (`_COPY_TRIES`: each has less to copy, its window is shorter), and when
        the WAL has reached `_HOLD_AT` frames, a copy in RESTART mode runs with this process's
        writes held (`held`): it takes the write lock, so no other process writes meanwhile
        either (they wait for it as for any writer), copies the rest (little: its fsyncs are
        short) and waits up to `_Copier`'s busy timeout for readers of the old frames; the next
        write starts the WAL afresh. After a hold, `_HOLD_GAP` writes of ours go before the next,
        unless the WAL reaches `_HOLD_AT + _COPY_AT` frames while a copy runs: then this
        process's writes wait for it at once (a slow disk), and for the RESTART after it.
        """
        try:
            frames = None
            for _ in range(_COPY_TRIES):
                await self._copy_aside()
                frames = self._wal.frames() if self._wal is not None else None
                if frames is None or frames[1] >= frames[0] or self._holding:
                    break  # all copied (the next write starts the WAL afresh), nothing to tell, or held
            if not self._holding:
                if frames is None:
                    if self._writes - self._held_at < _BLIND_EVERY:
                        return
                elif frames[1] >= frames[0] or frames[0] < _HOLD_AT or not self._may_hold():
                    return
                self._holding = True
            self._held_at = self._writes
            await self._copy_aside(restart=True)
        finally:
            self._holding = False

    async def _copy_aside(self, *, restart: bool = False) -> tuple[int, int]:
        copier = self._copier
        if copier is None:
            copier = self._copier = _Copier(self.config)
        try:
            return await copier.copy(restart=restart)
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
            if self._wal is not None:
                self._wal.close()  # the index may be made again with the next connection
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
            # No commit copies the WAL back (a claim would wait for the checkpoint's fsyncs):
            # `Database._wrote` starts copies in the background.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
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


def _restart(conn: sqlite3.Connection) -> tuple[int, int]:
    """A RESTART checkpoint: it waits (busy timeout) for the write lock and holds it while it
    copies all of the WAL, then for readers of the WAL, so that the next write starts it afresh."""
    rows = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    return (int(rows[0][1]), int(rows[0][2])) if rows else (0, 0)


_RESTART_WAIT_MS = 100  # how long a RESTART copy waits for another writer, then for readers


class _Copier:
    """A connection of its own for checkpoints in the background, used from one thread at a time
    (`asyncio.to_thread`, one checkpoint at a time): sqlite3 runs a statement without the GIL,
    so the fsyncs wait there while the event loop goes on."""

    __slots__ = ("_conn",)

    def __init__(self, config: SqliteConfig) -> None:
        conn = sqlite3.connect(config.path, isolation_level=None, timeout=0, check_same_thread=False)
        # The checkpoint's fsyncs follow the checkpointing connection's own setting.
        conn.execute(f"PRAGMA synchronous = {config.synchronous.upper()}")
        conn.execute(f"PRAGMA busy_timeout = {_RESTART_WAIT_MS}")  # PASSIVE waits for no one anyway
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._conn = conn

    async def copy(self, *, restart: bool = False) -> tuple[int, int]:
        """Checkpoint: the pages the WAL held, and those copied."""
        return await asyncio.to_thread(_restart if restart else _checkpoint, self._conn)

    def close(self) -> None:
        """Close the connection (no checkpoint may be running)."""
        self._conn.close()


class _WalIndex:
    """How many frames the WAL holds and how many of them were copied back, read from the WAL
    index (the -shm file next to the database, https://www.sqlite.org/walformat.html: the
    header's version at byte 0 and mxFrame at byte 16, the checkpoint's nBackfill at byte 96, in
    the machine's byte order) with one `pread` and no lock. It only says when to copy: a torn or
    stale read costs a copy too many or too late, never a wrong write. Reopened with each new
    connection of the store (a file made again after every connection to it closed)."""

    __slots__ = ("_fd", "_path")

    _FIELDS = struct.Struct("=I12xI76xI")
    _VERSION = 3007000  # the WAL index format's, since SQLite 3.7.0

    def __init__(self, database: str) -> None:
        self._path = database + "-shm"
        self._fd = -1

    def frames(self) -> tuple[int, int] | None:
        """(frames in the WAL, frames copied back), or None where the index cannot be read."""
        if self._fd < 0:
            try:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            data = os.pread(self._fd, self._FIELDS.size, 0)
        except OSError:
            return None
        if len(data) < self._FIELDS.size:
            return None
        version, last, copied = self._FIELDS.unpack(data)
        return (last, copied) if version == self._VERSION else None

    def close(self) -> None:
        """Close the file (a later `frames()` opens it again)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


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
