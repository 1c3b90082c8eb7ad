"""Unique jobs on every store that has them: one task per key among the tasks in the chosen
states, for a window, answered from the store's own rows; skip, replace and extend."""

from __future__ import annotations

import asyncio
import time

import pytest
from apalis_cli.backend import Capability
from apalis_cli.errors import UsageError
from apalis_cli.task import Status

from .conftest import Calls, Harness


async def test_a_duplicate_within_the_window_is_skipped(harness: Harness) -> None:
    harness.require(Capability.UNIQUE)
    backend = harness.backend()
    first = await backend.push({"n": 1}, unique={"key": "report-7", "period": "10m"})
    again = [await backend.push({"n": n}, unique={"key": "report-7", "period": "10m"}) for n in range(2, 6)]
    other = await backend.push({"n": 9}, unique={"key": "report-8", "period": "10m"})
    assert again == [first] * 4, "a push of a held key answers with the task that holds it"
    assert other != first, "another key is another task"
    if harness.store.capabilities.has(Capability.INSPECT):
        stored = await harness.inspector(backend).get(first)
        assert stored is not None
        assert backend.codec.decode(stored.args) == {"n": 1}, "skip keeps the first"
        assert (await harness.inspector(backend).stats()).counts[Status.PENDING] == 2


async def test_a_key_is_free_again_once_its_window_ends(harness: Harness) -> None:
    harness.require(Capability.UNIQUE)
    backend = harness.backend()
    first = await backend.push({"n": 1}, unique={"key": "k", "period": "300ms"})
    assert await backend.push({"n": 2}, unique={"key": "k", "period": "300ms"}) == first
    await asyncio.sleep(0.4)
    later = await backend.push({"n": 3}, unique={"key": "k", "period": "300ms"})
    assert later != first, "past the window, the key makes a new task"


async def test_only_tasks_in_the_chosen_states_hold_a_key(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.UNIQUE)
    backend = harness.backend()
    waiting_only = {"key": "sync", "states": ["pending", "running"]}
    by_default = {"key": "once"}
    sync = await backend.push({"n": 1}, unique=waiting_only)
    once = await backend.push({"n": 2}, unique=by_default)
    worker = await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: len(calls.finished) >= 2, what="both tasks to run")
    await worker.stop()

    again = await backend.push({"n": 3}, unique=waiting_only)
    assert again != sync, "a done task does not hold a key whose states are pending and running"
    assert await backend.push({"n": 4}, unique=waiting_only) == again, "the new pending task holds it now"
    assert await backend.push({"n": 5}, unique=by_default) == once, "by default a done task holds its key"


async def test_replace_gives_a_pending_duplicate_the_new_content(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.UNIQUE)
    backend = harness.backend()
    first = await backend.push({"version": 1}, unique={"key": "profile-3", "on_conflict": "replace"})
    same = await backend.push({"version": 2}, unique={"key": "profile-3", "on_conflict": "replace"}, priority=3)
    assert same == first, "replace answers with the task it replaced"
    await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: calls.finished, what="the task to run")
    await asyncio.sleep(0.2)
    assert [(c.id, c.args) for c in calls.calls] == [(first, {"version": 2})], "one run, with the new content"


async def test_a_replaced_duplicate_runs_in_its_new_place(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.UNIQUE, Capability.PRIORITY, Capability.SCHEDULE)
    backend = harness.backend()
    due = time.time() - 10
    replace = {"key": "digest", "on_conflict": "replace"}
    digest = await backend.push({"v": 1}, unique=replace, priority=9, run_at=due)
    other = await backend.push({"v": "other"}, priority=5)
    # The same time, a lower priority: nothing but the priority tells its old place from its new.
    assert await backend.push({"v": 2}, unique=replace, priority=0, run_at=due) == digest
    await harness.worker(backend, calls.handler(), concurrency=1).start()
    await harness.wait_until(lambda: len(calls.finished) >= 2, what="both tasks to run")
    await asyncio.sleep(0.2)
    assert [(c.id, c.args) for c in calls.calls] == [(other, {"v": "other"}), (digest, {"v": 2})], (
        "the replaced task runs once, at its new priority"
    )


async def test_extend_starts_the_window_again(harness: Harness) -> None:
    harness.require(Capability.UNIQUE)
    backend = harness.backend()
    period = 1.0
    # Each push is stamped by the store somewhere between the call's start and its end; the
    # third push must land past the first window and within the one the second push began. The
    # waits are taken from those bounds, and a round that a stalled machine stretched past them
    # proves nothing either way, so it is run again under a new key (a real failure fails every round).
    for round_ in range(4):
        extend = {"key": f"debounced-{round_}", "period": f"{int(period * 1000)}ms", "on_conflict": "extend"}
        first = await backend.push({"n": 1}, unique=extend)
        first_done = time.monotonic()
        await asyncio.sleep(0.5 * period)
        second_sent = time.monotonic()
        assert await backend.push({"n": 2}, unique=extend) == first
        await asyncio.sleep(max(0.0, first_done + period + 0.1 - time.monotonic()))
        third = await backend.push({"n": 3}, unique=extend)
        if time.monotonic() >= second_sent + period:
            continue  # the third push may have landed past the extended window too
        assert third == first, "the window ran again from the last push"
        third_done = time.monotonic()
        await asyncio.sleep(max(0.0, third_done + period + 0.1 - time.monotonic()))
        assert await backend.push({"n": 4}, unique=extend) != first, "a push past the extended window is a new task"
        return
    pytest.fail("the machine stalled every round past the window; nothing was shown")


async def test_duplicates_in_one_batch_make_one_task(harness: Harness) -> None:
    harness.require(Capability.UNIQUE)
    backend = harness.backend()
    from apalis_cli.sink import new_task

    tasks = [new_task(backend.codec.encode({"n": n}), default_max_attempts=1, unique={"key": "b"}) for n in range(5)]
    ids = await backend.enqueue(tasks)
    # The first of the batch holds the key (by its own id, or by the one the store gave it: pgmq).
    assert ids == [ids[0]] * 5, "the first of the batch holds the key; the others answer with it"
    if harness.store.capabilities.has(Capability.INSPECT):
        stored = await harness.inspector(backend).get(ids[0])
        assert stored is not None
        assert backend.codec.decode(stored.args) == {"n": 0}, "the first of the batch is the one stored"


async def test_a_bad_unique_option_is_one_clear_error(harness: Harness) -> None:
    backend = harness.backend()
    for bad, words in (
        ({"period": "10m"}, "key"),
        ({"key": "k", "on_conflict": "merge"}, "on_conflict"),
        ({"key": "k", "states": ["later"]}, "state"),
        ({"key": "k", "period": "soon"}, "period"),
        ({"key": "k", "window": "1m"}, "window"),
    ):
        with pytest.raises(UsageError, match=words):
            await backend.push({"n": 1}, unique=bad)
    with pytest.raises(UsageError, match="unique"):
        await backend.push_bulk([1, 2], unique={"key": "k"})


async def test_a_store_without_unique_jobs_refuses_them(harness: Harness) -> None:
    if harness.store.capabilities.has(Capability.UNIQUE):
        return
    from apalis_cli.errors import Unsupported

    with pytest.raises(Unsupported, match="unique"):
        await harness.backend().push({"n": 1}, unique={"key": "k"})
