"""Running a store operation again after its connection dropped, with capped backoff.

The store says which errors are transient (a closed or broken connection, a busy database) and
how to recover (reconnect). Operations handed to `retrying` must be safe to run twice: one
transaction each, or idempotent (inserts that skip a known id or key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from apalis_cli.errors import ConnectionLost

__all__ = ["retrying"]

T = TypeVar("T")


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool],
    recover: Callable[[BaseException], Awaitable[None]] | None = None,
    attempts: int = 8,
    base: float = 0.05,
    cap: float = 2.0,
) -> T:
    """`await operation()`, tried up to `attempts` times while it fails with a transient error.

    Before each new try, `recover(error)` runs (a reconnect; its own failure just costs the
    try) and the wait doubles from `base` up to `cap`. When the tries run out, the last error
    is raised as `ConnectionLost`; errors that are not transient are raised at once.
    """
    wait = base
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt == attempts:
                raise ConnectionLost(f"{exc} (gave up after {attempts} tries)") from exc
            await asyncio.sleep(wait)
            wait = min(wait * 2, cap)
            if recover is not None:
                try:
                    await recover(exc)
                except Exception as again:
                    if not transient(again):
                        raise
    raise AssertionError("unreachable")  # pragma: no cover
