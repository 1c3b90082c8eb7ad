"""Layers that limit how much runs: `concurrency` (at once) and `rate_limit` (per period).

With `scope = "local"` (the default) a layer bounds what reaches the handler in this worker
process, for example to respect a downstream API's limits while the worker keeps claiming.
With `scope = "global"` the store enforces the limit in its claim, for every daemon of the queue
at once, optionally per `key` (an argument of the task): the layer itself then lets every run
through, and the worker hands the limit to its store (`apalis_cli.fleet`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from ..bounds import CONCURRENCY, COUNT
from ..config_fields import Table, choice, duration, integer, non_empty
from ..durations import format_duration
from ..service import Outcome, Service
from ..task import Task

__all__ = ["ConcurrencyLayer", "RateLimitLayer"]

_SCOPES = ("local", "global")


def _scope_and_key(table: Table) -> tuple[str, str | None]:
    scope = table.take("scope", choice(*_SCOPES), "local")
    key = table.take("key", non_empty, None)
    if key is not None and scope != "global":
        table.fail("key", 'a key needs scope = "global" (a local limit holds in one process, for every key)')
    return scope, key


def _scope_text(scope: str, key: str | None) -> str:
    if scope != "global":
        return ""
    return ", global" + (f", key={key}" if key is not None else "")


class ConcurrencyLayer:
    """At most `limit` runs inside this layer at once (global: of the queue, or of each key, in
    every daemon together)."""

    kind: ClassVar[str] = "concurrency"

    def __init__(self, limit: int, *, scope: str = "local", key: str | None = None) -> None:
        self.limit = limit
        self.scope = scope
        self.key = key

    @classmethod
    def from_config(cls, table: Table) -> ConcurrencyLayer:
        """`{ kind = "concurrency", limit = 4 }`, or `scope = "global"` with an optional `key`"""
        limit = table.take("limit", integer(CONCURRENCY))
        scope, key = _scope_and_key(table)
        return cls(limit, scope=scope, key=key)

    def __repr__(self) -> str:
        return f"concurrency({self.limit}{_scope_text(self.scope, self.key)})"

    def __call__(self, inner: Service) -> Service:
        if self.scope == "global":
            return inner  # the store's claim holds it
        semaphore = asyncio.Semaphore(self.limit)

        async def bounded(task: Task[Any]) -> Outcome:
            async with semaphore:
                return await inner(task)

        return bounded


class RateLimitLayer:
    """At most `rate` runs start per `per` seconds, bursts up to `rate` (global: of the queue,
    or of each key, in every daemon together)."""

    kind: ClassVar[str] = "rate_limit"

    def __init__(self, rate: int, per: float, *, scope: str = "local", key: str | None = None) -> None:
        self.rate = rate
        self.per = per
        self.scope = scope
        self.key = key

    @classmethod
    def from_config(cls, table: Table) -> RateLimitLayer:
        """`{ kind = "rate_limit", rate = 100, per = "1s" }`, or `scope = "global"` with an optional `key`"""
        rate = table.take("rate", integer(COUNT))
        per = table.take("per", duration, 1.0, positive=True)
        scope, key = _scope_and_key(table)
        return cls(rate, per, scope=scope, key=key)

    def __repr__(self) -> str:
        return f"rate_limit({self.rate}/{format_duration(self.per)}{_scope_text(self.scope, self.key)})"

    def __call__(self, inner: Service) -> Service:
        if self.scope == "global":
            return inner  # the store's claim holds it
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
