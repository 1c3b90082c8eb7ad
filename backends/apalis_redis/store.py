"""`RedisStore` (`kind = "redis"`): queues in one Redis database (or Redis Cluster) under one
namespace; see `apalis_redis.queue` for the data layout."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from apalis_cli.backend import Capabilities, StoreSpec
from apalis_cli.codec import Codec

from .config import RedisConfig
from .connection import Connection, OnConnection, require_driver
from .queue import CAPABILITIES, RedisQueue, scripts

__all__ = ["RedisStore"]


class RedisStore(OnConnection):
    """Queues in one Redis database under one namespace, sharing one connection."""

    kind: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.connection = Connection(
            config.url,
            f"apalis:{config.namespace}:{uuid.uuid4().hex[:12]}",
            scripts(),
            what="redis",
            cluster=config.cluster,
            wake_prefix=f"{config.namespace}:wake:",
            control_prefix=f"{config.namespace}:ctl:",
            once=("bulk",),  # a second run of a batch changes up to as many tasks again
        )

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> RedisStore:
        """Validate the table (`url`, `namespace`, `cluster`) and build the store, unopened."""
        config = RedisConfig.parse(spec.url, spec.options)
        require_driver("redis")
        return cls(config)

    @property
    def scripts(self) -> dict[str, Any]:
        """The registered scripts, by name (after `open`)."""
        return self.connection.scripts

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> RedisQueue:
        """The queue-bound backend."""
        return RedisQueue(self.connection, self.config.namespace, queue, codec=codec, max_attempts=max_attempts)
