"""Wait for a task's end, on every store that offers it: woken when the task is done, killed or
cancelled (by the store's push path where it has one), None on timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.errors import Abort
from apalis_cli.task import Status, Task

from .conftest import Calls, Harness, wait_until
from .controls import canceller, waiter


async def test_wait_returns_a_done_task_with_its_result(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.WAIT)
    backend = harness.backend()
    task_id = await backend.push({"n": 2})

    async def double(args: Any, task: Task[bytes]) -> int:
        await asyncio.sleep(0.2)
        return int(args["n"]) * 2

    waiting = asyncio.ensure_future(waiter(harness, backend).wait(task_id, timeout=10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await harness.worker(backend, calls.handler(double)).start()

    task = await waiting

    assert task is not None
    assert task.id == task_id
    assert task.ctx.status is Status.DONE
    if harness.store.capabilities.has(Capability.RESULTS):
        assert task.ctx.result in (4, "4")


async def test_a_push_marked_waited_keeps_its_end_for_a_wait_that_starts_late(harness: Harness, calls: Calls) -> None:
    # `push(wait=True)` and `push --wait` push, then register their wait: a worker faster than
    # that registration must not leave them without the result (rsmq deletes a done message).
    harness.require(Capability.WAIT)
    backend = harness.backend()
    task_id = await backend.push({"n": 5}, waited=True)

    async def double(args: Any, task: Task[bytes]) -> int:
        return int(args["n"]) * 2

    worker = await harness.worker(backend, calls.handler(double)).start()
    await wait_until(lambda: bool(worker.finished()), 10, "the run")
    await worker.stop()  # its acknowledgement written before the wait begins
    task = await waiter(harness, backend).wait(task_id, timeout=10)

    assert task is not None
    assert task.ctx.status is Status.DONE
    # rsmq keeps no results, but for a task someone waits for (its RESULTS reason says so).
    if harness.store.capabilities.has(Capability.RESULTS) or harness.kind == "rsmq":
        assert task.ctx.result in (10, "10")


async def test_wait_is_woken_soon_after_the_run_ends(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.WAIT)
    backend = harness.backend()
    await harness.worker(backend, calls.handler()).start()
    task_id = await backend.push({"n": 1})

    task = await waiter(harness, backend).wait(task_id, timeout=30)
    ended = time.time()

    assert task is not None
    assert task.ctx.status is Status.DONE
    # Woken by the run's end, not by its timeout running out. How soon is a figure for
    # `python -m bench --control`, not for a test: a loaded machine (CI) took over 1 s on AMQP.
    assert ended - calls.of(task_id)[0].at < 5.0


async def test_wait_returns_a_killed_task(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.WAIT)
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"n": 1})

    async def refuse(args: Any, task: Task[bytes]) -> None:
        raise Abort("no such account")

    await harness.worker(backend, calls.handler(refuse)).start()
    task = await waiter(harness, backend).wait(task_id, timeout=10)

    assert task is not None
    assert task.ctx.status is Status.KILLED
    assert "no such account" in (task.ctx.last_error or "")


async def test_wait_returns_a_cancelled_task(harness: Harness) -> None:
    harness.require(Capability.WAIT, Capability.CANCEL)
    backend = harness.backend()
    task_id = await backend.push({"n": 1}, delay=30)
    waiting = asyncio.ensure_future(waiter(harness, backend).wait(task_id, timeout=10))
    await asyncio.sleep(0.05)

    await canceller(harness, backend).cancel(task_id, "not needed")

    task = await waiting
    assert task is not None
    assert task.ctx.status is Status.CANCELLED
    assert task.ctx.last_error == "not needed"


async def test_wait_gives_up_at_its_timeout_and_the_task_goes_on(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.WAIT)
    backend = harness.backend()
    task_id = await backend.push({"n": 1})  # no worker yet: it waits
    wait = waiter(harness, backend)

    begun = time.monotonic()
    assert await wait.wait(task_id, timeout=0.3) is None
    assert 0.25 <= time.monotonic() - begun < 2.0

    await harness.worker(backend, calls.handler()).start()
    task = await wait.wait(task_id, timeout=10)
    assert task is not None
    assert task.ctx.status is Status.DONE
    again = await wait.wait(task_id, timeout=0)  # a final task is answered, whatever the timeout
    assert again is not None
    assert again.ctx.status is Status.DONE
