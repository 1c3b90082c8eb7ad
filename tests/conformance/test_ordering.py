"""When and in what order tasks run on every store: schedules, priorities, idempotency keys."""

from __future__ import annotations

import asyncio
import time

from apalis_cli.backend import Capability

from .conftest import Calls, Harness


async def test_scheduled_task_waits_for_its_time(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE)
    backend = harness.backend()
    delay = 0.5
    pushed = time.time()
    later = await backend.push({"when": "later"}, delay=delay)
    at = await backend.push({"when": "at"}, run_at=pushed + delay)
    now = await backend.push({"when": "now"})

    worker = await harness.worker(backend, calls.handler(), concurrency=4).start()
    await harness.wait_until(lambda: len(calls.calls) >= 3, what="the scheduled tasks to run")
    await worker.stop()

    first = calls.calls[0]
    assert first.id == now, "the ready task runs while the scheduled ones wait"
    for task_id in (later, at):
        [call] = calls.of(task_id)
        assert call.at >= pushed + delay - 0.01, f"delivered {pushed + delay - call.at:.3f}s early"
        assert call.at < pushed + delay + 3.0, "delivered far too late"


async def test_scheduled_task_is_not_claimed_early(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE)
    backend = harness.backend()
    await backend.push({"when": "in an hour"}, delay=3600)
    ready = await backend.push({"when": "now"})

    worker = await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: calls.calls, what="the ready task to run")
    await asyncio.sleep(0.3)  # several idle polls
    await worker.stop()

    assert calls.ids() == [ready]


async def test_higher_priority_runs_first(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.PRIORITY)
    backend = harness.backend()
    pushed = {await backend.push({"p": p}, priority=p): p for p in [0, 5, 1, 9, -3, 3, 7]}

    worker = await harness.worker(backend, calls.handler(), concurrency=1).start()
    await harness.wait_until(lambda: len(calls.calls) >= len(pushed), what="every task to run")
    await worker.stop()

    assert [pushed[task_id] for task_id in calls.ids()] == [9, 7, 5, 3, 1, 0, -3]


async def test_same_priority_runs_in_run_at_order(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.PRIORITY, Capability.SCHEDULE)
    backend = harness.backend()
    now = time.time()
    # Pushed out of order: run_at, not the push order, decides among equal priorities.
    middle = await backend.push({"n": 2}, run_at=now - 2)
    last = await backend.push({"n": 3}, run_at=now - 1)
    first = await backend.push({"n": 1}, run_at=now - 3)
    urgent = await backend.push({"n": 0}, run_at=now - 0.5, priority=1)

    worker = await harness.worker(backend, calls.handler(), concurrency=1).start()
    await harness.wait_until(lambda: len(calls.calls) >= 4, what="every task to run")
    await worker.stop()

    assert calls.ids() == [urgent, first, middle, last]


async def test_same_idempotency_key_makes_one_task(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.IDEMPOTENCY)
    backend = harness.backend()
    first = await backend.push({"order": 1, "copy": "first"}, idempotency_key="order-1")
    again = await backend.push({"order": 1, "copy": "second"}, idempotency_key="order-1")
    other = await backend.push({"order": 2}, idempotency_key="order-2")
    assert again == first
    assert other != first

    worker = await harness.worker(backend, calls.handler(), concurrency=2).start()
    await harness.wait_until(lambda: len(calls.calls) >= 2, what="both distinct tasks to run")
    await asyncio.sleep(0.3)  # a duplicate would have been claimed by now
    await worker.stop()

    assert sorted(calls.ids()) == sorted([first, other])
    assert calls.of(first)[0].args == {"order": 1, "copy": "first"}, "the first push wins"
