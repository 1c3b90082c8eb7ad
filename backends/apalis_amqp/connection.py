"""One AMQP connection per store: reconnection, queue declarations and confirmed publishing.

Every publish goes through one channel in confirm mode, so `publish_many` returns only once the
broker has taken responsibility for each message (written to disk for persistent messages on
durable queues). Messages are published together and their confirms awaited together: one
round trip's latency for a whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import AMQPError, ChannelPreconditionFailed, PublishError
from aiormq.exceptions import ChannelAccessRefused
from apalis_cli.errors import BackendError, ConnectionLost
from apalis_cli.redact import redact, secrets_in
from apalis_cli.retrying import retrying

from .config import AmqpConfig

__all__ = ["FAILURES", "Connection", "refusal"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

FAILURES: tuple[type[BaseException], ...] = (AMQPError, ConnectionError, OSError, asyncio.TimeoutError)
"""What a lost or refused connection raises: the operation is retried after reconnecting."""

RETRYABLE: tuple[type[BaseException], ...] = (*FAILURES, ConnectionLost)

REFUSED: tuple[type[BaseException], ...] = (ChannelPreconditionFailed, ChannelAccessRefused)
"""What the broker will refuse again however often it is asked: reported at once, not retried."""

_DELAY_QUEUE_GRACE_MS = 60_000


def delay_bucket(seconds: float) -> int:
    """The delay in ms, rounded *up* to two significant digits: a task never runs early, and
    there are at most ~90 delay queues per decade of delays."""
    ms = max(math.ceil(seconds * 1000), 1)
    if ms < 100:
        return ms
    step = 10 ** (len(str(ms)) - 2)
    rounded: int = -(-ms // step) * step
    return rounded


def refusal(exc: BaseException) -> str:
    """The broker's reason for refusing, without the client library's preamble."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.split(" - ", 1)[1] if " - " in text else text


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, RETRYABLE) and not isinstance(exc, REFUSED)


def _alive(conn: AbstractConnection) -> bool:
    """aio-pika learns of a dropped socket a little after aiormq: ask both."""
    if conn.is_closed:
        return False
    underlay = getattr(conn, "transport", None)
    return underlay is not None and not underlay.connection.is_closed


