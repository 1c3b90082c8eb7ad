"""`SqlStore`: what a server-backed SQL store does with its `Database`, written once.

A store kind subclasses it with its `kind`, its `from_spec` (config and driver check) and the
`Database` it builds from its config; opening, closing and binding queues are the same.
"""

from __future__ import annotations

from typing import ClassVar

from apalis_cli.backend import Capabilities
from apalis_cli.codec import Codec

from .database import SqlDatabase
from .queue import CAPABILITIES, SqlQueue

__all__ = ["SqlStore"]


class SqlStore:
    """Queues in one SQL database, sharing its pool (and its listener, where it has one)."""

    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities] = CAPABILITIES
    queue_class: ClassVar[type[SqlQueue]] = SqlQueue

    def __init__(self, database: SqlDatabase) -> None:
        self.database = database
        """The pool, unopened until `open()` (an operation before that fails saying so)."""
        self._open = False
        self.migrations_applied: list[int] = []

    async def open(self) -> None:
        """Connect, then create or migrate the tables (idempotent)."""
        if self._open:
            return
        self.migrations_applied = await self.database.open()
        self._open = True

    async def close(self) -> None:
        """Close the pool (and the listener)."""
        if self._open:
            self._open = False
            await self.database.close()

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> SqlQueue:
        """The queue-bound backend."""
        return self.queue_class(self.database, queue, codec=codec, max_attempts=max_attempts)
