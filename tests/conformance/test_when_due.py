"""When tasks run once they are due, on every store: never early, bulk pushes first in first out,
and priorities kept by tasks that waited (scheduled ones and retries)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.errors import Retry
from apalis_cli.layers.retry import Backoff
from apalis_cli.task import Task

from .conftest import Calls, Harness

# Just above a round number of seconds: a store that rounds a delay to the nearest (or a lower)
# step, say to 1 s or to two significant digits, runs such a task early by tens of ms.
AWKWARD_DELAY = 1.04
EARLY_TOLERANCE = 0.005  # the clocks of the test and of the store's timer, not a rounding step


async def test_a_delayed_task_never_runs_early(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE)
    backend = harness.backend()
    worker = await harness.worker(backend, calls.handler(), concurrency=4).start()
    due = {}
    for delay in (AWKWARD_DELAY, 0.234, 1.5):
        due[await backend.push({"delay": delay}, delay=delay)] = time.time() + delay
    await harness.wait_until(lambda: len(calls.calls) >= len(due), what="the delayed tasks to run")
    await worker.stop()

    for task_id, at in due.items():
        [call] = calls.of(task_id)
        assert call.at >= at - EARLY_TOLERANCE, f"a task due in {call.args['delay']}s ran {at - call.at:.3f}s early"


async def test_a_retry_never_runs_before_its_backoff(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE)
    backend = harness.backend(max_attempts=2)
    failed_at: dict[str, float] = {}

    async def fail_once(args: Any, task: Task[bytes]) -> Any:
        if task.id not in failed_at:
            failed_at[task.id] = time.time()
            if args["how"] == "asks":
                raise Retry(AWKWARD_DELAY, "come back later")
            raise ConnectionError("flaky")
        return "ok"

    worker = harness.worker(
        backend,
        calls.handler(fail_once),
        concurrency=2,
        backoff=Backoff(kind="constant", base=AWKWARD_DELAY, jitter=False),
    )
    await worker.start()
    ids = [await backend.push({"how": how}) for how in ("backoff", "asks")]
    await harness.wait_until(lambda: len(worker.finished("done")) >= 2, what="both retries to run")
    await worker.stop()

    for task_id in ids:
        first, second = calls.of(task_id)
        waited = second.at - failed_at[task_id]
        assert waited >= AWKWARD_DELAY - EARLY_TOLERANCE, f"{first.args['how']}: retried after {waited:.3f}s"


async def test_a_bulk_push_runs_first_in_first_out(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    ids = await backend.push_bulk({"n": n} for n in range(200))
    worker = await harness.worker(backend, calls.handler(), concurrency=1).start()
    await harness.wait_until(lambda: len(calls.calls) >= len(ids), what="every bulk-pushed task to run")
    await worker.stop()

    assert calls.ids() == ids, "tasks pushed together run in the order they were pushed"


async def test_a_bulk_push_due_at_one_time_runs_first_in_first_out(harness: Harness, calls: Calls) -> None:
    # `apalis push --file tasks.jsonl --at T`: every task has the same run_at, so only the order
    # of the push can decide (task ids are random within a millisecond).
    harness.require(Capability.SCHEDULE)
    backend = harness.backend()
    at = time.time() + 0.3
    ids = await backend.push_bulk(({"n": n} for n in range(200)), run_at=at)
    await asyncio.sleep(max(0.0, at - time.time()) + 0.1)
    worker = await harness.worker(backend, calls.handler(), concurrency=1).start()
    await harness.wait_until(lambda: len(calls.calls) >= len(ids), what="every bulk-pushed task to run")
    await worker.stop()

    assert [call.args["n"] for call in calls.calls] == list(range(200))


async def test_bulk_pushes_run_in_push_order(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    ids = []
    for batch in range(5):
        ids += await backend.push_bulk({"batch": batch, "n": n} for n in range(20))
        ids.append(await backend.push({"batch": batch, "single": True}))
    worker = await harness.worker(backend, calls.handler(), concurrency=1).start()
    await harness.wait_until(lambda: len(calls.calls) >= len(ids), what="every task to run")
    await worker.stop()

    assert calls.ids() == ids


async def test_scheduled_tasks_run_by_priority_once_due(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE, Capability.PRIORITY)
    backend = harness.backend()
    now = time.time()
    # The lower the priority, the earlier the task is due: by the time the worker starts all are
    # due, and priority, not the due time, decides.
    pushed = {}
    for rank, priority in enumerate([-2, 0, 3, 5, 9]):
        pushed[await backend.push({"p": priority}, run_at=now + 0.3 + rank * 0.05, priority=priority)] = priority
    pushed[await backend.push({"p": 1}, priority=1)] = 1  # due at once, pushed last
    await asyncio.sleep(max(0.0, now + 0.6 - time.time()) + 0.2)

    worker = await harness.worker(backend, calls.handler(), concurrency=1).start()
    await harness.wait_until(lambda: len(calls.calls) >= len(pushed), what="every task to run")
    await worker.stop()

    assert [pushed[task_id] for task_id in calls.ids()] == [9, 5, 3, 1, 0, -2]


async def test_retried_tasks_run_by_priority_once_due(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE, Capability.PRIORITY)
    backend = harness.backend(max_attempts=2)
    priorities = [0, 7, -1, 4, 2]

    async def fail_first(args: Any, task: Task[bytes]) -> Any:
        if task.ctx.attempts == 1:
            # The higher the priority, the later the retry is due: once all are due, priority
            # alone must decide, not the due time.
            raise Retry(0.1 + 0.05 * sorted(priorities).index(args["p"]), "flaky")
        return "ok"

    pushed = {await backend.push({"p": p}, priority=p): p for p in priorities}
    first = harness.worker(backend, calls.handler(fail_first), name="first")
    await first.start()
    await harness.wait_until(lambda: len(first.finished("retry")) >= len(pushed), what="every first run to fail")
    await first.stop()
    await asyncio.sleep(0.5)  # every retry is due now

    second = await harness.worker(backend, calls.handler(fail_first), name="second").start()
    await harness.wait_until(lambda: len(second.finished("done")) >= len(pushed), what="every retry to run")
    await second.stop()

    retried = [pushed[call.id] for call in calls.calls if call.attempts == 2]
    assert retried == sorted(priorities, reverse=True)
