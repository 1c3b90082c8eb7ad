"""The AMQP store: one RabbitMQ connection and its consumers, shared by every queue of a table."""

from __future__ import annotations

import re
from typing import ClassVar

from apalis_cli.backend import Capabilities, StoreSpec
from apalis_cli.codec import Codec
from apalis_cli.errors import ConfigError

from .config import AmqpConfig
from .connection import Connection
from .consumer import Consumers
from .queue import CAPABILITIES, AmqpQueue

__all__ = ["AmqpStore"]

# What pamqp (aio-pika's codec) accepts in a queue name; anything else failed at the first declare.
_QUEUE = re.compile(r"^[A-Za-z0-9\-_.:@#,/+ ]+$")


class AmqpStore:
    """A RabbitMQ connection shared by every queue of one `[backends.NAME]` table."""

    kind: ClassVar[str] = "amqp"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, config: AmqpConfig) -> None:
        self.config = config
        self.connection = Connection(config)
        self.consumers = Consumers()

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> AmqpStore:
        """Validate the table (`url`, options `prefix` and `max_priority`)."""
        return cls(AmqpConfig.parse(spec.url, spec.options))

    async def open(self) -> None:
        """Connect (the queues are declared when first used)."""
        await self.connection.connection()

    async def close(self) -> None:
        """Close every consumer channel and the connection."""
        await self.consumers.close()
        await self.connection.close()

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> AmqpQueue:
        """The queue-bound backend; the name must be one the AMQP client takes in a queue's name."""
        if not _QUEUE.match(queue):
            raise ConfigError(
                "an AMQP queue name is letters, digits, spaces and - _ . : @ # , / + (what the AMQP client "
                f"takes), got {queue!r}",
                key="queue",
            )
        return AmqpQueue(self.connection, self.consumers, queue, codec=codec, max_attempts=max_attempts)
