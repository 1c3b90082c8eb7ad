"""The SQLite store's heartbeat (registry, orphans, lost claims, retention), its inspector, its
wake-ups and its recovery from a dropped connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_sqlite import SqliteStore
from apalis_sqlite.queue import SqliteQueue

from .test_sqlite import beat, claim, context

STORE_KINDS = ("sqlite",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


def queue(store: SqliteStore, max_attempts: int = 3) -> SqliteQueue:
    return store.backend("q", codec=JsonCodec(), max_attempts=max_attempts)


async def test_the_registry_records_beats_and_farewells(store: SqliteStore) -> None:
    q = queue(store)
    worker = context("w1", layers=("RetryLayer()",), host="h", pid=42, started_at=1.0, keep_alive=0.01)
    stream = q.heartbeat(worker)
    await anext(stream)
    (info,) = await q.workers()
    assert (info.id, info.host, info.pid, info.layers, info.running) == ("w1", "h", 42, ("RetryLayer()",), 0)
    await anext(stream)
    assert (await q.workers())[0].last_seen > info.last_seen
    await stream.aclose()  # type: ignore[attr-defined]
    assert await q.workers() == []


async def test_orphans_come_back_counted_or_killed_when_exhausted(store: SqliteStore) -> None:
    q = queue(store)
    again = await q.push("again", max_attempts=2)
    last = await q.push("last", max_attempts=1)
    ghost = context("ghost", stale_after=0.3)
    await beat(q, ghost)
    assert len(await claim(q, ghost)) == 2
    # The ghost stops beating. A sweeper sweeps once it has itself beaten steadily for
    # stale_after (`Contact.may_sweep`): its first beats leave the ghost's tasks alone.
    sweeper = q.heartbeat(context("sweeper", stale_after=0.3, keep_alive=0.05))
    try:
        await anext(sweeper)
        assert (await q.get(again)).ctx.status is Status.RUNNING  # type: ignore[union-attr]
        for _ in range(100):  # until swept: a beat late on a loaded machine holds the sweep anew
            await anext(sweeper)
            if (await q.get(again)).ctx.status is not Status.RUNNING:  # type: ignore[union-attr]
                break
    finally:
        await sweeper.aclose()  # type: ignore[attr-defined]
    back, dead = await q.get(again), await q.get(last)
    assert back
    assert back.ctx.status is Status.FAILED
    assert back.ctx.attempts == 1
    assert back.ctx.lock_by is None
    assert back.ctx.last_error == "worker ghost stopped sending heartbeats while running this task"
    assert dead
    assert dead.ctx.status is Status.KILLED
    assert dead.ctx.done_at
    assert await q.workers() == []  # the ghost's row went with the sweep, the sweeper's with its farewell


async def test_claims_the_worker_does_not_run_are_released(store: SqliteStore) -> None:
    q = queue(store)
    kept, lost = await q.push_bulk(["kept", "lost"])
    worker = context("w1", running=[kept], keep_alive=0.05)
    await beat(q, worker)
    assert len(await claim(q, worker)) == 2
    await beat(q, worker)  # locked too recently: maybe the claim's reply is still on its way
    assert (await q.get(lost)).ctx.status is Status.RUNNING  # type: ignore[union-attr]
    await asyncio.sleep(0.1)
    await beat(q, worker)
    released, running = await q.get(lost), await q.get(kept)
    assert released
    assert released.ctx.status is Status.PENDING
    assert released.ctx.attempts == 0
    assert running
    assert running.ctx.status is Status.RUNNING


async def test_retention_purges_final_tasks(store: SqliteStore) -> None:
    q = queue(store)
    ids = await q.push_bulk(["done", "killed", "waiting"])
    tasks = {t.id: t for t in await claim(q, context())}
    await q.ack_batch([(tasks[ids[0]], Outcome.done()), (tasks[ids[1]], Outcome.kill("x"))])
    await q.ack_batch([(tasks[ids[2]], Outcome.release())])
    await asyncio.sleep(0.05)
    await beat(q, context("w2", retention=0.02))
    assert [await q.get(i) is None for i in ids] == [True, True, False]


async def test_the_inspector(store: SqliteStore) -> None:
    q = queue(store)
    ids = await q.push_bulk(range(5))
    tasks = {t.id: t for t in await claim(q, context())}
    await q.ack_batch([(tasks[ids[0]], Outcome.done(0)), (tasks[ids[1]], Outcome.kill("bad"))])
    await q.ack_batch([(tasks[i], Outcome.release()) for i in ids[2:]])

    assert [t.id for t in await q.list_tasks()] == ids
    assert [t.id for t in await q.list_tasks(Status.PENDING, limit=2, offset=1)] == ids[3:5]
    counts = (await q.stats()).counts
    assert (counts[Status.DONE], counts[Status.KILLED], counts[Status.PENDING], counts[Status.RUNNING]) == (1, 1, 3, 0)
    assert await q.get("nope") is None

    assert await q.retry(ids[1])
    assert not await q.retry(ids[2])
    retried = await q.get(ids[1])
    assert retried
    assert retried.ctx.status is Status.PENDING
    assert retried.ctx.attempts == 0
    assert await q.kill(ids[2], "operator")
    assert not await q.kill(ids[0])
    assert (await q.get(ids[2])).ctx.last_error == "operator"  # type: ignore[union-attr]
    assert await q.purge(Status.DONE) == 1
    assert await q.purge(Status.KILLED, older_than=3600) == 0
    assert len(await q.list_tasks()) == 4


async def handled(store: SqliteStore, **settings: Any) -> tuple[Worker, list[Any], asyncio.Event, asyncio.Task[None]]:
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> Any:
        seen.append(args)
        return args

    worker = Worker(name="w", backend=queue(store), handler=handler, keep_alive=0.2, **settings)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    return worker, seen, stop, running


async def wait_for(condition: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_an_idle_worker_starts_a_push_at_once_and_a_delayed_one_on_time(store: SqliteStore) -> None:
    _, seen, stop, running = await handled(store, poll_interval=30.0)
    try:
        await asyncio.sleep(0.3)  # idle long enough for the poll backoff to reach its cap
        started = time.monotonic()
        await queue(store).push("now")  # another queue object of the same store and queue
        await wait_for(lambda: seen == ["now"])
        assert time.monotonic() - started < 1.0  # a wake-up, not the 30 s poll
        started = time.monotonic()
        await queue(store).push("later", delay=0.2)
        await wait_for(lambda: seen == ["now", "later"])
        assert 0.15 < time.monotonic() - started < 1.5
    finally:
        stop.set()
        await running


async def test_a_worker_survives_its_connection_being_dropped_again_and_again(store: SqliteStore) -> None:
    ids = await queue(store).push_bulk(range(300))
    _, seen, stop, running = await handled(store, concurrency=8, poll_interval=0.05)
    try:
        for round_ in range(1, 6):
            await wait_for(lambda: len(seen) >= 40 * round_ and store.db.connected)  # noqa: B023
            before = store.db.reconnects
            await store.db.drop()
            await wait_for(lambda: store.db.reconnects > before)  # noqa: B023  the store saw it and reopened
        await wait_for(lambda: len(set(seen)) == 300, within=30)
    finally:
        stop.set()
        await running
    q = queue(store)
    assert (await q.stats()).counts[Status.DONE] == 300
    assert len(seen) == 300  # nothing ran twice
    assert store.db.reconnects >= 5
    assert {t.id for t in await q.list_tasks(Status.DONE, limit=1000)} == set(ids)
