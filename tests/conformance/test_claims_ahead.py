"""Claims ahead, on every store that does them (`Capability.CLAIMS_AHEAD`): the write that
acknowledges a worker's runs also claims the tasks for the slots they free, in the order a claim
of its own would take them, for each worker its own. Those are never lost, never run twice, not
given back by the heartbeat as lost claims, and go back to the queue, their attempt not counted,
when the worker's poll stream closes.

The streams are driven by hand, as in test_poll.py. What is special to one store (when MySQL
claims ahead, how few round trips Redis makes, what PostgreSQL announces) stays in its own tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from apalis_cli.backend import Capability, WorkerContext
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task

from .conftest import Backend, Harness

Stream = AsyncIterator[Task[bytes] | None]


def context(backend: Backend, worker_id: str, slots: int = 1, **settings: Any) -> WorkerContext:
    """A polling worker's context with `slots` free slots."""
    return WorkerContext(id=worker_id, name=worker_id, queue=backend.get_queue(), free_slots=lambda: slots, **settings)


async def status(harness: Harness, backend: Backend, task_id: str) -> tuple[Status, int, str | None]:
    """The task's status, attempts and holder, as the store has them now."""
    task = await harness.inspector(backend).get(task_id)
    assert task is not None
    return task.ctx.status, task.ctx.attempts, task.ctx.lock_by


async def first(stream: Stream) -> Task[bytes]:
    """The stream's next task (idle ticks skipped)."""
    async with asyncio.timeout(10):
        while (task := await anext(stream)) is None:
            pass
    return task


async def closed(*streams: Stream) -> None:
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]


async def acked(backend: Backend, *items: tuple[Task[bytes], Outcome]) -> None:
    """Acknowledge `items` through the store's own layer in one loop turn, as the runs of a
    worker that end together are: one write, which claims ahead for the slots it frees."""
    layer = backend.middleware()

    async def run(task: Task[bytes], outcome: Outcome) -> None:
        async def decided(_: Task[Any]) -> Outcome:
            return outcome

        await layer(decided)(task)

    await asyncio.gather(*(run(task, outcome) for task, outcome in items))


def claiming(harness: Harness) -> Backend:
    harness.require(Capability.CLAIMS_AHEAD, Capability.INSPECT)
    return harness.backend(max_attempts=3)


async def test_acks_claim_ahead_for_the_slots_they_free_and_give_back_what_was_not_taken(harness: Harness) -> None:
    q = claiming(harness)
    first_id, second, third = await q.push_bulk(["a", "b", "c"])
    stream = q.poll_compact(context(q, "w1"))
    task = await first(stream)
    assert task.id == first_id
    await acked(q, (task, Outcome.done()))  # frees one slot: one claimed
    assert await status(harness, q, second) == (Status.RUNNING, 1, "w1")
    assert await status(harness, q, third) == (Status.PENDING, 0, None)
    await closed(stream)
    assert await status(harness, q, second) == (Status.PENDING, 0, None)  # the attempt is not counted

    other = q.poll_compact(context(q, "w2"))
    again = await first(other)
    await closed(other)
    assert again.id == second
    await acked(q, (again, Outcome.done()))  # no stream of w2: none ahead
    assert await status(harness, q, third) == (Status.PENDING, 0, None)


async def test_the_stream_hands_out_what_was_claimed_ahead_once_and_in_order(harness: Harness) -> None:
    q = claiming(harness)
    ids = await q.push_bulk(range(4))
    stream = q.poll_compact(context(q, "w1"))
    handed: list[Task[bytes]] = []
    for _ in ids:
        task = await first(stream)
        handed.append(task)
        await acked(q, (task, Outcome.done()))
    await closed(stream)
    assert [t.id for t in handed] == ids
    assert all(t.ctx.lock_by == "w1" and t.ctx.attempts == 1 for t in handed)
    assert [await status(harness, q, i) for i in ids] == [(Status.DONE, 1, None)] * len(ids)


async def test_tasks_claimed_ahead_are_not_given_back_by_the_heartbeat_as_lost_claims(harness: Harness) -> None:
    q = claiming(harness)
    _, second = await q.push_bulk(["a", "b"])
    # A claim the worker does not run, older than stale_after (or keep_alive, as the store
    # counts it), is a lost claim; one held ahead for it is not, however old.
    worker = context(q, "w1", stale_after=0.5, keep_alive=0.5)
    stream = q.poll_compact(worker)
    task = await first(stream)
    await acked(q, (task, Outcome.done()))
    claimed_at = time.monotonic()
    await asyncio.sleep(max(0.0, claimed_at + 0.7 - time.monotonic()))  # the claim ahead is old now
    beats = q.heartbeat(worker)
    await anext(beats)
    await beats.aclose()  # type: ignore[attr-defined]
    assert await status(harness, q, second) == (Status.RUNNING, 1, "w1")
    ahead = await first(stream)
    await closed(stream)
    assert ahead.id == second


