"""Acknowledgement, batched: the outcomes of one event-loop turn reach the store together.

A store gives `AckBatcher` one `flush(items)` that writes many outcomes in one round trip; every
run awaits its own outcome's write (so its slot frees only once the store has it), while runs
that finish together share the write. `ack_layer` is the `middleware()` most stores return.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .errors import BackendError, describe_error
from .service import Layer, Outcome, OutcomeKind, Service
from .task import Task

__all__ = ["AckBatcher", "ack_layer"]

Flush = Callable[[Sequence[tuple[Task[Any], Outcome]]], Awaitable[None]]
"""Writes many outcomes in one round trip; raises `BackendError` (or `OSError`) when the store
cannot be reached, anything else when it refuses what it was given."""

_Waiting = tuple[Task[Any], Outcome, asyncio.Future[Outcome]]


class AckBatcher:
    """Coalesces acknowledgements: one `flush` at a time, carrying all that waited for it.

    A flush that fails for a reason other than a lost store (`BackendError`, `OSError`: then
    every outcome of the batch fails, and the runs' tasks come back as the store's leases say)
    is tried again one outcome at a time, so an outcome the store refuses fails its own task
    alone. Such an outcome is replaced by a kill that says why, so its task is not left running.
    """

    __slots__ = ("_drainer", "_flush", "_loop", "_pending", "_running")

    def __init__(self, flush: Flush) -> None:
        self._flush = flush
        self._pending: list[_Waiting] = []
        self._running = False
        self._drainer: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the last ack, kept: `asyncio.get_running_loop()` (and `ensure_future`'s
        own look-up) is a `getpid` system call on Python 3.11, twice per lone task's ack."""

    async def ack(self, task: Task[Any], outcome: Outcome) -> Outcome:
        """Record `outcome` for `task` in the store; returns, once written, the outcome written."""
        loop = self._loop
        if loop is None or not loop.is_running():  # the first ack, or a store used on a new loop
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((task, outcome, future))
        if not self._running:
            self._running = True
            # The drain's first step runs after every run already scheduled in this loop turn,
            # so the runs that finish together still share its first write.
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write(batch)
                except BaseException as exc:  # every waiter must hear of the failure
                    _fail(batch, exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            self._running = False

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            await self._flush([(task, outcome) for task, outcome, _ in batch])
        except Exception as exc:
            if isinstance(exc, BackendError | OSError):
                raise  # the store is out of reach: no outcome of this batch could be written
            if len(batch) == 1:
                await self._refused(batch[0], exc)
            else:
                for waiting in batch:  # find the outcome the store refuses: each alone
                    await self._write([waiting])
            return
        for _, outcome, future in batch:
            if not future.done():
                future.set_result(outcome)

    async def _refused(self, waiting: _Waiting, exc: Exception) -> None:
        task, outcome, future = waiting
        if outcome.kind is OutcomeKind.RELEASE:
            raise exc  # nothing of the run's own is in a release: it is the store's fault
        written = Outcome.kill(f"the store refused this run's outcome ({outcome.kind.value}): {describe_error(exc)}")
        try:
            await self._flush([(task, written)])
        except Exception:
            raise exc from None
        future.set_result(written)


def _fail(batch: list[_Waiting], exc: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


def ack_layer(ack: Callable[[Task[Any], Outcome], Awaitable[Outcome | None]]) -> Layer:
    """The acknowledging layer: writes each final outcome; a run the worker gave up on (a stop
    past shutdown_timeout: its asyncio task cancelled) is released. A run stopped by an
    operator's cancel of its task is not released: the worker's cancel layer, inside this one,
    turns it into `Outcome.cancel`, written like any other outcome.

    When `ack` returns an outcome, that is what the store recorded (it may have refused the
    run's own), and what the run reports."""

    def layer(inner: Service) -> Service:
        async def acknowledged(task: Task[Any]) -> Outcome:
            try:
                outcome = await inner(task)
            except asyncio.CancelledError:
                # The worker gave up on this run (shutdown_timeout passed): hand it back.
                await asyncio.shield(ack(task, Outcome.release()))
                raise
            written = await ack(task, outcome)
            return outcome if written is None else written

        return acknowledged

    return layer
