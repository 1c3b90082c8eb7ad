"""One LISTEN connection per store, for the PostgreSQL store and pgmq alike: the notifications
of other processes reach this one.

The listener LISTENs on its channels over a connection of its own and hands every notification
to `heard(channel, payload)`; a channel added later (pgmq listens per queue) is LISTENed to at
once. When the connection drops, it reconnects with the core's backoff
(`apalis_cli.retrying.keep_connected`), LISTENs again on every channel (peers forget this step and go
deaf) and calls `rejoined()`: a notification may have been missed meanwhile, so the store wakes
its pollers and waiters and asks again what it could have been told. Until then polling with
backoff carries on alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg
from apalis_cli.retrying import keep_connected
from psycopg import sql

__all__ = ["Listener"]


class Listener:
    """LISTENs on a set of channels over its own connection and passes on what it hears."""

    def __init__(
        self,
        conninfo: Callable[[], str],
        channels: Iterable[str],
        heard: Callable[[str, str], None],
        rejoined: Callable[[], Awaitable[None]],
        *,
        name: str,
    ) -> None:
        self._conninfo = conninfo
        self._channels = set(channels)
        self._heard = heard
        self._rejoined = rejoined
        self._name = name
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.connections = 0  # how many times a LISTEN was established (tests read it)

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)

    def add(self, channel: str) -> None:
        """LISTEN on `channel` too, at once if listening already (and from now on)."""
        if channel not in self._channels:
            self._channels.add(channel)
            self._changed.set()

    async def listening(self) -> None:
        """Return once a LISTEN is in place."""
        await self._listening.wait()

    @property
    def ready(self) -> asyncio.Event:
        """Set while a LISTEN is in place."""
        return self._listening

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        await keep_connected(self._session, what=f"LISTEN connection {self._name}")

    async def _session(self, steady: Callable[[], None]) -> None:
        conn = await psycopg.AsyncConnection.connect(self._conninfo(), autocommit=True)
        # Notifications that come with a statement's reply (a LISTEN's) reach `heard` through
        # psycopg's handler; those that come alone, through `_pump`'s reader, which calls the same.
        conn.add_notify_handler(self._handle)
        try:
            listened: set[str] = set()
            while True:
                self._changed.clear()
                for channel in sorted(self._channels - listened):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    listened.add(channel)
                if not self._listening.is_set():
                    self.connections += 1
                    self._listening.set()
                    steady()
                    with contextlib.suppress(Exception):  # the heartbeat asks too
                        await self._rejoined()
                await self._pump(conn)
        finally:
            self._listening.clear()
            with contextlib.suppress(Exception):
                await conn.close()

    def _handle(self, note: psycopg.Notify) -> None:
        self._heard(note.channel, note.payload)

    async def _pump(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Pass on notifications until a channel is added (or the connection fails).

        The socket is read by the event loop's reader callback, which passes each notification on
        at once. (psycopg's `notifies()` passes it through a future and a step of its task first,
        one loop pass more on a lone task's way to its worker, and wakes every 0.1 s while idle.)
        Nothing else uses the connection meanwhile: LISTENs run between two pumps.
        """
        pgconn = conn.pgconn
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Any] = loop.create_future()

        def readable() -> None:
            try:
                pgconn.consume_input()  # raises once the connection is lost
                while (note := pgconn.notifies()) is not None:
                    if pgconn.notify_handler is not None:
                        pgconn.notify_handler(note)  # psycopg's: decodes it and calls `_handle`
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the LISTEN connection was lost")
            except Exception as exc:  # the session ends; it is started again
                loop.remove_reader(fileno)
                if not ended.done():
                    ended.set_exception(exc)

        fileno = pgconn.socket
        loop.add_reader(fileno, readable)
        changed: asyncio.Future[Any] = asyncio.ensure_future(self._changed.wait())
        try:
            readable()  # what came before the reader was in place
            await asyncio.wait({ended, changed}, return_when=asyncio.FIRST_COMPLETED)
            if ended.done():
                ended.result()
        finally:
            loop.remove_reader(fileno)
            if ended.done() and not ended.cancelled():
                ended.exception()  # read: a failure met while this pump was cancelled is not logged as lost
            changed.cancel()
            await asyncio.gather(changed, return_exceptions=True)
