"""A small connection pool for asyncmy, safe under cancellation.

asyncmy's own pool can be left waiting for ever when a task is cancelled in the middle of a
query (a worker stopping while its heartbeat runs). Here a connection that saw any error or a
cancellation is closed, never reused, since its protocol state is unknown; the slot it held is
freed in all cases, and a fresh connection is made on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["Pool"]


class Pool:
    """At most `max_size` connections made by `connect()`, idle ones kept for reuse."""

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
