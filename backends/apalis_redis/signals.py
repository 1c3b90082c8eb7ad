"""This process's ears on a store's control channel (`<namespace>:ctl:<queue>` for redis): the
workers heartbeating here are told of the cancels requested of their runs, and waiters are woken
when their task ends.

Messages (published by the scripts, see lua/control.lua): `c` + MessagePack `[id, reason,
lock_by]` for a cancel requested of a running task, `f` + id for a task that ended while
someone waited for it. A message lost to a dropped connection costs a heartbeat (the beat
answers the cancels requested of the worker's runs) or a waiter's periodic read, never the
outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
from apalis_cli.backend import WorkerContext

__all__ = ["ControlSignals"]


class ControlSignals:
    """Workers to tell of cancels, waiters to wake; fed by the store's pub/sub listener."""

    def __init__(self) -> None:
        self._workers: dict[str, WorkerContext] = {}
        self._waiting: dict[tuple[str, str], set[asyncio.Event]] = {}

    def register(self, worker: WorkerContext) -> None:
        """Tell `worker` of cancels of its runs from now on (until `forget`)."""
        self._workers[worker.id] = worker

    def forget(self, worker_id: str) -> None:
        """Stop telling this worker."""
        self._workers.pop(worker_id, None)

    def tell(self, task_id: str, reason: str, lock_by: str | None) -> None:
        """A cancel was requested of `task_id`, run by `lock_by`: tell it, if it works here."""
        worker = self._workers.get(lock_by or "")
        if worker is not None:
            worker.on_cancel(task_id, reason)

    @contextmanager
    def waiting(self, queue: str, task_id: str) -> Iterator[asyncio.Event]:
        """An event set when `task_id` of `queue` may have ended, for as long as the block runs."""
        event = asyncio.Event()
        events = self._waiting.setdefault((queue, task_id), set())
        events.add(event)
        try:
            yield event
        finally:
            events.discard(event)
            if not events:
                self._waiting.pop((queue, task_id), None)

    def heard(self, queue: str, data: bytes) -> None:
        """A message on `queue`'s control channel."""
        kind, body = data[:1], data[1:]
        if kind == b"c":
            task_id, reason, lock_by = msgpack.unpackb(body, raw=False)
            self.tell(task_id, reason, lock_by)
        elif kind == b"f":
            for event in self._waiting.get((queue, body.decode()), ()):
                event.set()

    def missed(self) -> None:
        """Messages may have been lost (the listener reconnected): every waiter reads again."""
        for events in self._waiting.values():
            for event in events:
                event.set()
