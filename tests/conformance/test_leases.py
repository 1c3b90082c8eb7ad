"""Leases on every store: a worker whose lease lapsed cannot settle a task another worker holds.

A worker can lose its lease and live on (a long pause, a partition): its tasks are recovered and
taken by another worker meanwhile. When it comes back and acknowledges its stale copy, whatever
the outcome, the store must leave the task to the worker that holds it now: not finish it under
the holder, not hand it out a second time, not kill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from enum import Enum
from typing import Any

import pytest
from apalis_cli.backend import Capability, Inspector
from apalis_cli.errors import Unsupported
from apalis_cli.service import Outcome
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task

from .conftest import Backend, Calls, Harness
from .test_orphans import claim_and_vanish

STALE_OUTCOMES = {
    "done": lambda: Outcome.done("from the lapsed worker"),
    "retry": lambda: Outcome.retry("from the lapsed worker", time.time()),
    "kill": lambda: Outcome.kill("from the lapsed worker"),
    "release": Outcome.release,
}


@pytest.mark.parametrize("stale", sorted(STALE_OUTCOMES))
async def test_a_lapsed_lease_cannot_settle_the_task_another_worker_holds(
    harness: Harness, calls: Calls, stale: str
) -> None:
    harness.require(Capability.ORPHANS)
    lapsed = harness.backend(max_attempts=3)  # the lapsed worker's own connection to the queue
    task_id = await lapsed.push({"job": "long"})
    heartbeat, [stale_copy] = await claim_and_vanish(lapsed, 1)
    release = asyncio.Event()

    async def held(args: Any, task: Task[bytes]) -> Any:
        await release.wait()
        return "from the holder"

    try:
        # Two slots: a task wrongly handed out again while the holder runs it would start here.
        holder = harness.worker(
            harness.backend(max_attempts=3),
            calls.handler(held, worker="holder"),
            name="holder",
            concurrency=2,
            keep_alive=0.1,
            stale_after=0.3,
        )
        await holder.start()
        await harness.wait_until(lambda: calls.calls, what="the holder to take the lapsed worker's task")

        outcome = STALE_OUTCOMES[stale]()

        async def settle(task: Task[Any]) -> Outcome:
            return outcome

        await lapsed.middleware()(settle)(stale_copy)  # the lapsed worker's acknowledgement
        await asyncio.sleep(0.5)  # a task wrongly put back would be claimed again by now
        assert [c.worker for c in calls.calls] == ["holder"], "the task ran again while its holder runs it"
        now = await peek(lapsed, task_id)
        if now is not UNKNOWN:
            assert now is not None, "the task is gone while its holder runs it"
            assert now.ctx.status is Status.RUNNING
            # Brokers' partial views and leases without an owner (pgmq) name no holder.
            if all(harness.store.capabilities.has(c) for c in (Capability.INSPECT, Capability.OWNED_LEASES)):
                assert now.ctx.lock_by == holder.id, "the task is still locked by its holder"

        release.set()
        await harness.wait_until(lambda: holder.finished(), what="the holder to finish the task")
        await asyncio.sleep(0.3)  # a copy left behind by the stale acknowledgement would run now
        await holder.stop()
    finally:
        release.set()
        await heartbeat.aclose()  # type: ignore[attr-defined]

    assert [c.worker for c in calls.calls] == ["holder"]
    assert [(e.task_id, e.outcome) for e in holder.finished()] == [(task_id, "done")]
    final = await peek(lapsed, task_id)
    if harness.store.capabilities.has(Capability.INSPECT):
        assert final is not None
        assert final is not UNKNOWN
        assert final.ctx.status is Status.DONE
        if harness.store.capabilities.has(Capability.RESULTS):
            assert final.ctx.result == encode_result("from the holder")
    else:  # a store that forgets done tasks may not find it, but must not find it killed
        assert final is None or final is UNKNOWN or final.ctx.status is Status.DONE
    if isinstance(lapsed, Inspector):
        with contextlib.suppress(Unsupported):
            killed = await lapsed.list_tasks(Status.KILLED, 10)
            assert task_id not in [t.id for t in killed], "the task was killed by the lapsed worker"


class Unknown(Enum):
    """What `peek` returns where the store cannot look a task up by id."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


async def peek(backend: Backend, task_id: str) -> Task[bytes] | Unknown | None:
    """The task as the store has it now, or `UNKNOWN`: stores that lack INSPECT for some
    statuses (brokers) may still find a running task by id."""
    if not isinstance(backend, Inspector):
        return UNKNOWN
    try:
        return await backend.get(task_id)
    except Unsupported:
        return UNKNOWN
