"""Layers that limit how much runs: `concurrency` (at once) and `rate_limit` (per period).

The worker's own `concurrency` bounds what it claims; these bound what reaches the handler, for
example to respect a downstream API's limits while the worker keeps claiming.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from ..bounds import CONCURRENCY, COUNT
from ..config_fields import Table, duration, integer
from ..durations import format_duration
from ..service import Outcome, Service
from ..task import Task

__all__ = ["ConcurrencyLayer", "RateLimitLayer"]


class ConcurrencyLayer:
    """At most `limit` runs inside this layer at once."""

    kind: ClassVar[str] = "concurrency"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    @classmethod
    def from_config(cls, table: Table) -> ConcurrencyLayer:
        """`{ kind = "concurrency", limit = 4 }`"""
        return cls(table.take("limit", integer(CONCURRENCY)))

    def __repr__(self) -> str:
        return f"concurrency({self.limit})"

    def __call__(self, inner: Service) -> Service:
        semaphore = asyncio.Semaphore(self.limit)

        async def bounded(task: Task[Any]) -> Outcome:
            async with semaphore:
                return await inner(task)

        return bounded


class RateLimitLayer:
    """At most `rate` runs start per `per` seconds (a token bucket, bursts up to `rate`)."""

    kind: ClassVar[str] = "rate_limit"

    def __init__(self, rate: int, per: float) -> None:
        self.rate = rate
        self.per = per

    @classmethod
    def from_config(cls, table: Table) -> RateLimitLayer:
        """`{ kind = "rate_limit", rate = 100, per = "1s" }`"""
        return cls(table.take("rate", integer(COUNT)), table.take("per", duration, 1.0, positive=True))

    def __repr__(self) -> str:
        return f"rate_limit({self.rate}/{format_duration(self.per)})"

    def __call__(self, inner: Service) -> Service:
        bucket = _TokenBucket(self.rate, self.per)

        async def throttled(task: Task[Any]) -> Outcome:
            await bucket.take()
            return await inner(task)

        return throttled


class _TokenBucket:
    def __init__(self, rate: int, per: float) -> None:
        self._capacity = float(rate)
        self._refill = rate / per
        self._tokens = float(rate)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:  # waiters are served in arrival order
            while True:
                now = time.monotonic()
                self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._refill)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._refill)
