"""The AMQP backend (`kind = "amqp"`): RabbitMQ queues with confirms, manual acks, delay queues
and a dead-letter queue, no plugins; see `apalis_amqp.backend` for the layout."""

from __future__ import annotations

from .backend import AmqpQueue, AmqpStore
from .config import AmqpSettings

__all__ = ["AmqpQueue", "AmqpSettings", "AmqpStore"]
