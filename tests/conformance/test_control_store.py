"""The store's side of cancel and pause, driven by hand as a worker would drive it: how a worker
hears of a cancel (its heartbeat at least), what the acknowledgement of a run with a cancel
requested writes, what becomes of such a run whose worker vanished, and a paused queue's claim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from apalis_cli.backend import Capability, WorkerContext
from apalis_cli.control import CancelState
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task

from .conftest import Backend, Calls, Harness
from .controls import assert_cancelled, canceller, pausable, status_of

REASON = "the order was withdrawn"


class HandWorker:
    """A worker driven by hand: registered by its heartbeat, claiming with its own stream, told
    of cancels into `told`."""

    def __init__(self, backend: Backend, *, stale_after: float = 30.0) -> None:
        self.backend = backend
        self.told: list[tuple[str, str]] = []
        self.running: set[str] = set()
        self.context = WorkerContext(
            id=f"hand-{time.monotonic_ns()}",
            name="hand",
            queue=backend.get_queue(),
            keep_alive=0.2,
            stale_after=stale_after,
            poll_interval=0.05,
            free_slots=lambda: 1,
            running=lambda: self.running,
            on_cancel=lambda task_id, reason: self.told.append((task_id, reason)),
        )
        self.beats: AsyncIterator[None] = backend.heartbeat(self.context)

    async def claim(self) -> Task[bytes]:
        """Register, then claim one task (as a worker's poll stream does)."""
        await anext(self.beats)
        stream = self.backend.poll_compact(self.context)
        try:
            async with asyncio.timeout(10):
                task = await anext(stream)
                while task is None:
                    task = await anext(stream)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        self.running.add(task.id)
        return task

    async def ack(self, task: Task[bytes], outcome: Outcome) -> None:
        """The run of `task` ends with `outcome`, acknowledged through the store's own layer."""

        async def run(_: Task[Any]) -> Outcome:
            return outcome

        await self.backend.middleware()(run)(task)
        self.running.discard(task.id)

    async def close(self) -> None:
        await self.beats.aclose()  # type: ignore[attr-defined]


async def _running_and_cancelled(harness: Harness) -> tuple[Backend, HandWorker, Task[bytes]]:
    backend = harness.backend(max_attempts=3)
    await backend.push({"n": 1})
    worker = HandWorker(backend)
    task = await worker.claim()
    result = await canceller(harness, backend).cancel(task.id, REASON)
    assert result.state is CancelState.REQUESTED
    return backend, worker, task


async def test_a_worker_hears_of_a_cancel_of_its_run_by_its_heartbeat_at_least(harness: Harness) -> None:
    """Through the store's push path at once, or with the answer to its next heartbeat: either
    way within a few heartbeats, whatever the store."""
    harness.require(Capability.CANCEL)
    backend, worker, task = await _running_and_cancelled(harness)
    try:
        for _ in range(5):
            if worker.told:
                break
            async with asyncio.timeout(10):
                await anext(worker.beats)
        assert (task.id, REASON) in worker.told

        await worker.ack(task, Outcome.cancel(REASON))

        await assert_cancelled(harness, backend, task.id, REASON)
    finally:
        await worker.close()


async def test_a_run_that_would_be_retried_after_a_cancel_request_ends_cancelled(
    harness: Harness, calls: Calls
) -> None:
    """Its run failed before the cancel reached it: a cancelled task never runs again."""
    harness.require(Capability.CANCEL)
    backend, worker, task = await _running_and_cancelled(harness)
    try:
        await worker.ack(task, Outcome.retry("ConnectionError: reset", time.time()))
    finally:
        await worker.close()

    await assert_cancelled(harness, backend, task.id, REASON)
    await harness.worker(backend, calls.handler()).start()
    await asyncio.sleep(0.5)
    assert calls.ids() == []


async def test_a_run_released_after_a_cancel_request_ends_cancelled(harness: Harness, calls: Calls) -> None:
    """Its worker was stopping and handed the task back: it is not made pending again."""
    harness.require(Capability.CANCEL)
    backend, worker, task = await _running_and_cancelled(harness)
    try:
        await worker.ack(task, Outcome.release())
    finally:
        await worker.close()

    await assert_cancelled(harness, backend, task.id, REASON)
    await harness.worker(backend, calls.handler()).start()
    await asyncio.sleep(0.5)
    assert calls.ids() == []


async def test_a_run_that_finished_before_the_cancel_reached_it_keeps_its_outcome(harness: Harness) -> None:
    harness.require(Capability.CANCEL)
    backend, worker, task = await _running_and_cancelled(harness)
    try:
        await worker.ack(task, Outcome.done({"sent": True}))
    finally:
        await worker.close()

    assert await status_of(harness, backend, task.id) in (Status.DONE, None)


async def test_a_cancel_requested_of_a_vanished_workers_run_ends_cancelled(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.CANCEL, Capability.ORPHANS)
    backend = harness.backend(max_attempts=3)
    await backend.push({"n": 1})
    ghost = HandWorker(backend, stale_after=0.3)
    task = await ghost.claim()
    await ghost.close()  # it vanishes: no more heartbeats, no acknowledgement
    answer = await canceller(harness, backend).cancel(task.id, REASON)
    if harness.store.capabilities.has(Capability.INSPECT):
        assert answer.state is CancelState.REQUESTED
    else:  # a broker cannot tell a vanished worker's run from one waiting for its redelivery
        assert answer.state in (CancelState.REQUESTED, CancelState.CANCELLED)

    rescuer = harness.worker(backend, calls.handler(), name="rescuer", keep_alive=0.1, stale_after=0.5)
    await rescuer.start()

    await assert_cancelled(harness, backend, task.id, REASON)
    await asyncio.sleep(0.3)
    assert calls.ids() == [], "the orphan sweep gave a cancelled task to another worker"


async def test_a_paused_queues_claim_hands_out_nothing(harness: Harness) -> None:
    """Checked in the claim itself: a worker that has not heard of the pause gets nothing."""
    harness.require(Capability.PAUSE)
    backend = harness.backend()
    control = pausable(harness, backend)
    await control.pause()
    task_id = await backend.push({"n": 1})
    worker = HandWorker(backend)
    await anext(worker.beats)
    stream = backend.poll_compact(worker.context)
    try:
        async with asyncio.timeout(10):
            first = await anext(stream)
        assert first is None, "a paused queue handed out a task"

        await control.resume()

        async with asyncio.timeout(10):
            task = await anext(stream)
            while task is None:
                task = await anext(stream)
        assert task.id == task_id
        await worker.ack(task, Outcome.done())
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await worker.close()