async def test_tasks_a_claim_took_and_the_worker_has_not_started_are_not_lost_claims(harness: Harness) -> None:
    q = claiming(harness)
    _, second = await q.push_bulk(["a", "b"])
    # The stream's own claim takes both tasks (two free slots) and the worker starts the first;
    # the second is on its way to it. So is a whole batch when the claim's reply reached a
    # starved process late: its worker's beat may run before the stream hands any of it out.
    # A lost claim is one the worker will never run; this one it will, however old it is.
    started: list[str] = []
    worker = context(q, "w1", slots=2, stale_after=0.5, keep_alive=0.5, running=lambda: started)
    stream = q.poll_compact(worker)
    try:
        task = await first(stream)
        started.append(task.id)
        claimed_at = time.monotonic()
        await asyncio.sleep(max(0.0, claimed_at + 0.7 - time.monotonic()))  # the claim is old now
        beats = q.heartbeat(worker)
        await anext(beats)
        await beats.aclose()  # type: ignore[attr-defined]
        assert await status(harness, q, second) == (Status.RUNNING, 1, "w1"), "given back while on its way"
        coming = await first(stream)
    finally:
        await closed(stream)
    assert coming.id == second


async def test_one_batch_applies_every_kind_of_outcome_and_ignores_lost_leases(harness: Harness) -> None:
    q = claiming(harness)
    ids = await q.push_bulk(range(7))
    stream = q.poll_compact(context(q, "w1", slots=6))
    tasks = [await first(stream) for _ in range(6)]
    done_a, done_b, done_none, retried, killed, released = tasks
    later = await harness.inspector(q).get(ids[6])
    assert later is not None
    stolen = Task(id=later.id, args=later.args, ctx=dataclasses.replace(later.ctx, lock_by="w1"))
    await acked(
        q,
        (done_a, Outcome.done({"n": 1})),
        (done_b, Outcome.done({"n": 2})),
        (done_none, Outcome.done()),
        (retried, Outcome.retry("flaky", time.time() + 60)),
        (killed, Outcome.kill("broken")),
        (released, Outcome.release()),
        (stolen, Outcome.done("not mine")),  # never claimed by w1: left alone
    )
    got = {task.id: task for task in await harness.inspector(q).list_tasks(limit=10)}
    assert [got[t.id].ctx.result for t in (done_a, done_b, done_none)] == ['{"n":1}', '{"n":2}', None]
    assert all(got[t.id].ctx.status is Status.DONE for t in (done_a, done_b, done_none))
    assert (got[retried.id].ctx.status, got[retried.id].ctx.last_error) == (Status.FAILED, "flaky")
    assert (got[killed.id].ctx.status, got[killed.id].ctx.last_error) == (Status.KILLED, "broken")
    # The six acks that are not releases free six slots, and the one never claimed by w1 is
    # claimed ahead for it. The task released by this very batch is too where the claim follows
    # the release (a transaction, a script); PostgreSQL's single statement claims from the
    # snapshot it started with, where that task was running: it waits for the next claim.
    snapshot = harness.kind == "postgres"
    for task in [stolen] if snapshot else [released, stolen]:
        assert (got[task.id].ctx.status, got[task.id].ctx.attempts, got[task.id].ctx.lock_by) == (
            Status.RUNNING,
            1,
            "w1",
        )
    if snapshot:
        assert (got[released.id].ctx.status, got[released.id].ctx.attempts) == (Status.PENDING, 0)
    assert got[stolen.id].ctx.result is None
    await closed(stream)


async def test_claims_ahead_take_the_highest_priority_ready_tasks_and_leave_later_ones(harness: Harness) -> None:
    q = claiming(harness)
    harness.require(Capability.PRIORITY, Capability.SCHEDULE)
    (first_id,) = await q.push_bulk(["first"], priority=10)
    low = await q.push("low")
    later = await q.push("later", priority=9, delay=60)
    high = await q.push("high", priority=5)
    stream = q.poll_compact(context(q, "w1"))
    task = await first(stream)
    assert task.id == first_id
    await acked(q, (task, Outcome.done()))
    assert await status(harness, q, high) == (Status.RUNNING, 1, "w1")
    assert await status(harness, q, low) == (Status.PENDING, 0, None)
    assert await status(harness, q, later) == (Status.PENDING, 0, None)
    await closed(stream)


async def test_one_batch_claims_ahead_for_each_worker_its_own_tasks(harness: Harness) -> None:
    q = claiming(harness)
    ids = await q.push_bulk(range(7))
    one, two = q.poll_compact(context(q, "w1", slots=2)), q.poll_compact(context(q, "w2", slots=1))
    mine = [await first(one), await first(one)]
    theirs = await first(two)
    await acked(q, *((t, Outcome.done()) for t in (*mine, theirs)))
    ahead = {i: await status(harness, q, i) for i in ids[3:]}
    assert sorted(lock for _, _, lock in ahead.values() if lock is not None) == ["w1", "w1", "w2"]
    handed = [await first(one), await first(one), await first(two)]
    assert [t.ctx.lock_by for t in handed] == ["w1", "w1", "w2"]
    assert {t.id for t in handed} == {i for i, (_, _, lock) in ahead.items() if lock is not None}
    await closed(one, two)
