"""Waiting for a store, one way everywhere: the stores' operations and their listening
connections, the worker's reconnects, the daemon's wait at start, cron's pushes and the
supervisor's restarts all back off the same way.

- `delays(first, cap)`: the waits, doubling from `first` up to `cap`, each with jitter: drawn
  from the upper half of its value, so a wait is never near zero by chance, and a fleet that
  lost its server together does not come back in lock-step.
- `retrying(operation, transient=..., recover=..., budget=...)`: `operation` again while it fails
  with a transient error, for up to `budget` seconds (`RECONNECT_BUDGET` unless the caller knows
  better), then one `ConnectionLost` line saying what failed, why, and for how long. With the
  store's `Contact` (`apalis_cli.contact`) it reports each try, and its waits end as soon as
  another operation found the store back.
- `keep_connected(session, what=...)`: a connection that must always be there (a LISTEN, a
  pub/sub subscription, a wake-up listener) is made again for as long as it takes, without a
  budget: `session` connects and serves until its connection is lost; once it is connected, it
  says so (`steady()`) and the next outage backs off from the start again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import NoReturn, TypeVar

from .contact import RETRY_WAIT_CAP, Contact
from .errors import ConnectionLost, describe_error

__all__ = ["RECONNECT_BUDGET", "delays", "keep_connected", "retrying", "tries_within", "wait_after"]

T = TypeVar("T")

_log = logging.getLogger(__name__)

RECONNECT_BUDGET = 30.0
"""How long a store's operation is retried while the store is away before its caller hears of
it: a server restart is ridden out, and an outage is reported within half a minute."""


def delays(first: float = 0.05, cap: float = RETRY_WAIT_CAP, *, jitter: bool = True) -> Iterator[float]:
    """Endless waits in seconds: `first`, doubling up to `cap`; with `jitter` each is drawn
    from [50%, 100%) of that, so they still grow and never pass `cap`."""
    failures = 0
    while True:
        failures += 1
        yield wait_after(failures, first, cap, jitter=jitter)


def wait_after(failures: int, first: float = 0.05, cap: float = RETRY_WAIT_CAP, *, jitter: bool = True) -> float:
    """The wait after `failures` failed tries in a row: the `failures`-th of `delays()`, for a
    caller that counts its tries instead of drawing from an iterator (redis-py's cluster client)."""
    wait = min(first * 2.0 ** min(failures - 1, 64), cap)
    return wait * random.uniform(0.5, 1.0) if jitter else wait


def tries_within(budget: float = RECONNECT_BUDGET) -> int:
    """How many tries again fit in `budget` seconds of `delays()` at their longest: the count for
    a caller that is told a number of tries, not a time (redis-py's cluster client)."""
    spent, tries = 0.0, 0
    for wait in delays(jitter=False):
        if spent + wait > budget:
            return tries
        spent, tries = spent + wait, tries + 1
    raise AssertionError("unreachable: delays() never ends")


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool],
    recover: Callable[[BaseException], Awaitable[None]] | None = None,
    budget: float = RECONNECT_BUDGET,
    what: str = "the store",
    describe: Callable[[BaseException], str] = describe_error,
    contact: Contact | None = None,
    answered: Callable[[BaseException], bool] | None = None,
) -> T:
    """`await operation()`, tried again while it fails with an error `transient` accepts.

    Between tries it waits (`delays()`), then `recover(error)` runs (a reconnect; a transient
    failure of its own just costs the try). An error that is not transient is raised at once.
    Once the next wait would end past `budget` seconds, the last error is raised as
    `ConnectionLost`: "`what`: `describe(error)` (failing for N s, gave up)".

    `answered(error)` tells a transient error the store answered with (a deadlock it rolled
    back) from a store that is away: the waits start short again, since a conflict clears in
    moments, not after an outage's backoff. `contact` hears of every try: any other transient
    error is a loss of contact, a try that got through a reach; and a wait ends early once
    another operation of the store got through (the store is back: this one goes too).

    `operation` must be safe to run twice: one transaction, or an idempotent write.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    waits = delays()
    sleep = asyncio.sleep if contact is None else contact.sleep
    while True:
        try:
            result = await operation()
        except Exception as exc:
            if not transient(exc):
                raise
            if answered is not None and answered(exc):
                waits = delays()
            elif contact is not None:
                contact.lost()
            wait = next(waits)
            spent = loop.time() - started
            if spent + wait > budget:
                raise ConnectionLost(f"{what}: {describe(exc)} (failing for {spent:.1f} s, gave up)") from exc
            await sleep(wait)
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


async def keep_connected(session: Callable[[Callable[[], None]], Awaitable[None]], *, what: str) -> NoReturn:
    """Run `session(steady)` again and again, until cancelled.

    A session connects, sets up (LISTEN, SUBSCRIBE), calls `steady()` once it is in place, and
    serves until its connection fails (it returns or raises). Between two sessions the next of
    `delays()` is waited, from the start again after a `steady()`; each failure is one warning
    naming `what` and the error's type (never its text: a driver may quote the URL)."""
    waits = delays()

    def steady() -> None:
        nonlocal waits
        waits = delays()

    while True:
        try:
            await session(steady)
            error = "its connection ended"
        except Exception as exc:
            error = type(exc).__name__
        wait = next(waits)
        _log.warning("%s: %s, connecting again in %.2fs", what, error, wait)
        await asyncio.sleep(wait)
