"""Workers against every store: concurrency, several workers, heartbeats, stops, lost connections."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.task import Task

from .conftest import Calls, Harness


async def test_concurrency_is_reached_and_never_exceeded(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    in_flight = peak = 0

    async def busy(args: Any, task: Task[bytes]) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02)
        finally:
            in_flight -= 1

    await backend.push_bulk(range(40))
    worker = await harness.worker(backend, calls.handler(busy), concurrency=4).start()
    await harness.wait_until(lambda: len(calls.finished) >= 40, what="40 tasks to finish")
    await worker.stop()

    assert peak == 4


async def test_two_workers_run_a_thousand_tasks_exactly_once(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()

    async def tiny(args: Any, task: Task[bytes]) -> Any:
        await asyncio.sleep(0.001)  # long enough that one worker's slots fill up
        return args

    a = harness.worker(backend, calls.handler(tiny, worker="a"), name="a", concurrency=10)
    b = harness.worker(harness.backend(), calls.handler(tiny, worker="b"), name="b", concurrency=10)
    await a.start()
    await b.start()
    ids = await backend.push_bulk(range(1000))
    await harness.wait_until(lambda: len(calls.finished) >= 1000, within=60, what="1,000 tasks to finish")
    await asyncio.sleep(0.2)  # a duplicate delivery would show now
    await a.stop()
    await b.stop()

    runs = Counter(call.id for call in calls.calls)
    assert set(runs) == set(ids)
    assert [task_id for task_id, n in runs.items() if n != 1] == []
    assert sorted(call.args for call in calls.calls) == list(range(1000))
    per_worker = Counter(call.worker for call in calls.calls)
    assert per_worker["a"] > 0, f"worker a ran nothing: {per_worker}"
    assert per_worker["b"] > 0, f"worker b ran nothing: {per_worker}"


async def test_heartbeats_advance_and_farewell_unregisters(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.WORKERS)
    backend = harness.backend()
    inspector = harness.inspector(backend)
    worker = await harness.worker(backend, calls.handler(), name="beater", keep_alive=0.1).start()

    [info] = [w for w in await inspector.workers() if w.id == worker.id]
    assert info.name == "beater"
    assert info.queue == harness.queue
    assert info.pid == worker.worker.context.pid
    first_seen = info.last_seen

    async def last_seen() -> float:
        return next(w.last_seen for w in await inspector.workers() if w.id == worker.id)

    seen = first_seen
    for _ in range(100):
        await asyncio.sleep(0.05)
        seen = await last_seen()
        if seen > first_seen:
            break
    assert seen > first_seen, "last_seen did not advance with keep_alive = 0.1s"

    await worker.stop()
    assert worker.id not in {w.id for w in await inspector.workers()}, "a stopped worker says goodbye"


async def test_graceful_stop_finishes_running_tasks(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()

    async def slow(args: Any, task: Task[bytes]) -> Any:
        await asyncio.sleep(0.3)
        return "finished"

    ids = await backend.push_bulk(range(2))
    worker = await harness.worker(backend, calls.handler(slow), concurrency=2, shutdown_timeout=10).start()
    await harness.wait_until(lambda: len(calls.calls) == 2, what="both tasks to start")
    await worker.stop()

    assert sorted(calls.finished_ids()) == sorted(ids), "running tasks finish within shutdown_timeout"
    stopped = worker.stopped()
    assert stopped is not None
    assert stopped.released == 0


async def test_stop_past_the_shutdown_timeout_loses_nothing(harness: Harness, calls: Calls) -> None:
    backend = harness.backend(max_attempts=3)
    slow = True

    async def maybe_slow(args: Any, task: Task[bytes]) -> Any:
        if slow:
            await asyncio.sleep(30)
        return args

    ids = await backend.push_bulk(range(12))
    first = await harness.worker(backend, calls.handler(maybe_slow), concurrency=4, shutdown_timeout=0.1).start()
    await harness.wait_until(lambda: len(calls.calls) >= 4, what="4 slow tasks to start")
    await first.stop()

    interrupted = {call.id for call in calls.calls}
    stopped = first.stopped()
    assert stopped is not None
    assert stopped.released == 4
    assert {e.task_id for e in first.finished("release")} == interrupted

    slow = False
    second = await harness.worker(backend, calls.handler(maybe_slow), concurrency=4).start()
    await harness.wait_until(lambda: len(calls.finished) >= 12, what="every task to finish after the restart")
    await asyncio.sleep(0.2)  # a duplicate would show now
    await second.stop()

    assert Counter(calls.finished_ids()) == Counter(ids), "each task finished exactly once"
    if harness.store.capabilities.has(Capability.MAX_ATTEMPTS):
        reruns = [c for c in calls.finished if c.id in interrupted]
        assert [c.attempts for c in reruns] == [1] * 4, "a released run does not count as an attempt"


async def test_survives_dropped_connections(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.RECONNECT)
    backend = harness.backend(max_attempts=5)

    async def steady(args: Any, task: Task[bytes]) -> Any:
        await asyncio.sleep(0.01)
        return args

    ids = await backend.push_bulk(range(20))
    worker = await harness.worker(backend, calls.handler(steady), concurrency=2).start()
    await harness.wait_until(lambda: len(calls.finished) >= 5, what="some tasks to finish")

    await harness.factory.drop_connections(harness.store)
    ids += await backend.push_bulk(range(20, 40))  # a producer on a dropped connection recovers too
    await harness.wait_until(lambda: set(calls.finished_ids()) >= set(ids), within=30, what="every task to finish")
    await worker.stop()

    assert sorted({c.args for c in calls.finished}) == list(range(40))


async def test_a_busy_worker_does_not_hoard_tasks(harness: Harness, calls: Calls) -> None:
    # Backpressure: a worker claims only what it has free slots for, so a second worker gets
    # the rest while the first is busy.
    backend = harness.backend()
    release = asyncio.Event()

    async def held(args: Any, task: Task[bytes]) -> Any:
        await release.wait()
        return args

    ids = await backend.push_bulk(range(5))
    busy = await harness.worker(backend, calls.handler(held, worker="busy"), name="busy").start()
    await harness.wait_until(lambda: calls.calls, what="the busy worker to take one task")
    other = harness.worker(harness.backend(), calls.handler(worker="other"), name="other", concurrency=2)
    await other.start()
    try:
        await harness.wait_until(lambda: len(calls.finished) >= 4, what="the other worker to run the other four")
    finally:
        release.set()
    await harness.wait_until(lambda: len(calls.finished) >= 5, what="the held task to finish")
    await other.stop()
    await busy.stop()

    assert sorted(c.id for c in calls.finished) == sorted(ids)
    assert [c.worker for c in calls.calls].count("busy") == 1
