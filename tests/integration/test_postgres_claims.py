"""PostgreSQL claims ahead: the statement that acknowledges a worker's runs also claims the tasks
for the slots they free, in priority and run_at order, for each worker its own, and announces
the tasks it makes ready.

The cases every store that claims ahead shares are in `test_claims_ahead.py`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status
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
