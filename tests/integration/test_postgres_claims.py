"""PostgreSQL claims ahead: the statement that acknowledges a worker's runs also claims the tasks
for the slots they free, in priority and run_at order; those are never lost, never run twice,
and go back on stop."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_postgres import PostgresStore
from psycopg import sql

from tests.conformance.stores.postgres import drop_schema
from tests.services import need_server


@pytest.fixture
async def store() -> AsyncIterator[PostgresStore]:
    """A store in a fresh schema of its own, dropped afterwards."""
    url = need_server("postgres")
    schema = f"apalis_t_{uuid.uuid4().hex[:12]}"
    made = PostgresStore.from_spec(StoreSpec(name="t", kind="postgres", url=url, options={"schema": schema}))
    await made.open()
    yield made
    await made.close()
    await drop_schema(url, schema)


def context(worker_id: str, slots: int = 1, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: slots, **settings)


async def status(store: PostgresStore, task_id: str) -> tuple[Status, int, str | None]:
    task = await store.backend("q", codec=JsonCodec()).get(task_id)
    assert task is not None
    return task.ctx.status, task.ctx.attempts, task.ctx.lock_by


async def test_acks_claim_ahead_for_the_slots_they_free_and_give_back_what_was_not_taken(
    store: PostgresStore,
) -> None:
    q = store.backend("q", codec=JsonCodec())
    first, second, third = await q.push_bulk(["a", "b", "c"])
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    assert task.id == first
    await q.ack_batch([(task, Outcome.done())])  # frees one slot: one task claimed in the same statement
    assert await status(store, second) == (Status.RUNNING, 1, "w1")
    assert await status(store, third) == (Status.PENDING, 0, None)
    await stream.aclose()  # type: ignore[attr-defined]
    assert await status(store, second) == (Status.PENDING, 0, None)  # the attempt is not counted

    other = q.poll_compact(context("w2"))
    again = await anext(other)
    await other.aclose()  # type: ignore[attr-defined]
    assert again is not None
    assert again.id == second
    await q.ack_batch([(again, Outcome.done())])  # no stream of w2 is open: nothing claimed ahead
    assert await status(store, third) == (Status.PENDING, 0, None)


async def test_the_stream_hands_out_what_was_claimed_ahead_once_and_in_order(store: PostgresStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    ids = await q.push_bulk(range(4))
    stream = q.poll_compact(context("w1"))
    handed: list[Task[bytes]] = []
    for _ in ids:
        task = await anext(stream)
        assert task is not None
        handed.append(task)
        await q.ack_batch([(task, Outcome.done())])
    await stream.aclose()  # type: ignore[attr-defined]
    assert [t.id for t in handed] == ids
    assert all(t.ctx.lock_by == "w1" and t.ctx.attempts == 1 for t in handed)
    assert [await status(store, i) for i in ids] == [(Status.DONE, 1, None)] * len(ids)


async def test_claims_ahead_take_the_highest_priority_ready_tasks_and_leave_later_ones(store: PostgresStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    (first,) = await q.push_bulk(["first"], priority=10)
    low = await q.push("low")
    later = await q.push("later", priority=9, delay=60)
    high = await q.push("high", priority=5)
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    assert task.id == first
    await q.ack_batch([(task, Outcome.done())])
    assert await status(store, high) == (Status.RUNNING, 1, "w1")
    assert await status(store, low) == (Status.PENDING, 0, None)
    assert await status(store, later) == (Status.PENDING, 0, None)
    await stream.aclose()  # type: ignore[attr-defined]


async def test_one_batch_claims_ahead_for_each_worker_its_own_tasks(store: PostgresStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    ids = await q.push_bulk(range(7))
    one, two = q.poll_compact(context("w1", slots=2)), q.poll_compact(context("w2", slots=1))
    mine = [await anext(one), await anext(one)]
    theirs = await anext(two)
    assert theirs is not None
    assert all(t is not None for t in mine)
    finished = [(t, Outcome.done()) for t in (*mine, theirs) if t is not None]
    await q.ack_batch(finished)  # frees two slots of w1 and one of w2
    ahead = {i: await status(store, i) for i in ids[3:]}
    assert sorted(lock for _, _, lock in ahead.values() if lock is not None) == ["w1", "w1", "w2"]
    handed = [await anext(one), await anext(one), await anext(two)]
    assert [t.ctx.lock_by for t in handed if t is not None] == ["w1", "w1", "w2"]
    assert {t.id for t in handed if t is not None} == {i for i, (_, _, lock) in ahead.items() if lock is not None}
    for stream in (one, two):
        await stream.aclose()  # type: ignore[attr-defined]


async def test_tasks_claimed_ahead_are_not_released_by_the_heartbeat_as_lost_claims(store: PostgresStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    _, second = await q.push_bulk(["a", "b"])
    worker = context("w1", stale_after=0.5)
    stream = q.poll_compact(worker)
    task = await anext(stream)
    assert task is not None
    await q.ack_batch([(task, Outcome.done())])
    # Held ahead longer than stale_after (a slow handler elsewhere kept the slot busy).
    async with await psycopg.AsyncConnection.connect(store.config.url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("UPDATE {}.tasks SET lock_at = lock_at - 60 WHERE id = %s").format(
                sql.Identifier(store.config.schema)
            ),
            (second,),
        )
    beats = q.heartbeat(worker)
    await anext(beats)
    await beats.aclose()  # type: ignore[attr-defined]
    assert await status(store, second) == (Status.RUNNING, 1, "w1")
    ahead = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert ahead is not None
    assert ahead.id == second


async def test_one_batch_applies_every_kind_of_outcome_and_ignores_lost_leases(store: PostgresStore) -> None:
    q = store.backend("q", codec=JsonCodec(), max_attempts=3)
    ids = await q.push_bulk(range(7))
    stream = q.poll_compact(context("w1", slots=6))
    tasks = [await anext(stream) for _ in range(6)]
    assert all(t is not None for t in tasks)
    done_a, done_b, done_none, retried, killed, released = (t for t in tasks if t is not None)
    later = await store.backend("q", codec=JsonCodec()).get(ids[6])
    assert later is not None
    stolen = Task(id=later.id, args=later.args, ctx=dataclasses.replace(later.ctx, lock_by="w1"))
    await q.ack_batch(
        [
            (done_a, Outcome.done({"n": 1})),
            (done_b, Outcome.done({"n": 2})),
            (done_none, Outcome.done()),
            (retried, Outcome.retry("flaky", time.time() + 60)),
            (killed, Outcome.kill("broken")),
            (released, Outcome.release()),
            (stolen, Outcome.done("not mine")),  # never claimed by w1: left alone
        ]
    )
    got = {task.id: task for task in await q.list_tasks(limit=10)}
    assert [got[t.id].ctx.result for t in (done_a, done_b, done_none)] == ['{"n":1}', '{"n":2}', None]
    assert all(got[t.id].ctx.status is Status.DONE for t in (done_a, done_b, done_none))
    assert (got[retried.id].ctx.status, got[retried.id].ctx.last_error) == (Status.FAILED, "flaky")
    assert (got[killed.id].ctx.status, got[killed.id].ctx.last_error) == (Status.KILLED, "broken")
    # The task released by this very batch was running when it started: it waits for the next
    # claim, its attempt not counted. The one never claimed by w1 is claimed ahead for it.
    assert (got[released.id].ctx.status, got[released.id].ctx.attempts) == (Status.PENDING, 0)
    assert (got[stolen.id].ctx.status, got[stolen.id].ctx.attempts, got[stolen.id].ctx.lock_by) == (
        Status.RUNNING,
        1,
        "w1",
    )
    assert got[stolen.id].ctx.result is None
    await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("outcome", [Outcome.release(), Outcome.retry("flaky", 0.0)], ids=["released", "retried-now"])
async def test_a_task_ready_again_is_announced_to_listening_workers_once_acknowledged(
    store: PostgresStore, outcome: Outcome
) -> None:
    q = store.backend("q", codec=JsonCodec(), max_attempts=3)
    await q.push("a")
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    async with await psycopg.AsyncConnection.connect(store.config.url, autocommit=True) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(store.config.schema)))
        await q.ack_batch([(task, outcome)])
        heard = [(n.channel, n.payload) async for n in listener.notifies(timeout=5.0, stop_after=1)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert heard == [(store.config.schema, "q")]
