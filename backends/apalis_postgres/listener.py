"""One LISTEN connection per store: NOTIFYs from any process wake this process's pollers.

Every push NOTIFYs the store's channel with the queue name as payload; the listener hands each
notification to that queue's `Waker`. One channel per schema (not per queue) because a queue name
is free text while a channel is an identifier of at most 63 bytes, and one LISTEN then serves
every queue. When the connection drops, the listener reconnects with the core's backoff
(`apalis_cli.retrying.delays`), LISTENs
again (peers forget this step and go deaf) and wakes every poller, since a notification may have
been missed meanwhile; until then polling with backoff carries on alone.

A second channel, `<schema>:control`, carries the ends of tasks someone waits for and the
cancels of running tasks (`apalis_sql.Controls.told`); once listening (again), every waiter
reads its task again and the store asks which runs of its workers had a cancel requested
meanwhile (`rejoined`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import psycopg
from apalis_cli.polling import Waker
from apalis_cli.retrying import delays
from apalis_sql import Controls
from psycopg import sql

__all__ = ["Listener"]

_log = logging.getLogger(__name__)


class Listener:
    """Feeds `Waker`s from LISTEN on one channel, and `Controls` from another, over its own
    connection."""

    def __init__(
        self,
        connect: Callable[[], str],
        channel: str,
        wakers: dict[str, Waker],
        control: str,
        controls: Controls,
        rejoined: Callable[[], Awaitable[None]],
    ) -> None:
        self._conninfo = connect
        self._channel = channel
        self._wakers = wakers
        self._control = control
        self._controls = controls
        self._rejoined = rejoined
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.connections = 0  # how many times a LISTEN was established (tests read it)

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"apalis-listen-{self._channel}")

    async def listening(self) -> None:
        """Return once a LISTEN is in place."""
        await self._listening.wait()

    @property
    def ready(self) -> asyncio.Event:
        """Set while a LISTEN is in place."""
        return self._listening

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def _wake_all(self) -> None:
        for waker in self._wakers.values():
            waker.notify()
        self._controls.wake_waiters()

    async def _run(self) -> None:
        waits = delays()
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)
            except psycopg.Error as exc:
                wait = next(waits)
                _log.warning("LISTEN connection failed, retrying in %.2fs: %s", wait, type(exc).__name__)
                await asyncio.sleep(wait)
                continue
            try:
                for channel in (self._channel, self._control):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self.connections += 1
                self._listening.set()
                waits = delays()  # listening again: the next outage backs off from the start
                self._wake_all()
                with contextlib.suppress(Exception):  # the heartbeat asks too
                    await self._rejoined()
                async for note in conn.notifies():
                    if note.channel == self._control:
                        self._controls.told(note.payload)
                        continue
                    waker = self._wakers.get(note.payload)
                    if waker is not None:
                        waker.notify()
            except psycopg.Error as exc:
                _log.warning("LISTEN connection lost, reconnecting: %s", type(exc).__name__)
            finally:
                self._listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(next(waits))
