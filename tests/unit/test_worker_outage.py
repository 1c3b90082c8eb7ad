"""A worker through an outage of its store: it beats again as soon as the store answers, and it
claims nothing before that beat (DESIGN.md §3 "Server faults").

The store is the memory store behind a switch: while `down` is set, every beat and every claim
fails as a connection to a server that went away would, after the store's own retries. The claim
itself fails, not only the next read of the poll stream: a stream already waiting when the
outage began (idle, or woken by the push made during it) must not claim through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import ConnectionLost
from apalis_cli.events import Event, HeartbeatFailed, Started, TaskFinished
from apalis_cli.memory import MemoryQueue, MemoryStore, _Row
from apalis_cli.task import Task
from apalis_cli.worker import Worker

from tests.conformance.conftest import wait_until

KEEP_ALIVE = 10.0  # far longer than the outages here: a worker that waits for it is caught


class Switched(MemoryQueue):
    """The memory store, unreachable while `down` is set; `log` records what got through."""

    def __init__(self) -> None:
        store = MemoryStore()
        plain = store.backend("jobs", codec=JsonCodec())
        super().__init__(store, plain._state, "jobs", codec=JsonCodec(), max_attempts=3)
        self.down = asyncio.Event()
        self.log: list[tuple[str, float]] = []

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        return self._beats(worker)

    async def _beats(self, worker: WorkerContext) -> AsyncIterator[None]:
        inner = super().heartbeat(worker)
        try:
            while True:
                if self.down.is_set():
                    raise ConnectionLost("the store went away")
                await anext(inner)
                self.log.append(("beat", time.monotonic()))
                yield None
                # A beat every keep_alive, or at once when the outage starts (a real beat would
                # fail at its next tick; the test need not wait for it).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(worker.keep_alive):
                        await self.down.wait()
        finally:
            await inner.aclose()  # type: ignore[attr-defined]

    def _claim(self, worker_id: str, limit: int) -> list[_Row]:
        if self.down.is_set():
            raise ConnectionLost("the store went away")
        return super()._claim(worker_id, limit)

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        return self._claims(worker)

    async def _claims(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        inner = super().poll_compact(worker)
        try:
            while True:
                if self.down.is_set():
                    raise ConnectionLost("the store went away")
                task = await anext(inner)
                if task is not None:
                    self.log.append(("claim", time.monotonic()))
                yield task
        finally:
            await inner.aclose()  # type: ignore[attr-defined]


async def noop(args: Any, task: Task[bytes]) -> Any:
    return args


def worker_on(queue: Switched) -> tuple[Worker, list[Event]]:
    events: list[Event] = []
    worker = Worker(
        name="w", backend=queue, handler=noop, keep_alive=KEEP_ALIVE, poll_interval=0.02, on_event=[events.append]
    )
    return worker, events


async def test_a_worker_started_while_its_store_is_down_starts_once_it_answers() -> None:
    queue = Switched()
    queue.down.set()
    await queue.push("first")
    worker, events = worker_on(queue)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: sum(isinstance(e, HeartbeatFailed) for e in events) >= 2, what="two failed beats")
        queue.down.clear()
        await wait_until(lambda: any(isinstance(e, TaskFinished) for e in events), what="the task to run")
    finally:
        stop.set()
        await running
    assert any(isinstance(e, Started) for e in events)
    failures = {e.error for e in events if isinstance(e, HeartbeatFailed)}
    assert failures == {"ConnectionLost: the store went away"}, "each retry beat again (a new stream)"


async def test_after_an_outage_the_worker_beats_at_once_and_before_it_claims() -> None:
    queue = Switched()
    worker, events = worker_on(queue)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: any(isinstance(e, Started) for e in events), what="the worker to start")
        queue.down.set()  # the store goes away: the beat and the idle poll fail
        await wait_until(lambda: any(isinstance(e, HeartbeatFailed) for e in events), what="a failed beat")
        await queue.push("during the outage")
        await asyncio.sleep(0.5)
        back = time.monotonic()
        queue.down.clear()
        await wait_until(lambda: any(isinstance(e, TaskFinished) for e in events), what="the task to run")
    finally:
        stop.set()
        await running
    after = [(what, at - back) for what, at in queue.log if at >= back]
    assert [what for what, _ in after][:2] == ["beat", "claim"], f"the worker did not beat, then claim: {after}"
    assert after[0][1] < KEEP_ALIVE / 2, f"the worker waited for its next keep_alive to beat: {after}"


class Converting(Switched):
    """The store behind a driver that turns a cancellation of its poll into an error of its own,
    as aiormq does: an RPC cancelled mid-call closes its channel, and the call raises the close's
    reason (seen as a RabbitMQ worker that went on polling after its stop, test_stalls[amqp])."""

    converting = True

    async def _claims(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        inner = super()._claims(worker)
        try:
            while True:
                try:
                    task = await anext(inner)
                except asyncio.CancelledError:
                    if not self.converting:
                        raise
                    raise ConnectionLost("the channel closed: an RPC was cancelled") from None
                yield task
        finally:
            await inner.aclose()  # type: ignore[attr-defined]


async def test_a_stop_ends_the_poll_whose_driver_turned_the_cancellation_into_an_error() -> None:
    queue = Converting()
    worker, events = worker_on(queue)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await wait_until(lambda: any(isinstance(e, Started) for e in events), what="the worker to start")
    await asyncio.sleep(0.1)  # idle: its poll waits in the store
    stop.set()
    try:
        async with asyncio.timeout(5):
            await asyncio.shield(running)
    except TimeoutError:
        queue.converting = False  # the cleanup's cancellation gets through
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        raise AssertionError("the worker polled on after its stop") from None
