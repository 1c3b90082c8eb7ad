"""Cron as a task source: the queue a cron worker consumes, with the ticker pushing into it.

The `Ticker` (ticker.py) pushes each tick into a sink; the worker consumes that sink's queue as
usual, and the ticker runs for as long as the worker's poll stream does.

- Without `pipe_to` the sink is an in-process memory queue: each daemon runs every tick itself,
  and there is nothing to push to from outside (the backend is no `TaskSink`).
- With `pipe_to`, the sink is a durable backend's queue and each tick is pushed with its
  idempotency key, so N replicas produce each tick once and the durable store's semantics
  (retries, orphans, inspect) apply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from apalis_cli.backend import (
    BackendExt,
    Capabilities,
    Inspector,
    TaskSink,
    WorkerContext,
)
from apalis_cli.codec import Codec
from apalis_cli.queue_base import decoded
from apalis_cli.service import Layer
from apalis_cli.task import Task

from .config import CronConfig
from .ticker import Ticker

__all__ = ["CronQueue", "SinkQueue"]


@runtime_checkable
class SinkQueue(BackendExt, TaskSink, Protocol):
    """A queue-bound backend that can also be pushed to."""


class CronQueue:
    """The cron worker's backend: the ticker runs while the worker polls the sink's queue."""

    def __init__(self, config: CronConfig, sink: SinkQueue, *, durable: bool) -> None:
        self.config = config
        self.sink = sink
        self.durable = durable
        self.codec: Codec = sink.codec
        self.queue = sink.get_queue()
        self.capabilities: Capabilities = sink.capabilities
        inspector = sink if durable and isinstance(sink, Inspector) else None
        self.ticker = Ticker(config, sink, inspector=inspector)

    def get_queue(self) -> str:
        """The queue the ticks go to."""
        return self.queue

    async def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """The sink's tasks; the ticker pushes into it for as long as this stream lives."""
        ticking = asyncio.create_task(self.ticker.run(), name=f"{worker.name}-cron")
        try:
            async for task in self.sink.poll_compact(worker):
                if ticking.done() and not ticking.cancelled():
                    ticking.result()  # a crashed ticker is this stream's failure
                yield task
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ticking

    def poll(self, worker: WorkerContext) -> AsyncIterator[Task[Any] | None]:
        """Decoded ticks: `poll_compact` (the ticker running), decoded by the sink's codec; an
        undecodable one is killed through the sink's acknowledgement."""
        return decoded(self.poll_compact(worker), self.codec, self.middleware())

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """The sink's heartbeat."""
        return self.sink.heartbeat(worker)

    def middleware(self) -> Layer:
        """The sink's acknowledgement."""
        return self.sink.middleware()
