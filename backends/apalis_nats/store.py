"""The NATS store: one client and one WorkQueue stream, shared by every queue of a table."""

from __future__ import annotations

import re
from typing import ClassVar

from apalis_cli.backend import Capabilities, StoreSpec
from apalis_cli.codec import Codec
from apalis_cli.errors import ConfigError

from .config import NatsConfig
from .connection import Connection
from .queue import CAPABILITIES, NatsQueue

__all__ = ["NatsStore"]

_QUEUE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")


class NatsStore:
    """A NATS connection and one WorkQueue stream shared by every queue of one table."""

    kind: ClassVar[str] = "nats"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self.connection = Connection(config)

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> NatsStore:
        """Validate the table (`url`, options `stream`, `prefix`, `duplicate_window`, `storage`)."""
        return cls(NatsConfig.parse(spec.url, spec.options))

    async def open(self) -> None:
        """Connect and create the stream if it does not exist."""
        await self.connection.client()

    async def close(self) -> None:
        """Close the connection."""
        await self.connection.close()

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> NatsQueue:
        """The queue-bound backend; the queue name must be valid in a subject."""
        if not _QUEUE.match(queue):
            raise ConfigError(f"a NATS queue name is subject tokens of letters, digits, '_' and '-', got {queue!r}")
        return NatsQueue(self.connection, queue, codec=codec, max_attempts=max_attempts)
