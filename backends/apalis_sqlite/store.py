"""`SqliteStore` (`kind = "sqlite"`): the default store, one database file, no server to run.

One aiosqlite connection per store and process (`connection.Database`), shared by every queue
of the store; the queues of one name share one in-process wake-up signal, and the WAL watch
(`watch.WalWatch`) wakes them all when another process writes the file. The same watch hears
the doorbells (`bells.Bells`) that other processes ring after a cancel or a task's end.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

from apalis_cli.backend import Capabilities, StoreSpec
from apalis_cli.codec import Codec
from apalis_sql import load_migrations, load_queries

from .bells import Bells
from .config import SqliteConfig
from .connection import Database
from .queue import CAPABILITIES, SqliteQueue
from .signal import QueueSignal
from .watch import WalWatch

__all__ = ["SqliteStore"]


class SqliteStore:
    """A SQLite database file shared by every queue of one `[backends.NAME]` table."""

    kind: ClassVar[str] = "sqlite"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, config: SqliteConfig) -> None:
        self.config = config
        names = {"prefix": config.table_prefix}
        self.queries = load_queries(__package__ or "apalis_sqlite", names)
        self.db = Database(config, self.queries, load_migrations(__package__ or "apalis_sqlite", names))
        self._signals: dict[str, QueueSignal] = {}
        self.bells = Bells(self.db, self.queries, None if config.in_memory else config.path)
        self._watch = (
            WalWatch(config.path, self._wake_all, self.bells.listeners())
            if config.watch and not config.in_memory
            else None
        )
        self.bells.watching = self._watching

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> SqliteStore:
        """Validate the URL and options (`ConfigError` names the bad key); nothing is opened."""
        return cls(SqliteConfig.from_spec(spec))

    async def open(self) -> None:
        """Open the database file (created if missing) and migrate its schema; idempotent."""
        await self.db.open()

    async def close(self) -> None:
        """Close the connection and stop watching the file."""
        if self._watch is not None:
            self._watch.stop()
        self.bells.close()
        await self.db.close()

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> SqliteQueue:
        """The queue-bound backend; every one of the same queue shares one wake-up signal."""
        signal = self._signals.get(queue)
        if signal is None:
            signal = self._signals[queue] = QueueSignal()
        return SqliteQueue(
            self.db, self.queries, signal, self.bells, self.watch, queue, codec=codec, max_attempts=max_attempts
        )

    def watch(self) -> None:
        """Start waking this process's idle pollers on writes by other processes (once a worker
        polls: a producer alone has no one to wake)."""
        if self._watch is not None and not self._watch.active:
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to wake anyway
                self._watch.start()

    def _watching(self) -> bool:
        return self._watch is not None and self._watch.active

    def _wake_all(self) -> None:
        for signal in self._signals.values():
            signal.notify()

    def __repr__(self) -> str:
        return f"SqliteStore({self.config.path!r})"
