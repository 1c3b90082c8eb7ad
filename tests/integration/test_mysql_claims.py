"""MySQL/MariaDB claims ahead: the transaction that acknowledges a worker's runs also claims the
tasks for the slots they free; those are never lost, never run twice, and go back on stop."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_mysql import MysqlStore

from tests.conformance.stores.mysql import admin_execute
from tests.services import need_server


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A fresh database of its own, dropped afterwards."""
    server = need_server("mysql")
    database = f"apalis_t_{uuid.uuid4().hex[:12]}"
    await admin_execute(server, f"CREATE DATABASE {database}")
    yield urlunsplit(urlsplit(server)._replace(path=f"/{database}"))
    await admin_execute(server, f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture
async def store(url: str) -> AsyncIterator[MysqlStore]:
    made = MysqlStore.from_spec(StoreSpec(name="t", kind="mysql", url=url, options={}))
    await made.open()
    yield made
    await made.close()


def context(worker_id: str, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: 1, **settings)


async def status(store: MysqlStore, task_id: str) -> tuple[Status, int, str | None]:
    task = await store.backend("q", codec=JsonCodec()).get(task_id)
    assert task is not None
    return task.ctx.status, task.ctx.attempts, task.ctx.lock_by


async def test_acks_claim_ahead_for_the_slots_they_free_and_give_back_what_was_not_taken(store: MysqlStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    first, second, third = await q.push_bulk(["a", "b", "c"])
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    assert task.id == first
    await q.ack_batch([(task, Outcome.done())])  # frees one slot: one task claimed in the same transaction
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


async def test_the_stream_hands_out_what_was_claimed_ahead_once_and_in_order(store: MysqlStore) -> None:
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


async def test_tasks_claimed_ahead_are_not_released_by_the_heartbeat_as_lost_claims(
    url: str, store: MysqlStore
) -> None:
    q = store.backend("q", codec=JsonCodec())
    _, second = await q.push_bulk(["a", "b"])
    worker = context("w1", stale_after=0.5)
    stream = q.poll_compact(worker)
    task = await anext(stream)
    assert task is not None
    await q.ack_batch([(task, Outcome.done())])
    # Held ahead longer than stale_after (a slow handler elsewhere kept the slot busy).
    await admin_execute(url, "UPDATE apalis_tasks SET lock_at = lock_at - 60 WHERE id = %s", (second,))
    beats = q.heartbeat(worker)
    await anext(beats)
    await beats.aclose()  # type: ignore[attr-defined]
    assert await status(store, second) == (Status.RUNNING, 1, "w1")
    ahead = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert ahead is not None
    assert ahead.id == second


async def test_one_batch_applies_every_kind_of_outcome_and_ignores_lost_leases(store: MysqlStore) -> None:
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
    # The six acks that are not releases free six slots: the two tasks then ready (the released
    # one, its attempt not counted, and the one never claimed) are claimed ahead in the same commit.
    for task in (released, stolen):
        assert (got[task.id].ctx.status, got[task.id].ctx.attempts, got[task.id].ctx.lock_by) == (
            Status.RUNNING,
            1,
            "w1",
        )
    assert got[stolen.id].ctx.result is None
    await stream.aclose()  # type: ignore[attr-defined]


async def test_acks_claim_ahead_only_while_claims_come_back_full(store: MysqlStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    (first,) = await q.push_bulk(["a"])
    stream = q.poll_compact(WorkerContext(id="w1", name="w1", queue="q", free_slots=lambda: 2))
    task = await anext(stream)  # asked for two, got one: no backlog
    assert task is not None
    assert task.id == first
    (second,) = await q.push_bulk(["b"])
    await q.ack_batch([(task, Outcome.done())])
    assert await status(store, second) == (Status.PENDING, 0, None)  # left to the poller
    again = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert again is not None
    assert again.id == second
