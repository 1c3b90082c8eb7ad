"""Bulk actions by filter, on every store that offers them: the tasks one bad deploy killed are
retried in one request, and a dry run counts what a request would change, changing nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from apalis_cli.backend import Capability
from apalis_cli.control import DEFAULT_CANCEL_REASON, BulkAction, BulkFilter
from apalis_cli.errors import MAX_ERROR_CHARS, Abort, storable_text
from apalis_cli.task import Status, Task

from .conftest import Backend, Calls, Harness
from .controls import assert_cancelled, bulk_actor, status_of, task_of

FAILING = 5


async def _killed_and_done(harness: Harness, calls: Calls) -> tuple[list[str], list[str]]:
    """Push tasks of which the first FAILING are killed by their handler ("disk full" for even
    ones, "timeout" for odd ones) and two more are done; returns (killed ids, done ids)."""
    backend = harness.backend()
    killed = [await backend.push({"n": i, "fail": True}) for i in range(FAILING)]
    done = [await backend.push({"n": i, "fail": False}) for i in range(2)]

    async def deploy(args: Any, task: Task[bytes]) -> None:
        if args["fail"] and len(calls.of(task.id)) == 1:  # the bad deploy: only first runs fail
            raise Abort("disk full on /var" if args["n"] % 2 == 0 else "Timeout talking to the bank")

    await harness.worker(backend, calls.handler(deploy)).start()
    await harness.wait_until(lambda: len(harness.finished()) == FAILING + 2, what="every first run to end")
    return killed, done


async def test_bulk_retry_runs_every_killed_task_again(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.BULK)
    killed, done = await _killed_and_done(harness, calls)
    bulk = bulk_actor(harness, harness.backend())

    assert await bulk.bulk(BulkAction.RETRY, BulkFilter(statuses=frozenset({Status.KILLED})), dry_run=True) == FAILING
    changed = await bulk.bulk(BulkAction.RETRY, BulkFilter(statuses=frozenset({Status.KILLED})))

    assert changed == FAILING
    await harness.wait_until(lambda: len(harness.finished("done")) == FAILING + 2, what="the retried tasks to run")
    assert all(len(calls.of(task_id)) == 2 for task_id in killed)
    assert all(len(calls.of(task_id)) == 1 for task_id in done)
    for task_id in killed:
        assert await status_of(harness, harness.backend(), task_id) in (Status.DONE, None)


async def test_bulk_dry_run_counts_what_a_filter_matches_and_changes_nothing(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.BULK)
    killed, _ = await _killed_and_done(harness, calls)
    bulk = bulk_actor(harness, harness.backend())

    def count(action: BulkAction, **where: Any) -> Any:
        return bulk.bulk(action, BulkFilter(**where), dry_run=True)

    assert await count(BulkAction.RETRY) == FAILING  # killed (and cancelled) by default
    assert await count(BulkAction.RETRY, error_contains="DISK FULL") == 3  # ignoring case
    assert await count(BulkAction.RETRY, error_contains="bank") == 2
    assert await count(BulkAction.RETRY, limit=2) == 2
    assert await count(BulkAction.RETRY, statuses=frozenset({Status.DONE})) == 0  # done is not retried
    # A store that deletes done tasks (no INSPECT: rsmq) has none left to purge.
    done_kept = 2 if harness.store.capabilities.has(Capability.INSPECT) else 0
    assert await count(BulkAction.PURGE) == FAILING + done_kept  # done and killed by default
    assert await count(BulkAction.PURGE, statuses=frozenset({Status.DONE})) == done_kept
    assert await count(BulkAction.RETRY, since=time.time() + 3600) == 0
    assert await count(BulkAction.RETRY, until=time.time() - 3600) == 0
    assert await count(BulkAction.RETRY, since=time.time() - 3600, until=time.time() + 60) == FAILING
    assert await count(BulkAction.CANCEL) == 0  # nothing waits or runs

    assert calls.ids().count(killed[0]) == 1
    for task_id in killed:
        assert await status_of(harness, harness.backend(), task_id) in (Status.KILLED, None)


async def test_bulk_cancel_then_purge(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.BULK)
    backend = harness.backend()
    waiting = [await backend.push({"n": i}, delay=60) for i in range(4)]
    bulk = bulk_actor(harness, backend)

    assert await bulk.bulk(BulkAction.CANCEL, BulkFilter()) == 4

    for task_id in waiting:
        await assert_cancelled(harness, backend, task_id, DEFAULT_CANCEL_REASON)  # no reason given
    assert await bulk.bulk(BulkAction.CANCEL, BulkFilter()) == 0
    assert await bulk.bulk(BulkAction.PURGE, BulkFilter(statuses=frozenset({Status.CANCELLED}))) == 4
    assert await bulk.bulk(BulkAction.PURGE, BulkFilter(), dry_run=True) == 0


async def _one_running(harness: Harness, calls: Calls) -> tuple[Backend, str]:
    """A backend with one task running (for a minute) in a worker; the task's id."""
    harness.require(Capability.BULK)
    backend = harness.backend(max_attempts=3)
    running = await backend.push({"n": 0})

    async def long(args: Any, task: Task[bytes]) -> None:
        await asyncio.sleep(60)

    await harness.worker(backend, calls.handler(long)).start()
    await harness.wait_until(lambda: calls.of(running), what="the run to start")
    return backend, running


