"""The NATS JetStream backend (`kind = "nats"`): a WorkQueue stream, durable pull consumers,
`nak(delay)` retries, `in_progress` heartbeats; see `apalis_nats.backend` for the layout."""

from __future__ import annotations

from .backend import NatsQueue, NatsStore
from .config import NatsSettings

__all__ = ["NatsQueue", "NatsSettings", "NatsStore"]
