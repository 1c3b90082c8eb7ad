"""Claims ahead, the same on every store that does them: the write that acknowledges a worker's
runs also claims the tasks for the slots they free; those are never lost, never run twice, and
go back on stop. What is special to one store stays in its own `test_<kind>_claims.py`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_mysql import MysqlStore
from apalis_postgres import PostgresStore
from apalis_redis import RedisStore
from psycopg import sql

from tests.conformance.factory import StoreFactory
from tests.conformance.stores import mysql, postgres, redis

Claiming = PostgresStore | MysqlStore | RedisStore

FACTORIES: dict[str, StoreFactory] = {
    "postgres": postgres.FACTORY,
    "mysql": mysql.FACTORY,
    "redis": redis.FACTORY,
}


@pytest.fixture(params=list(FACTORIES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Claiming]:
    """A fresh store of each kind that claims ahead, dropped afterwards."""
    factory = FACTORIES[request.param]
    made = await factory.create(tmp_path)
    try:
        assert isinstance(made, PostgresStore | MysqlStore | RedisStore)
        yield made
    finally:
        await factory.destroy(made)


def context(worker_id: str, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: 1, **settings)


async def status(store: Claiming, task_id: str) -> tuple[Status, int, str | None]:
    task = await store.backend("q", codec=JsonCodec()).get(task_id)
    assert task is not None
    return task.ctx.status, task.ctx.attempts, task.ctx.lock_by


async def claimed_long_ago(store: Claiming, task_id: str) -> None:
    """Make the claim of `task_id` a minute old, as if a slow handler kept its slot busy."""
    if isinstance(store, PostgresStore):
        async with await psycopg.AsyncConnection.connect(store.config.url, autocommit=True) as admin:
            aged = sql.SQL("UPDATE {}.tasks SET lock_at = lock_at - 60 WHERE id = %s")
            await admin.execute(aged.format(sql.Identifier(store.config.schema)), (task_id,))
    elif isinstance(store, MysqlStore):
        statement = f"UPDATE {store.config.table_prefix}tasks SET lock_at = lock_at - 60 WHERE id = %s"
        await mysql.admin_execute(store.config.url, statement, (task_id,))
    else:
        keys = store.backend("q", codec=JsonCodec()).keys
        await store.client.zadd(keys.running, {task_id: (time.time() - 60) * 1000}, xx=True)


async def test_acks_claim_ahead_for_the_slots_they_free_and_give_back_what_was_not_taken(store: Claiming) -> None:
    q = store.backend("q", codec=JsonCodec())
    first, second, third = await q.push_bulk(["a", "b", "c"])
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    assert task.id == first
    await q.ack_batch([(task, Outcome.done())])  # frees one slot: one task claimed in the same write
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


async def test_the_stream_hands_out_what_was_claimed_ahead_once_and_in_order(store: Claiming) -> None:
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


async def test_tasks_claimed_ahead_are_not_released_by_the_heartbeat_as_lost_claims(store: Claiming) -> None:
    q = store.backend("q", codec=JsonCodec())
    _, second = await q.push_bulk(["a", "b"])
    # The SQL stores release a worker's claims older than stale_after, Redis older than keep_alive.
    worker = context("w1", stale_after=0.5) if not isinstance(store, RedisStore) else context("w1", keep_alive=0.5)
    stream = q.poll_compact(worker)
    task = await anext(stream)
    assert task is not None
    await q.ack_batch([(task, Outcome.done())])
    await claimed_long_ago(store, second)
    beats = q.heartbeat(worker)
    await anext(beats)
    await beats.aclose()  # type: ignore[attr-defined]
    assert await status(store, second) == (Status.RUNNING, 1, "w1")
    ahead = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert ahead is not None
    assert ahead.id == second


async def test_one_batch_applies_every_kind_of_outcome_and_ignores_lost_leases(store: Claiming) -> None:
    q = store.backend("q", codec=JsonCodec(), max_attempts=3)
    ids = await q.push_bulk(range(7))
    stream = q.poll_compact(WorkerContext(id="w1", name="w1", queue="q", free_slots=lambda: 6))
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
    # The six acks that are not releases free six slots, and the one never claimed by w1 is
    # claimed ahead for it. The task released by this very batch is too where the claim follows
    # the release (a transaction, a script); PostgreSQL's single statement claims from the
    # snapshot it started with, where that task was running: it waits for the next claim.
    claimed_ahead = [stolen] if isinstance(store, PostgresStore) else [released, stolen]
    for task in claimed_ahead:
        assert (got[task.id].ctx.status, got[task.id].ctx.attempts, got[task.id].ctx.lock_by) == (
            Status.RUNNING,
            1,
            "w1",
        )
    if isinstance(store, PostgresStore):
        assert (got[released.id].ctx.status, got[released.id].ctx.attempts) == (Status.PENDING, 0)
    assert got[stolen.id].ctx.result is None
    await stream.aclose()  # type: ignore[attr-defined]
