"""MySQL/MariaDB hand-over: a push of one task due now claims it for a worker listed idle (in
another process here: a store of its own), which starts it after a read of its hands (`handing`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_mysql import MysqlStore

from .conftest import make_mysql_store


@contextlib.asynccontextmanager
async def _worker_and_pusher(mysql_url: str) -> AsyncIterator[tuple[MysqlStore, MysqlStore]]:
    """Two open stores on the server, as two processes would have: a worker's and a pusher's."""
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    try:
        yield worker_store, pusher
    finally:
        await worker_store.close()
        await pusher.close()


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
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
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


async def test_a_worker_that_stops_polling_gives_back_the_task_handed_to_it(mysql_url: str) -> None:
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        await stream.aclose()  # type: ignore[attr-defined]  # before it read the hand
        back = await pushed.get(task_id)
        assert back is not None
        assert (back.ctx.status, back.ctx.lock_by, back.ctx.attempts) == (Status.PENDING, None, 0)
        again = pushed.push({"n": 2})
        assert (await pushed.get(await again)).ctx.status is Status.PENDING  # type: ignore[union-attr]


async def test_a_task_not_due_or_in_a_paused_queue_is_not_handed(mysql_url: str) -> None:
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
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


async def test_a_push_to_a_worker_whose_process_is_gone_is_stored_for_the_others(mysql_url: str) -> None:
    # The push ends the listener's sleep itself, before its INSERT: a listener that is gone
    # (the process stopped without unlisting its worker) is no error; that worker is handed
    # nothing more, and the task is committed pending, for any other worker to claim (as another
    # connection sees it), not left to the dead worker until the orphan sweep.
    worker_store, pusher = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    reader = make_mysql_store(mysql_url)
    await worker_store.open()
    await pusher.open()
    await reader.open()
    try:
        stream = await _idle_worker(worker_store, "w1")  # listed idle, its stream left open
        await worker_store.close()  # its listener's connection is gone, the listing stays
        pushed = pusher.backend("q", codec=JsonCodec())
        task_id = await pushed.push({"n": 1})
        stored = await reader.backend("q", codec=JsonCodec()).get(task_id)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.PENDING, None)
        again = await pushed.push({"n": 2})  # the connection is still fit for use
        stored = await reader.backend("q", codec=JsonCodec()).get(again)
        assert stored is not None
        assert (stored.ctx.status, stored.ctx.lock_by) == (Status.PENDING, None)  # w1 is unlisted
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await pusher.close()
        await reader.close()


class HeldPush:
    """A push of one task (`hand_push`) run up to its COMMIT, which waits for `release`: as the
    server runs it while the COMMIT waits for its flush, or before it has come."""

    def __init__(self, pusher: MysqlStore, task_id: str) -> None:
        self.held, self.release = asyncio.Event(), asyncio.Event()
        script = pusher.database.sql["hand_push"].rstrip()
        assert script.endswith(";\nCOMMIT")
        self._script = script.removesuffix(";\nCOMMIT")
        self._params = {
            "id": task_id,
            "queue": "q",
            "payload": b'{"n": 1}',
            "max_attempts": 1,
            "run_at": time.time(),
            "priority": 0,
            "meta": None,
            "waited": 0,
            "own": (0,),
        }
        self.done = asyncio.ensure_future(pusher.database.run(self._push))

    async def _push(self, conn: Any) -> None:
        cursor = conn.cursor()
        await cursor.execute(self._script, self._params)
        while await cursor.nextset():
            pass
        self.held.set()
        await self.release.wait()
        await cursor.execute("COMMIT")


async def test_a_woken_worker_reads_the_task_handed_to_it_while_the_push_commits(mysql_url: str) -> None:
    # A push ends the idle worker's sleep before its COMMIT (so the commit's redo-log flush is not
    # on the task's way): the worker's read of its hands may reach the server before that COMMIT
    # has run. It waits for it and finds the task, rather than coming back empty.
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        push = HeldPush(pusher, "t1")
        await push.held.wait()
        reading = asyncio.ensure_future(worker_store.database.claim("q", "w1", 5))
        await asyncio.sleep(0.5)  # the read reaches the server before the push commits
        push.release.set()
        await push.done
        assert [task.id for task in await reading] == ["t1"]
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


async def test_a_worker_fed_by_hands_alone_stays_listed(mysql_url: str) -> None:
    # One task at a time, each run and acknowledged before the next push: the worker never
    # makes a claim of its own, yet every push hands its task over (its listing had slots for
    # five hands; its acknowledgements list it again as their runs give the slots back).
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")  # five slots
        pushed = pusher.backend("q", codec=JsonCodec())
        worker_queue = worker_store.backend("q", codec=JsonCodec())
        for n in range(12):
            task_id = await pushed.push({"n": n})
            stored = await pushed.get(task_id)
            assert stored is not None
            assert (n, stored.ctx.lock_by) == (n, "w1"), "handed at its push"
            got = await asyncio.wait_for(_next_task(stream), 10)
            assert got.id == task_id
            await worker_queue.ack_batch([(got, Outcome.done())])
        await stream.aclose()  # type: ignore[attr-defined]


async def test_a_push_that_finds_the_listing_held_does_not_stop_the_next_from_handing(mysql_url: str) -> None:
    # A push passes by a listing another transaction holds (the worker reading its hands, say)
    # and stores its task plainly; the next push, once the listing is free, hands again (a push
    # that finds no listing at all makes the next ones plain for a while).
    async with _worker_and_pusher(mysql_url) as (worker_store, pusher):
        stream = await _idle_worker(worker_store, "w1")
        pushed = pusher.backend("q", codec=JsonCodec())
        held, release = asyncio.Event(), asyncio.Event()

        async def hold_the_listing(conn: Any) -> None:
            cursor = conn.cursor()
            await cursor.execute("START TRANSACTION")
            await cursor.execute(f"SELECT 1 FROM {worker_store.config.table_prefix}idle FOR UPDATE")
            await cursor.fetchall()
            held.set()
            await release.wait()
            await cursor.execute("ROLLBACK")

        holding = asyncio.ensure_future(worker_store.database.run(hold_the_listing))
        await held.wait()
        passed = await pushed.get(await pushed.push({"n": 1}))
        assert passed is not None
        assert passed.ctx.lock_by is None
        release.set()
        await holding
        handed = await pushed.get(await pushed.push({"n": 2}))
        assert handed is not None
        assert handed.ctx.lock_by == "w1"
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
