"""Redis claims ahead: the script that acknowledges a worker's runs also claims the tasks for the
slots they free; those are never lost, never run twice, and go back on stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore

from ..conformance.stores.redis import drop_namespace
from ..services import need_server


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    options = {"namespace": f"it-claims-{uuid.uuid4().hex[:12]}"}
    made = RedisStore.from_spec(StoreSpec(name="t", kind="redis", url=need_server("redis"), options=options))
    await made.open()
    try:
        yield made
    finally:
        await made.close()
        await drop_namespace(made.settings.url, made.settings.namespace)


def context(worker_id: str, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: 1, **settings)


async def status(store: RedisStore, task_id: str) -> tuple[Status, int, str | None]:
    task = await store.backend("q", codec=JsonCodec()).get(task_id)
    assert task is not None
    return task.ctx.status, task.ctx.attempts, task.ctx.lock_by


async def test_acks_claim_ahead_for_the_slots_they_free_and_give_back_what_was_not_taken(store: RedisStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    first, second, third = await q.push_bulk(["a", "b", "c"])
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    assert task.id == first
    await q.ack_batch([(task, Outcome.done())])  # frees one slot: one task claimed in the same call
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


async def test_the_stream_hands_out_what_was_claimed_ahead_once_and_in_order(store: RedisStore) -> None:
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


async def test_tasks_claimed_ahead_are_not_released_by_the_heartbeat_as_lost_claims(store: RedisStore) -> None:
    q = store.backend("q", codec=JsonCodec())
    _, second = await q.push_bulk(["a", "b"])
    worker = context("w1", keep_alive=0.5)
    stream = q.poll_compact(worker)
    task = await anext(stream)
    assert task is not None
    await q.ack_batch([(task, Outcome.done())])
    # Held ahead longer than keep_alive (a slow handler elsewhere kept the slot busy).
    claimed_ms = (time.time() - 60) * 1000
    await store.client.zadd(q.keys.running, {second: claimed_ms}, xx=True)
    beats = q.heartbeat(worker)
    await anext(beats)
    await beats.aclose()  # type: ignore[attr-defined]
    assert await status(store, second) == (Status.RUNNING, 1, "w1")
    ahead = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert ahead is not None
    assert ahead.id == second


async def test_a_busy_worker_claims_with_its_acknowledgements_not_in_a_round_trip_of_its_own(
    store: RedisStore,
) -> None:
    q = store.backend("q", codec=JsonCodec())
    ids = await q.push_bulk(range(100))
    claim = store.scripts["claim"]
    claims = 0

    async def counted(**kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await claim(**kwargs)

    store.scripts["claim"] = counted
    runs: Counter[str] = Counter()
    claims_when_all_started = -1
    all_started = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal claims_when_all_started
        runs[task.id] += 1
        if len(runs) == len(ids):
            claims_when_all_started = claims
            all_started.set()

    stop = asyncio.Event()
    worker = Worker(name="w", backend=q, handler=handler, concurrency=10, keep_alive=0.2, poll_interval=0.05)
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(all_started.wait(), 20)
    stop.set()
    await running
    assert runs == dict.fromkeys(ids, 1)
    # Ten batches of ten: the first is claimed alone, the nine after it with the acks that
    # freed their slots (a claim of its own costs a round trip per batch).
    assert 1 <= claims_when_all_started <= 3, claims_when_all_started
