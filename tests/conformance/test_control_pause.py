"""Pause and resume, on every store that offers it: the state is the store's, so every worker
obeys it and it outlives the store's connections; pushes are accepted and running tasks finish."""

from __future__ import annotations

import asyncio
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.task import Task

from .conftest import Calls, Harness
from .controls import pausable


async def test_a_paused_queue_is_obeyed_by_every_worker(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.PAUSE)
    backend = harness.backend()
    control = pausable(harness, backend)
    release = asyncio.Event()

    async def slow_first(args: Any, task: Task[bytes]) -> str:
        if args["n"] == "running":
            await release.wait()
        return "ok"

    workers = [
        await harness.worker(harness.backend(), calls.handler(slow_first, worker=name), name=name).start()
        for name in ("a", "b")
    ]
    running = await backend.push({"n": "running"})
    await harness.wait_until(lambda: calls.of(running), what="a run to start before the pause")
    assert not await control.paused()

    await control.pause()

    assert await control.paused()
    held = [await backend.push({"n": i}) for i in range(4)]  # pushes are still accepted
    release.set()
    await harness.wait_until(lambda: running in calls.finished_ids(), what="the running task to finish")
    await asyncio.sleep(0.5)  # ten poll intervals of both workers
    assert not any(calls.of(task_id) for task_id in held), "a paused queue handed out a task"

    await control.resume()

    assert not await control.paused()
    await harness.wait_until(lambda: all(calls.of(task_id) for task_id in held), what="the held tasks to run")
    assert all(w.started for w in workers)


async def test_a_pause_outlives_a_reopened_store(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.PAUSE)
    await pausable(harness, harness.backend()).pause()
    original = harness.store

    reopened = await harness.factory.reopen(original)
    try:
        harness.store = reopened
        backend = harness.backend()
        control = pausable(harness, backend)
        assert await control.paused(), "the pause was lost when the store was opened again"
        held = await backend.push({"n": 1})
        await harness.worker(backend, calls.handler()).start()
        await asyncio.sleep(0.5)
        assert calls.ids() == []

        await control.resume()

        await harness.wait_until(lambda: calls.ids() == [held], what="the task to run once resumed")
    finally:
        await harness.stop_all()
        harness.workers.clear()
        harness.store = original
        if reopened is not original:
            await reopened.close()
