"""A store's ears on its pub/sub channels (`Wakeups`): the wake channels of its queues (a task
made ready wakes the queue's pollers, a task handed to a worker goes to that worker) and the
control channels (`signals.ControlSignals`: cancels, tasks' ends).

The subscription's connection is made and greeted by redis-py (AUTH, SELECT, CLIENT SETNAME,
TLS: the client's settings), then read by a protocol of its own (`Hearing`), as the scripts'
connection is (`link.Link`): each message is parsed by hiredis where it arrives and handled in
the same callback, so a handed task reaches its worker's poll stream without the listener task's
loop turn, redis-py's read path (a timeout context and its retry wrapper per message) or its
message dicts. A redis-py whose connection cannot be taken over (`link.streams_of`), and a Redis
Cluster, are heard through redis-py's own pub/sub as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
from apalis_cli.polling import Waker
from apalis_cli.retrying import keep_connected

from .link import streams_of
from .signals import ControlSignals

__all__ = ["Hearing", "Wakeups"]


class Hearing(asyncio.Protocol):
    """A pub/sub connection redis-py opened, taken over: `subscribe` to patterns, then every
    message goes to `heard(channel, data)` as it is parsed; `ended()` returns the error that
    ended the connection (it never ends otherwise)."""

    def __init__(self, transport: asyncio.BaseTransport, heard: Callable[[bytes, bytes], None]) -> None:
        import hiredis
        from redis._parsers.base import BaseParser
        from redis.exceptions import InvalidResponse

        self._transport: Any = transport
        self._writer: Any = None
        self._heard = heard
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        loop = asyncio.get_running_loop()
        self._end: asyncio.Future[BaseException] = loop.create_future()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._confirmations = 0
        self._subscribed: asyncio.Future[None] = loop.create_future()

    @classmethod
    async def open(cls, pool: Any, heard: Callable[[bytes, bytes], None]) -> Hearing | None:
        """A connection of redis-py's `pool`, taken over: an idle one when the pool holds one (as
        redis-py's pub/sub takes it: no new connection to greet), else a new one, connected and
        greeted by redis-py. None when this redis-py's connection cannot be taken over."""
        connection = await pool.get_connection()
        try:
            streams = streams_of(connection)
            if streams is None:
                return None
            writer, unread = streams
            transport = writer.transport
            hearing = cls(transport, heard)
            hearing._writer = writer  # kept: a stream writer closes its transport when collected
            transport.set_protocol(hearing)
            connection._writer = connection._reader = None  # redis-py lets go of it
            if unread:
                hearing.data_received(unread)
            return hearing
        finally:
            # Back to the pool: without its socket when taken over (redis-py connects it again
            # when it is next used), else as it was, for redis-py's own pub/sub.
            await pool.release(connection)

    async def subscribe(self, patterns: list[bytes]) -> None:
        """PSUBSCRIBE to `patterns`; returns once the server confirmed each (raises when the
        connection ended first)."""
        self._confirmations = len(patterns)
        command = [b"PSUBSCRIBE", *patterns]
        self._transport.write(b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in command))
        waiting: set[asyncio.Future[Any]] = {self._subscribed, self._end}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not self._subscribed.done():
            raise self._end.result()

    async def ended(self) -> BaseException:
        """Wait until the connection ends; the error that ended it."""
        return await asyncio.shield(self._end)

    async def aclose(self) -> None:
        """Close the connection and wait until its socket is closed."""
        self._transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._closed)

    def _fail(self, error: BaseException) -> None:
        if not self._end.done():
            self._end.set_result(error)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
                if reply is False:
                    return
                if isinstance(reply, list) and reply:  # a RESP3 push is a list too (hiredis.PushNotification)
                    kind = reply[0]
                    if kind == b"pmessage":
                        self._heard(reply[2], reply[3])
                    elif kind == b"psubscribe":
                        self._confirmations -= 1
                        if self._confirmations <= 0 and not self._subscribed.done():
                            self._subscribed.set_result(None)
                elif isinstance(reply, Exception):
                    raise reply
            except Exception as exc:  # not Redis's protocol, an error reply, or a message not handled
                self._transport.close()
                self._fail(exc)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
        from redis.exceptions import ConnectionError

        self._fail(ConnectionError(f"Error while reading from the server: {exc or 'connection closed'}"))

    def eof_received(self) -> bool:
        return False  # the transport closes itself, then connection_lost ends the session


