"""One LISTEN connection per store: pgmq's insert notifications wake the queue's pollers.

`pgmq.enable_notify_insert` makes every insert into `pgmq.q_<name>` send a NOTIFY on channel
`pgmq.q_<name>.INSERT` (throttled). The listener reconnects by itself after a dropped
connection (with the core's backoff, `apalis_cli.retrying.delays`), and then wakes every
poller, since notifications may have been missed meanwhile.
Polling with backoff stays the fallback: retries and scheduled messages become visible without
any insert, so no notification announces them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from apalis_cli.polling import Waker
from apalis_cli.retrying import delays

__all__ = ["Listener", "channel_of"]


def channel_of(queue: str) -> str:
    """The channel pgmq's insert trigger notifies for `queue`."""
    return f"pgmq.q_{queue}.INSERT"


class Listener:
    """LISTENs on the channels of the queues being polled and notifies their wakers."""

    def __init__(self, url: str, kwargs: dict[str, Any], wakers: dict[str, Waker]) -> None:
        self._url = url
        self._kwargs = kwargs
        self._wakers = wakers
        self._queues: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, queue: str) -> None:
        """Listen for `queue` too (starts the listener on first use)."""
        if queue not in self._queues:
            self._queues.add(queue)
            self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="apalis-pgmq-listener")

    async def close(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _wake_all(self) -> None:
        for queue in self._queues:
            if (waker := self._wakers.get(queue)) is not None:
                waker.notify()

    async def _run(self) -> None:
        import psycopg
        from psycopg import sql

        waits = delays()
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, **self._kwargs)
            except Exception:
                await asyncio.sleep(next(waits))
                continue
            try:
                listened: set[str] = set()
                first = True
                while True:
                    self._changed.clear()
                    for queue in self._queues - listened:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_of(queue))))
                        listened.add(queue)
                    if first:
                        first, waits = False, delays()  # listening again: back off from the start
                        self._wake_all()
                    await self._pump(conn)
            except Exception:  # a lost connection above all; polling covers the gap meanwhile
                await asyncio.sleep(next(waits))
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _pump(self, conn: Any) -> None:
        """Deliver notifications until the set of queues changes (or the connection fails)."""
        by_channel = {channel_of(queue): queue for queue in self._queues}
        wakers = self._wakers

        async def consume() -> None:
            async for note in conn.notifies():
                queue = by_channel.get(note.channel)
                if queue is not None and (waker := wakers.get(queue)) is not None:
                    waker.notify()

        consumer = asyncio.create_task(consume())
        changed = asyncio.create_task(self._changed.wait())
        try:
            done, _ = await asyncio.wait({consumer, changed}, return_when=asyncio.FIRST_COMPLETED)
            if consumer in done:
                consumer.result()
        finally:
            for task in (consumer, changed):
                task.cancel()
            await asyncio.gather(consumer, changed, return_exceptions=True)
