"""The AMQP backend (`kind = "amqp"`): RabbitMQ queues with confirms, manual acks, delay queues
and a dead-letter queue, no plugins; see `apalis_amqp.queue` for the layout."""

from __future__ import annotations

from .config import AmqpConfig
from .queue import AmqpQueue, AmqpStore

__all__ = ["AmqpConfig", "AmqpQueue", "AmqpStore"]
