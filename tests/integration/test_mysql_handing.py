"""MySQL/MariaDB hand-over: a push of one task due now claims it for a worker listed idle (in
another process here: a store of its own), which starts it after a plain read (`handing`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_mysql import MysqlStore

from .conftest import make_mysql_store


async def _next_task(stream: AsyncIterator[Task[bytes] | None]) -> Task[bytes]:
    while True:
        task = await anext(stream)
        if task is not None:
            return task


async def _idle_worker(store: MysqlStore, worker_id: str) -> AsyncIterator[Task[bytes] | None]:
    """A poll stream whose first claim found nothing: its worker is listed idle."""
    ctx = WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: 5)
    stream = store.backend("q", codec=JsonCodec()).poll_compact(ctx)
    assert await anext(stream) is None
    return stream


async def test_a_lone_push_is_claimed_for_an_idle_worker_of_another_process(mysql_url: str) -> None:
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    try:
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        stored = await pushed.get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by, stored.ctx.attempts) == (Status.RUNNING, "w1", 1)
        got = await asyncio.wait_for(_next_task(stream), 10)
        assert (got.id, got.ctx.lock_by, got.ctx.attempts) == (task_id, "w1", 1)
        await worker_store.backend("q", codec=JsonCodec()).ack_batch([(got, Outcome.done())])
        done = await pushed.get(task_id)
        assert done is not None
        assert done.ctx.status is Status.DONE
        # Listed again while the task ran: the next push is handed too.
        second = await pushed.push({"n": 2})
        got = await asyncio.wait_for(_next_task(stream), 10)
        assert got.id == second
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await worker_store.close()
        await pusher.close()


async def test_a_worker_that_stops_polling_gives_back_the_task_handed_to_it(mysql_url: str) -> None:
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    try:
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        await stream.aclose()  # type: ignore[attr-defined]  # before it read the hand
        back = await pushed.get(task_id)
        assert back is not None
        assert (back.ctx.status, back.ctx.lock_by, back.ctx.attempts) == (Status.PENDING, None, 0)
        again = pushed.push({"n": 2})
        assert (await pushed.get(await again)).ctx.status is Status.PENDING  # type: ignore[union-attr]
    finally:
        await worker_store.close()
        await pusher.close()


async def test_a_task_not_due_or_in_a_paused_queue_is_not_handed(mysql_url: str) -> None:
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    try:
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        later = await pushed.push({"n": 1}, delay=60)
        await pushed.pause()
        paused = await pushed.push({"n": 2})
        for task_id in (later, paused):
            stored = await pushed.get(task_id)
            assert stored is not None
            assert (stored.ctx.status, stored.ctx.lock_by) == (Status.PENDING, None)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await worker_store.close()
        await pusher.close()


async def test_a_push_handed_to_a_worker_whose_process_is_gone_is_stored(mysql_url: str) -> None:
    # The push ends the listener's sleep itself, after its commit: a listener that is gone
    # (the process stopped without unlisting its worker) is no error, and the task is kept.
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    try:
        stream = await _idle_worker(worker_store, "w1")  # listed idle, its stream left open
        await worker_store.close()  # its listener's connection is gone, the listing stays
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        stored = await pushed.get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.RUNNING, "w1")
        assert await pushed.push({"n": 2}) != task_id  # the connection is still fit for use
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await pusher.close()
