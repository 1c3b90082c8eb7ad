"""The Redis backend (`kind = "redis"`): atomic Lua scripts over one hash-tagged key space per
queue; see `apalis_redis.queue` for the data layout."""

from __future__ import annotations

from .store import RedisStore

__all__ = ["RedisStore"]
