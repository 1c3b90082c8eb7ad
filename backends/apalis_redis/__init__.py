"""The Redis backend (`kind = "redis"`): atomic Lua scripts over one hash-tagged key space per
queue; see `apalis_redis.backend` for the data layout."""

from __future__ import annotations

from .backend import RedisQueue, RedisStore
from .config import RedisSettings

__all__ = ["RedisQueue", "RedisSettings", "RedisStore"]