class Connection:
    """The store's connection, its publishing channel, and what has been declared on it."""

    def __init__(self, config: AmqpConfig) -> None:
        self.config = config
        self._connection: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._declared: set[str] = set()
        self._arguments: dict[str, tuple[dict[str, Any] | None, bool]] = {}  # how each queue is declared
        self.existing: dict[str, str] = {}  # queues made by others with other arguments, used as they are
        self.created: set[str] = set()  # every queue name this process declared (tests drop them)
        self.exchanges: set[str] = set()  # every exchange this process declared
        self._bound: set[tuple[str, str, str]] = set()

    # -- connection ------------------------------------------------------------------------

    async def connection(self) -> AbstractConnection:
        """The open connection, reconnecting if it was lost."""
        conn = self._connection
        if conn is not None and _alive(conn):
            return conn
        async with self._lock:
            if self._connection is not None and _alive(self._connection):
                return self._connection
            try:
                self._connection = await aio_pika.connect(
                    self.config.url,
                    timeout=10,
                    client_properties={
                        "connection_name": "apalis-cli",
                    },
                )
            except FAILURES as exc:
                url = self.config.url
                raise ConnectionLost(redact(f"cannot reach RabbitMQ at {url}: {exc!r}", secrets_in(url))) from None
            self._publisher = None
            self._declared.clear()
            self._bound.clear()
            return self._connection

    async def channel(self) -> AbstractChannel:
        """A new channel without confirms (consumers, peeks)."""
        conn = await self.connection()
        return await conn.channel(publisher_confirms=False)

    async def publisher(self) -> AbstractChannel:
        """The confirming channel every publish goes through."""
        channel = self._publisher
        if channel is None or channel.is_closed:
            conn = await self.connection()
            # on_return_raises: a message the broker cannot route (its queue was deleted) is an
            # error to act on, not a confirmed publish that silently went nowhere.
            channel = self._publisher = await conn.channel(publisher_confirms=True, on_return_raises=True)
            self._declared.clear()
            self._bound.clear()
        return channel

    @property
    def current(self) -> AbstractConnection | None:
        """The connection as it is now, without reconnecting (None before the first use)."""
        return self._connection

    async def close(self) -> None:
        """Close the connection (the broker requeues whatever is unacknowledged on it)."""
        conn, self._connection, self._publisher = self._connection, None, None
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(*FAILURES):
                await conn.close()

    async def retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`, reconnecting and retrying with the core's backoff and budget
        (`apalis_cli.retrying`); what the broker refuses is said at once, it would refuse again."""
        try:
            return await retrying(operation, transient=_transient, recover=self._drop_publisher, what="RabbitMQ")
        except REFUSED as exc:
            raise BackendError(f"RabbitMQ refused: {refusal(exc)}") from None

    async def _drop_publisher(self, _: BaseException) -> None:
        self._publisher = None  # its channel may have died with the failed operation: open another

    # -- declarations ----------------------------------------------------------------------

    async def declare(
        self, name: str, arguments: dict[str, Any] | None = None, *, always: bool = False, adopt: bool = True
    ) -> None:
        """Declare durable queue `name` once per connection (or `always`, to reset x-expires).

        A queue someone else declared with other arguments (a producer that followed the RabbitMQ
        tutorial: durable, no x-max-priority) is used as it is when `adopt`, said once in the
        log; otherwise the broker's refusal is one line saying what to change."""
        if name in self._declared and not always:
            return
        self._arguments[name] = (arguments, adopt)
        channel = await self.publisher()
        try:
            await channel.declare_queue(name, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:  # the channel is closed now: declare on a new one
            if not adopt:
                raise BackendError(
                    f'RabbitMQ queue "{name}" exists with other arguments ({refusal(exc)}): '
                    "delete it (apalis declares it again) or set another prefix"
                ) from None
            await (await self.publisher()).declare_queue(name, passive=True)
            self._adopted(name, refusal(exc))
        self._declared.add(name)
        self.created.add(name)

    async def count(self, name: str, arguments: dict[str, Any] | None = None) -> int:
        """How many messages queue `name` holds (declared as `arguments` if it is not there: a
        passive declare of a missing queue would close the channel that asks)."""
        channel = await self.publisher()
        declared = await channel.declare_queue(name, durable=True, arguments=arguments)
        self._declared.add(name)
        self.created.add(name)
        return int(declared.declaration_result.message_count or 0)

    async def purge(self, name: str) -> None:
        """Empty queue `name`."""
        queue = await (await self.publisher()).get_queue(name, ensure=False)
        await queue.purge()

    def forget(self, name: str) -> None:
        """Declare `name` again on next use (it may have been deleted)."""
        self._declared.discard(name)
        self._bound = {bound for bound in self._bound if bound[0] != name}

    def _adopted(self, name: str, reason: str) -> None:
        if name in self.existing:
            return
        self.existing[name] = reason
        without = " (without priorities: it has no x-max-priority)" if "'x-max-priority'" in reason else ""
        _log.warning('RabbitMQ queue "%s" exists with other arguments (%s): using it as it is%s', name, reason, without)

    async def declare_delay(self, work: str, delay_ms: int) -> str:
        """The delay queue that dead-letters into `work` after `delay_ms`: declared on every use,
        because publishing does not count as use for `x-expires`."""
        name = f"{work}.delay.{delay_ms}"
        arguments: dict[str, Any] = {
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work,
            "x-expires": delay_ms + _DELAY_QUEUE_GRACE_MS,
        }
        await self.declare(name, arguments, always=True, adopt=False)
        return name

    async def declare_exchange(self, name: str) -> None:
        """Declare durable direct exchange `name` (once per connection)."""
        if name in self._declared:
            return
        await (await self.publisher()).declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
        self._declared.add(name)
        self.exchanges.add(name)

    async def bind(self, queue: str, exchange: str, key: str) -> None:
        """Bind `queue` to `exchange` with routing key `key` (once per connection)."""
        if (queue, exchange, key) in self._bound:
            return
        channel = await self.publisher()
        bound = await channel.declare_queue(queue, passive=True)
        await bound.bind(exchange, key)
        self._bound.add((queue, exchange, key))

    # -- publishing ------------------------------------------------------------------------

    async def publish_to(self, exchange: str, key: str, message: aio_pika.Message) -> None:
        """Publish `message` to `exchange` and wait for the broker's confirm (a message no queue
        takes is dropped: nobody listens)."""
        channel = await self.publisher()
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(message, routing_key=key, mandatory=False)

    async def publish_many(self, messages: Sequence[tuple[str, aio_pika.Message]]) -> None:
        """Publish (routing key, message) pairs and wait until the broker confirmed them all.

        A message returned unroutable (its queue was deleted since it was declared) is published
        again once the queue is declared again: a confirmed publish is never one that was lost."""
        if not messages:
            return
        exchange = (await self.publisher()).default_exchange
        results = await asyncio.gather(
            *(exchange.publish(message, routing_key=key) for key, message in messages), return_exceptions=True
        )
        returned = [pair for pair, result in zip(messages, results, strict=True) if isinstance(result, PublishError)]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, PublishError):
                raise result
        if not returned:
            return
        for key in sorted({key for key, _ in returned}):
            self._declared.discard(key)
            if key not in self._arguments:
                raise BackendError(f'RabbitMQ has no queue "{key}" to take the message')
            arguments, adopt = self._arguments[key]
            await self.declare(key, arguments, always=True, adopt=adopt)
        exchange = (await self.publisher()).default_exchange
        await asyncio.gather(*(exchange.publish(message, routing_key=key) for key, message in returned))
