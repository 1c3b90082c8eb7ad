"""Helpers that turn a store's `fetch_batch(n)` into the worker's poll stream.

A store that can only be asked ("give me up to n ready tasks") gets, from `poll_batches`, the
stream the worker wants: tasks one at a time, fetched in batches of the worker's free slots,
`None` when idle, then a wait that ends early when a `Waker` is notified (a push in this process,
a LISTEN/NOTIFY, a pub/sub message) or after an idle backoff capped at `poll_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from .backend import WorkerContext
from .contact import Contact
from .task import Task

__all__ = ["FIRST_IDLE_WAIT", "IdleWait", "Waker", "beat_every", "poll_batches", "woken"]

FIRST_IDLE_WAIT = 0.005


async def woken(event: asyncio.Event, within: float) -> bool:
    """Wait up to `within` seconds for `event`; True when it was set in time."""
    # Not wait_for: on Python 3.11 it swallows a cancellation that arrives as the event is set,
    # and a stopping worker's poller would then run on for ever.
    try:
        async with asyncio.timeout(within):
            await event.wait()
    except TimeoutError:
        return False
    return True


class IdleWait:
    """How long an idle poll stream waits for a wake-up before it asks the store again: briefly
    after work, then doubled after each wait that no wake-up ended (work nobody signals: a retry
    falling due), up to the worker's `poll_interval`."""

    __slots__ = ("_cap", "_first", "_next")

    def __init__(self, cap: float, first: float = FIRST_IDLE_WAIT) -> None:
        self._cap = cap
        self._first = self._next = min(first, cap)

    def reset(self) -> None:
        """Work was found: the next idle wait is short again."""
        self._next = self._first

    async def wait(self, event: asyncio.Event) -> None:
        """Wait for `event`, at most the current idle wait."""
        if await woken(event, self._next):
            self._next = self._first
        else:
            self._next = min(self._next * 2, self._cap)


class Waker:
    """Wakes every poller waiting on one queue; a notify before the wait is not lost."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()

    def notify(self) -> None:
        """Wake every waiting poller (and the next wait of every registered one)."""
        for event in self._events:
            event.set()

    def subscribe(self) -> asyncio.Event:
        """A new event that `notify` sets; clear it before each fetch, wait on it after."""
        event = asyncio.Event()
        self._events.add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        """Stop notifying `event`."""
        self._events.discard(event)


async def poll_batches(
    worker: WorkerContext,
    fetch: Callable[[int], Awaitable[Sequence[Task[bytes]]]],
    release: Callable[[Sequence[Task[bytes]]], Awaitable[None]],
    waker: Waker | None = None,
    first_wait: float = FIRST_IDLE_WAIT,
    take: Callable[[int], Sequence[Task[bytes]]] | None = None,
) -> AsyncIterator[Task[bytes] | None]:
    """The poll stream over `fetch(n)`; tasks fetched but never handed out are `release`d.

    `fetch` is only called with an empty buffer, so an error it raises strands no task: the
    worker may drop this stream and start a new one after a backoff. `first_wait` is the idle
    wait after work (`IdleWait`): a store whose pushes reach an idle worker by themselves waits
    longer, since its timer only claims work nobody signals. `take(n)`, if given, is asked
    first: up to n tasks already claimed (held ahead, handed over), served without a fetch and
    the claim task around it (two loop turns less between a hand-over and the handler).
    """
    buffer: deque[Task[bytes]] = deque()
    event = waker.subscribe() if waker is not None else asyncio.Event()
    idle = IdleWait(worker.poll_interval, first_wait)
    try:
        while True:
            if buffer:
                yield buffer.popleft()
                continue
            event.clear()
            limit = worker.free_slots()
            if limit < 1:
                # Runs the worker started as their tasks arrived (`WorkerContext.start`) took the
                # slots since it asked for this item: a claim now would take tasks it may not run.
                await worker.slot()
                limit = max(worker.free_slots(), 1)
            batch = take(limit) if take is not None else None
            if not batch:
                batch = await _fetch_shielded(fetch, limit, release)
            if batch:
                buffer.extend(batch)
                idle.reset()
                continue
            yield None
            await idle.wait(event)
    finally:
        if waker is not None:
            waker.unsubscribe(event)
        if buffer:
            await release(list(buffer))


async def _fetch_shielded(
    fetch: Callable[[int], Awaitable[Sequence[Task[bytes]]]],
    limit: int,
    release: Callable[[Sequence[Task[bytes]]], Awaitable[None]],
) -> Sequence[Task[bytes]]:
    """`fetch(limit)`, but a claim that a stopping worker cancels mid-flight is released, not
    left locked by a worker that will never run it."""
    # The claim runs in a task of its own that sets `claimed` when it ends. A poller cancelled
    # while it waits cannot cancel `claimed`, so the cancellation is delivered once the claim has
    # ended and its tasks are known. Cheaper than `asyncio.shield` (no outer future, no callback
    # in Python, one loop pass fewer), which matters because this runs for every claim.
    claimed = _Claimed()
    claim = asyncio.ensure_future(_claim_into(claimed, fetch, limit))
    try:
        return await claimed
    except asyncio.CancelledError:
        # Either `claimed` was cancelled (the claim itself was) or the poller's cancellation
        # waited for `claimed` to be set: in both cases the claim is over.
        if claimed.cancelled() or claimed.exception() is not None:
            raise  # nothing was taken
        if claimed.result():
            await release(claimed.result())
        raise
    finally:
        del claim  # referenced until here so the loop cannot collect a claim in flight


class _Claimed(asyncio.Future[Sequence[Task[bytes]]]):
    """The outcome of one claim; its waiter's cancellation does not cancel it (see above)."""

    def cancel(self, msg: Any | None = None) -> bool:
        return False


