"""Burst mode on every store: a worker run with `burst=True` drains what is ready, then returns.

`apalis run --burst` is how a cron job or a CI step empties a queue. A store that answers its
first poll with "idle" before the broker delivered what it holds makes a burst run return having
run nothing, with the queue untouched and exit code 0: the worst kind of silent failure.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.task import Task

from .conftest import Calls, Harness

_RETURNS_WITHIN = 30.0
"""A generous bound that proves a burst run did not hang; not a speed target."""


async def test_burst_runs_every_ready_task_once_then_returns(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    ids = await backend.push_bulk([{"n": n} for n in range(25)])

    async def brief(args: Any, task: Task[bytes]) -> Any:
        await asyncio.sleep(0.005)
        return args

    worker = harness.worker(backend, calls.handler(brief), concurrency=4)
    await worker.start(burst=True)
    assert worker.task is not None
    async with asyncio.timeout(_RETURNS_WITHIN):
        await worker.task  # returned by itself: nothing is left, nothing runs

    runs = Counter(calls.finished_ids())
    assert set(runs) == set(ids), f"{len(set(ids) - set(runs))} of {len(ids)} ready tasks never ran"
    assert [task_id for task_id, n in runs.items() if n != 1] == []
    assert worker.stopped() is not None
    assert worker.stopped().released == 0  # type: ignore[union-attr]


async def test_burst_with_one_slot_drains_tasks_pushed_one_by_one(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    ids = [await backend.push(n) for n in range(5)]

    worker = harness.worker(backend, calls.handler(), concurrency=1)
    await worker.start(burst=True)
    assert worker.task is not None
    async with asyncio.timeout(_RETURNS_WITHIN):
        await worker.task

    assert sorted(calls.finished_ids()) == sorted(ids)


async def test_burst_on_an_empty_queue_returns(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    worker = harness.worker(backend, calls.handler())
    await worker.start(burst=True)
    assert worker.task is not None
    async with asyncio.timeout(_RETURNS_WITHIN):
        await worker.task
    assert calls.calls == []


async def test_burst_leaves_a_scheduled_task_for_later(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE)
    backend = harness.backend()
    now = await backend.push("now")
    await backend.push("tomorrow", delay=86400)

    worker = harness.worker(backend, calls.handler())
    await worker.start(burst=True)
    assert worker.task is not None
    async with asyncio.timeout(_RETURNS_WITHIN):
        await worker.task

    assert calls.finished_ids() == [now]