class Wakeups:
    """One pub/sub connection per store: a message on `<prefix><queue>` wakes that queue's pollers,
    and one on `<control prefix><queue>` goes to `control` (a cancel, a task's end).

    It listens with pattern subscriptions (`<prefix>*`) started by the first poller or the first
    `listen()`; after a dropped connection it resubscribes (with the core's backoff,
    `apalis_cli.retrying.keep_connected`) and wakes everyone, since a message may have been missed.
    A message that hands a task to a worker (`h` + MessagePack, lua/enqueue.lua) goes to the
    queue's `takers` instead, and wakes no one else: the task is that worker's.
    """

    def __init__(
        self,
        client: Any,
        prefix: str | None,
        control_prefix: str | None = None,
        control: ControlSignals | None = None,
        *,
        cluster: bool = False,
        once: Callable[[], Any],
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._once = once  # a retry policy that tries once (connection._once)
        self._prefix = prefix.encode() if prefix is not None else None
        self._control_prefix = control_prefix.encode() if control_prefix is not None else None
        self._control = control
        self._wakers: dict[str, Waker] = {}
        self.takers: dict[str, list[Callable[[list[Any]], None]]] = {}
        """Per queue, who reads the tasks handed to workers (each ignores other processes' workers)."""
        self.wakes: dict[str, int] = {}
        """Per queue, how many times its pollers were woken (hand-overs not counted); a queue's
        count changes whenever a wake-up may have been missed too (`_wake_all`)."""
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def waker(self, queue: str) -> Waker:
        """The waker of `queue`, listening from now on."""
        waker = self._wakers.get(queue)
        if waker is None:
            waker = self._wakers[queue] = Waker()
        self.start()
        return waker

    async def listen(self) -> None:
        """Listen from now on, and return once subscribed (a message published after this
        returns is heard, unless the connection drops)."""
        self.start()
        await self._subscribed.wait()

    def start(self) -> None:
        """Listen from now on (without waiting for the subscription)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="apalis-redis-wakeups")

    async def close(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        if task is None:
            return
        # redis-py's read can swallow a cancellation that arrives as its reply does (seen as a
        # store close that never returned, its listener "cancelling" in get_message): ask again
        # until the listener has ended, as the worker does with its heartbeat.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()

    async def _listen(self) -> None:
        await keep_connected(self._session, what="redis pub/sub")

    def _patterns(self) -> list[bytes]:
        return [prefix + b"*" for prefix in (self._prefix, self._control_prefix) if prefix is not None]

    async def _session(self, steady: Callable[[], None]) -> None:
        if not self._cluster:
            hearing = await Hearing.open(self._client.connection_pool, self._heard)
            if hearing is not None:
                try:
                    await hearing.subscribe(self._patterns())
                    self._subscribed.set()
                    self._wake_all()  # anything pushed while we were not listening
                    steady()
                    raise await hearing.ended()
                finally:
                    self._subscribed.clear()
                    with contextlib.suppress(Exception):
                        await asyncio.shield(hearing.aclose())
        await self._redis_py_session(steady)

    async def _redis_py_session(self, steady: Callable[[], None]) -> None:
        """The session through redis-py's pub/sub: a cluster's, or a redis-py whose connection
        `Hearing` cannot take over."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        conn, kept = None, None
        try:
            if not self._cluster:  # a cluster's pub/sub connections are tried once already
                await pubsub.connect()
                conn = pubsub.connection
                # Tried once: redis-py's retry would reconnect and subscribe again in silence, and
                # what was published meanwhile would be missed with no one woken. A failed read
                # ends the session, and the next one (keep_connected) wakes everyone.
                kept, conn.retry = conn.retry, self._once()
            await pubsub.psubscribe(*self._patterns())
            self._subscribed.set()
            self._wake_all()  # anything pushed while we were not listening
            steady()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if message is not None:
                    self._heard(message["channel"], message["data"])
        finally:
            self._subscribed.clear()
            if conn is not None and kept is not None:
                conn.retry = kept  # the connection goes back to the client's pool
            with contextlib.suppress(Exception):
                await asyncio.shield(pubsub.aclose())

    def _heard(self, channel: bytes, data: bytes) -> None:
        if self._prefix is not None and channel.startswith(self._prefix):
            queue = channel[len(self._prefix) :].decode()
            if data[:1] == b"h":
                takers = self.takers.get(queue)
                if takers:
                    handed = msgpack.unpackb(data[1:], raw=True)
                    for take in takers:
                        take(handed)
                return
            self.wakes[queue] = self.wakes.get(queue, 0) + 1
            waker = self._wakers.get(queue)
            if waker is not None:
                waker.notify()
        elif self._control is not None and self._control_prefix is not None:
            self._control.heard(channel[len(self._control_prefix) :].decode(), data)

    def _wake_all(self) -> None:
        for queue, waker in self._wakers.items():
            self.wakes[queue] = self.wakes.get(queue, 0) + 1
            waker.notify()
        if self._control is not None:
            self._control.missed()