async def _claim_into(claimed: _Claimed, fetch: Callable[[int], Awaitable[Sequence[Task[bytes]]]], limit: int) -> None:
    try:
        claimed.set_result(await fetch(limit))
    except asyncio.CancelledError:
        asyncio.Future.cancel(claimed)  # the claim itself was cancelled (the loop is closing)
        raise
    except Exception as exc:  # the poller raises it
        claimed.set_exception(exc)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: the loop must see them too
        claimed.set_exception(exc)
        raise


async def beat_every(
    worker: WorkerContext,
    beat: Callable[[], Awaitable[None]],
    farewell: Callable[[], Awaitable[None]] | None = None,
    contact: Contact | None = None,
) -> AsyncIterator[None]:
    """The heartbeat stream: `beat()` now and then every `keep_alive`, one item per success.

    Every `keep_alive` from one beat's start to the next's, the beat's round trips included: the
    others judge a worker by the stamp a beat writes first, and a wait of `keep_alive` after
    those round trips (a MariaDB beat makes five or more, a loaded server answers each in
    100 ms or more) made the stamps `keep_alive` plus them apart, past `stale_after` under load:
    another daemon swept the worker's tasks while it ran them (test_chaos_outage[mysql], live
    daemons' beats 1.7-1.9 s old at `stale_after` 1.5 s). A beat longer than `keep_alive` is
    followed after a quarter of it, so a slow server is not beaten without a pause.

    `farewell()` runs when the stream is closed (the worker stopped): a store unregisters the
    worker there, so its leftovers are recovered at once rather than after `stale_after`.
    With the store's `contact`, the worker beats as soon as the store is reached again after an
    outage, not at its next tick: its heartbeat is the first thing other workers need to see.
    Each beat is noted in the `contact` before its round trips, so a stall of this process holds
    its sweeps (`Contact.may_sweep`).
    """
    sleep = asyncio.sleep if contact is None else contact.sleep
    try:
        while True:
            started = time.monotonic()
            if contact is not None:
                contact.beat(worker.id, worker.keep_alive, worker.stale_after)
            await beat()
            yield None
            await sleep(max(worker.keep_alive - (time.monotonic() - started), worker.keep_alive / 4))
    finally:
        if contact is not None:
            contact.forget(worker.id)
        if farewell is not None:
            # Best effort: a store that is down cannot hear it (the sweep recovers the worker's
            # tasks after stale_after anyway), and a failure here must not replace the
            # cancellation or GeneratorExit that is closing the stream.
            with contextlib.suppress(Exception):
                await farewell()
