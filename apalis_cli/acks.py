"""Acknowledgement, batched: the outcomes of one event-loop turn reach the store together.

A store gives `AckBatcher` one `flush(items)` that writes many outcomes in one round trip; every
run awaits its own outcome's write (so its slot frees only once the store has it), while runs
that finish together share the write. `ack_layer` is the `middleware()` most stores return.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .service import Layer, Outcome, Service
from .task import Task

__all__ = ["AckBatcher", "ack_layer"]

Flush = Callable[[Sequence[tuple[Task[Any], Outcome]]], Awaitable[None]]


class AckBatcher:
    """Coalesces acknowledgements: one `flush` at a time, carrying all that waited for it."""

    __slots__ = ("_drainer", "_flush", "_pending", "_running")

    def __init__(self, flush: Flush) -> None:
        self._flush = flush
        self._pending: list[tuple[Task[Any], Outcome, asyncio.Future[None]]] = []
        self._running = False
        self._drainer: asyncio.Future[None] | None = None

    async def ack(self, task: Task[Any], outcome: Outcome) -> None:
        """Record `outcome` for `task` in the store; returns once it is written."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((task, outcome, future))
        if not self._running:
            self._running = True
            # The drain's first step runs after every run already scheduled in this loop turn,
            # so the runs that finish together still share its first write.
            self._drainer = asyncio.ensure_future(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._flush([(task, outcome) for task, outcome, _ in batch])
                except BaseException as exc:  # every waiter must hear of the failure
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._running = False


def ack_layer(ack: Callable[[Task[Any], Outcome], Awaitable[None]]) -> Layer:
    """The acknowledging layer: writes each final outcome; a cancelled run is released."""

    def layer(inner: Service) -> Service:
        async def acknowledged(task: Task[Any]) -> Outcome:
            try:
                outcome = await inner(task)
            except asyncio.CancelledError:
                # The worker gave up on this run (shutdown_timeout passed): hand it back.
                await asyncio.shield(ack(task, Outcome.release()))
                raise
            await ack(task, outcome)
            return outcome

        return acknowledged

    return layer
