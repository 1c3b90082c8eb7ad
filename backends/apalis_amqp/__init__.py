"""The AMQP backend (`kind = "amqp"`): RabbitMQ queues with confirms, manual acks, delay queues
and a dead-letter queue, no plugins; see `apalis_amqp.queue` for the layout."""

from __future__ import annotations

from .store import AmqpStore

__all__ = ["AmqpStore"]
