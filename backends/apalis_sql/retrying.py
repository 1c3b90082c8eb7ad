"""Running a store operation again after its connection dropped, with capped backoff.

The store says which errors are transient (a closed or broken connection, a busy database) and
how to recover (reconnect). Operations handed to `retrying` must be safe to run twice: one
transaction each, or idempotent (inserts that skip a known id or key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from apalis_cli.contact import Contact
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
    contact: Contact | None = None,
    answered: Callable[[BaseException], bool] | None = None,
) -> T:
    """`await operation()`, tried up to `attempts` times while it fails with a transient error.

    Before each new try, `recover(error)` runs (a reconnect; its own failure just costs the
    try) and the wait doubles from `base` up to `cap`. When the tries run out, the last error
    is raised as `ConnectionLost`; errors that are not transient are raised at once.

    `answered(error)` tells a transient error the store answered with (a deadlock it rolled
    back) from a lost store: it is tried again after `base`, whatever the backoff had grown to.
    `contact` hears of every try (see `apalis_cli.contact`): any other transient error is a loss
    of contact, and a wait ends early once another operation of the store got through: the
    store is back, so this one goes at once too.
    """
    wait = base
    for attempt in range(1, attempts + 1):
        try:
            result = await operation()
        except Exception as exc:
            if not transient(exc):
                raise
            if answered is not None and answered(exc):
                wait = base  # a conflict clears in moments: no outage's backoff for it
            elif contact is not None:
                contact.lost()
            if attempt == attempts:
                raise ConnectionLost(f"{exc} (gave up after {attempts} tries)") from exc
            if contact is not None:
                await contact.sleep(wait)
            else:
                await asyncio.sleep(wait)
            wait = min(wait * 2, cap)
            if recover is not None:
                try:
                    await recover(exc)
                except Exception as again:
                    if not transient(again):
                        raise
        else:
            if contact is not None:
                contact.reached()
            return result
    raise AssertionError("unreachable")  # pragma: no cover
