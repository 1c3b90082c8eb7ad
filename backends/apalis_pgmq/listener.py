"""One LISTEN connection per store: pgmq's insert notifications wake the queue's pollers, and
apalis's control channel tells workers and waiters of cancels, pauses and finished tasks.

`pgmq.enable_notify_insert` makes every insert into `pgmq.q_<name>` send a NOTIFY on channel
`pgmq.q_<name>.INSERT` (throttled). Channel `apalis_pgmq` carries the control plane (see
`apalis_pgmq.control`). The listener reconnects by itself after a dropped
connection (with the core's backoff, `apalis_cli.retrying.delays`), and then wakes every
poller, since notifications may have been missed meanwhile.
Polling with backoff stays the fallback: retries and scheduled messages become visible without
any insert, so no notification announces them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from apalis_cli.polling import Waker
from apalis_cli.retrying import delays

__all__ = ["CONTROL", "Listener", "channel_of"]

CONTROL = "apalis_pgmq"
"""The channel of the control plane, one per database."""


def channel_of(queue: str) -> str:
    """The channel pgmq's insert trigger notifies for `queue`."""
    return f"pgmq.q_{queue}.INSERT"


class Listener:
    """LISTENs on the channels of the queues being polled and notifies their wakers."""

    def __init__(
        self,
        url: str,
        kwargs: dict[str, Any],
        wakers: dict[str, Waker],
        on_control: Callable[[str], None],
        *,
        inserts: bool,
    ) -> None:
        self._url = url
        self._kwargs = kwargs
        self._wakers = wakers
        self._on_control = on_control
        self._inserts = inserts
        self._queues: set[str] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while the control channel is listened to (cleared while reconnecting)."""
        self.reconnected: Callable[[], None] = lambda: None
        """Called after each reconnection: control messages may have been missed meanwhile."""

    def add(self, queue: str) -> None:
        """Listen for inserts into `queue` too (starts the listener on first use)."""
        if queue not in self._queues:
            self._queues.add(queue)
            self._changed.set()
        self.start()

    def start(self) -> None:
        """Listen to the control channel (and the queues added), unless already listening."""
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
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CONTROL)))
                listened: set[str] = set()
                first = True
                while True:
                    self._changed.clear()
                    for queue in self._queues - listened if self._inserts else ():
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel_of(queue))))
                        listened.add(queue)
                    if first:
                        first, waits = False, delays()  # listening again: back off from the start
                        self.listening.set()
                        self._wake_all()
                        self.reconnected()
                    await self._pump(conn)
            except Exception:  # a lost connection above all; polling covers the gap meanwhile
                self.listening.clear()
                await asyncio.sleep(next(waits))
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _pump(self, conn: Any) -> None:
        """Deliver notifications until the set of queues changes (or the connection fails)."""
        by_channel = {channel_of(queue): queue for queue in self._queues}
        wakers, on_control = self._wakers, self._on_control

        async def consume() -> None:
            async for note in conn.notifies():
                if note.channel == CONTROL:
                    on_control(note.payload)
                    continue
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
