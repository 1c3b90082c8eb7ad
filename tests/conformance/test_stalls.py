"""Stalls of a whole process on every store that recovers orphans: its live workers keep their tasks.

When a process's event loop is blocked (a handler that calls `time.sleep`, a CPU starved by its
neighbours) every worker in it stops beating at once. Once the loop runs again, the first of them
to beat sees its neighbours' last heartbeats older than `stale_after`, though they are as alive as
it is: it must not sweep their running tasks as orphans, or those tasks run twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from apalis_cli.backend import Capability
from apalis_cli.task import Task

from .conftest import Calls, Harness

STALL = 1.0  # longer than stale_after (0.6: three beats of 0.2)
STALLS = 4


async def test_a_stalled_process_runs_each_task_once(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.ORPHANS)
    if harness.factory.stall_redelivers is not None:
        pytest.skip(harness.factory.stall_redelivers)
    backend = harness.backend(max_attempts=3)

    async def short(args: Any, task: Task[bytes]) -> Any:
        await asyncio.sleep(0.05)  # both workers' slots stay busy across each stall
        return args

    a = harness.worker(backend, calls.handler(short, worker="a"), name="a", concurrency=5)
    b = harness.worker(harness.backend(max_attempts=3), calls.handler(short, worker="b"), name="b", concurrency=5)
    await a.start()
    await b.start()
    ids = await backend.push_bulk(range(600))
    await asyncio.sleep(0.7)  # past stale_after since the store was opened: sweeps are allowed
    for _ in range(STALLS):
        time.sleep(STALL)  # noqa: ASYNC251 - the whole process stops: no worker of it beats meanwhile
        await asyncio.sleep(0.3)  # a few turns of the loop: the workers beat (and may sweep)
    await harness.wait_until(lambda: len(calls.finished) >= len(ids), within=60, what="every task to finish")
    await asyncio.sleep(0.3)  # a second run would show now
    await a.stop()
    await b.stop()

    runs = Counter(calls.ids())
    twice = sorted((call.id, call.worker, call.attempts) for call in calls.calls if runs[call.id] > 1)
    assert twice == [], "a task ran twice: its worker's neighbour took it after a stall"
    assert runs == Counter(ids)