async def test_bulk_cancel_and_kill_keep_the_operators_reason(harness: Harness, calls: Calls) -> None:
    backend, running = await _one_running(harness, calls)
    waiting = [await backend.push({"n": n}, delay=60) for n in (1, 2)]
    bulk = bulk_actor(harness, backend)
    reason = "bad deploy 4411: wrong customer"

    assert await bulk.bulk(BulkAction.CANCEL, BulkFilter(), reason=reason) == 3

    await harness.wait_until(lambda: harness.finished("cancel"), what="the running task to end cancelled")
    assert harness.finished("cancel")[0].error == reason  # what its worker was told
    for task_id in (running, *waiting):
        await assert_cancelled(harness, backend, task_id, reason)

    # A reason is kept as a run's error is: no NUL (PostgreSQL refuses one), cut past the bound.
    unbounded = "poison\x00 batch " + "é" * MAX_ERROR_CHARS
    doomed = [await backend.push({"n": n}, delay=60) for n in (3, 4)]
    assert await bulk.bulk(BulkAction.KILL, BulkFilter(), reason=unbounded) == 2
    for task_id in doomed:
        task = await task_of(harness, backend, task_id)
        if task is not None:
            assert (task.ctx.status, task.ctx.last_error) == (Status.KILLED, storable_text(unbounded))
    assert len(calls.ids()) == 1

    for action in (BulkAction.RETRY, BulkAction.PURGE):
        with pytest.raises(ValueError, match=f"bulk {action.value} keeps no reason"):
            await bulk.bulk(action, BulkFilter(), reason="why not")
    with pytest.raises(ValueError, match="blank"):
        await bulk.bulk(BulkAction.KILL, BulkFilter(), reason=" ")


async def test_a_long_reason_reaches_the_running_tasks_worker(harness: Harness, calls: Calls) -> None:
    # PostgreSQL carries a NOTIFY of less than 8,000 bytes: 4,000 emoji are 16,000.
    backend, running = await _one_running(harness, calls)
    reason = "\U0001f6a8" * MAX_ERROR_CHARS

    assert await bulk_actor(harness, backend).bulk(BulkAction.CANCEL, BulkFilter(), reason=reason) == 1

    await harness.wait_until(lambda: harness.finished("cancel"), what="the run to end cancelled")
    told = harness.finished("cancel")[0].error or ""
    assert told
    assert reason.startswith(told)  # whole, or its start where the store's message is bounded
    task = await task_of(harness, backend, running)
    if task is not None:
        assert (task.ctx.status, task.ctx.last_error) == (Status.CANCELLED, told)
