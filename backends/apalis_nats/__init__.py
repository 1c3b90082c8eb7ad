"""The NATS JetStream backend (`kind = "nats"`): a WorkQueue stream, durable pull consumers,
`nak(delay)` retries, `in_progress` heartbeats; see `apalis_nats.queue` for the layout."""

from __future__ import annotations

from .store import NatsStore

__all__ = ["NatsStore"]
