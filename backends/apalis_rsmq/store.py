"""`RsmqStore` (`kind = "rsmq"`): rsmq queues in one Redis database under one namespace; see
`apalis_rsmq.queue` for how tasks map onto rsmq messages."""

from __future__ import annotations

from typing import ClassVar

from apalis_cli.backend import Capabilities, StoreSpec
from apalis_cli.codec import Codec
from apalis_cli.errors import UsageError
from apalis_redis.connection import OnConnection, require_driver

from .config import QUEUE_NAME, RsmqConfig
from .connection import connect_store
from .queue import CAPABILITIES, RsmqQueue

__all__ = ["RsmqStore"]


class RsmqStore(OnConnection):
    """rsmq queues in one Redis database under one namespace, sharing one connection."""

    kind: ClassVar[str] = "rsmq"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, config: RsmqConfig) -> None:
        self.config = config
        self.connection = connect_store(config)

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> RsmqStore:
        """Validate the table (`url`, `namespace`, `vt`, `delay`, `maxsize`, `realtime`)."""
        config = RsmqConfig.parse(spec.url, spec.options)
        require_driver("rsmq")
        return cls(config)

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> RsmqQueue:
        """The queue-bound backend; the name must be a valid rsmq queue name."""
        if not QUEUE_NAME.match(queue):
            raise UsageError(f'rsmq queue names are 1-155 letters, digits, "_" or "-", got "{queue}"')
        return RsmqQueue(self.connection, self.config, queue, codec=codec, max_attempts=max_attempts)
