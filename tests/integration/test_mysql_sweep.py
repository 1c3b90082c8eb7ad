"""MySQL/MariaDB: a worker whose heartbeat is slow is still alive to the orphan sweep, and keeps
the tasks it claimed while its beat was held up.

Each statement of a MariaDB heartbeat commits by itself, so its beat (`last_seen`) is as old as
the statements that follow it, and a sweep is several of them. On a loaded server that took more
than stale_after: the sweeper recovered its own running tasks, or the next worker to sweep (once
the sweep lock was freed) found the sweeper stale and ran its tasks a second time
(tests/acceptance/test_chaos_outage.py). Here a row lock holds the sweeper's heartbeat up for
longer than stale_after inside its sweep, while a worker of another process beats (and sweeps).

A beat's lost-claim release runs statements after the beat too, and each is judged by the
server's clock when it runs: the tasks the worker holds must be read when the release is sent,
not when the beat began, or a claim that came back in between (its reply held up with a stalled
loop, tests/conformance/test_stalls.py) is older than the grace and not among them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status
from apalis_mysql import MysqlStore

from ..conformance.stores.mysql import admin_connect, admin_execute
from .conftest import beating_all_along, make_mysql_store

STALE_AFTER = 1.0


def _context(worker_id: str, running: tuple[str, ...] = ()) -> WorkerContext:
    return WorkerContext(
        id=worker_id, name=worker_id, queue="q", stale_after=STALE_AFTER, keep_alive=0.1, running=lambda: running
    )


async def _running_under(url: str, worker_id: str, task_id: str, ago: float) -> None:
    await admin_execute(
        url,
        "UPDATE apalis_tasks SET status = 'running', attempts = 1, lock_by = %s,"
        " lock_at = UNIX_TIMESTAMP(NOW(6)) - %s WHERE id = %s",
        (worker_id, ago, task_id),
    )


async def _purging(admin: Any) -> bool:
    """Whether a sweep's purge (the only DELETE of tasks here) runs on this database."""
    async with admin.cursor() as cursor:
        await cursor.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
            " WHERE DB = DATABASE() AND COMMAND = 'Query' AND INFO LIKE 'DELETE FROM apalis_tasks%%'"
        )
        return bool((await cursor.fetchone())[0])


async def test_a_worker_whose_sweep_is_held_up_keeps_its_running_task(mysql_url: str, mysql_store: MysqlStore) -> None:
    queue = mysql_store.backend("q", codec=JsonCodec())
    held = await queue.push({"held": True})
    await _running_under(mysql_url, "w1", held, 0)
    blocker = await queue.push({"blocker": True})
    other = make_mysql_store(mysql_url)  # w2's process: its own contact with the server
    await other.open()
    w1, w2 = queue.heartbeat(_context("w1", (held,))), other.backend("q", codec=JsonCodec()).heartbeat(_context("w2"))
    for _ in range(int(STALE_AFTER / 0.1) + 5):  # w1 beats for stale_after: its beats sweep
        await anext(w1)
    beats = 0
    stop = asyncio.Event()

    async def w2_beats() -> None:  # w2 beats all along, as a live worker of another process does
        nonlocal beats
        while not stop.is_set():
            await anext(w2)
            beats += 1

    beating2 = asyncio.ensure_future(w2_beats())
    # A task past its retention: w1's sweep, once it has recovered and forgotten, purges it, and
    # waits for its row while another connection holds it.
    await admin_execute(mysql_url, "UPDATE apalis_tasks SET status = 'done', done_at = 1 WHERE id = %s", (blocker,))
    admin = await admin_connect(mysql_url)
    try:
        async with admin.cursor() as cursor:
            await cursor.execute("START TRANSACTION")
            await cursor.execute("SELECT id FROM apalis_tasks WHERE id = %s FOR UPDATE", (blocker,))
        beating = asyncio.ensure_future(anext(w1))
        async with asyncio.timeout(30):
            while not await _purging(admin):  # noqa: ASYNC110 - the server's state, no event to wait on
                await asyncio.sleep(0.05)
        await asyncio.sleep(STALE_AFTER * 1.5)  # w1's beat is held up past stale_after
        async with admin.cursor() as cursor:
            await cursor.execute("COMMIT")
        await beating  # w1 swept, and freed the sweep lock
        after = beats
        async with asyncio.timeout(10):
            while beats < after + 3:  # noqa: ASYNC110 - w2's beats, counted
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await beating2
        admin.close()
        for stream in (w1, w2):
            await stream.aclose()  # type: ignore[attr-defined]
        await other.close()
    task = await queue.get(held)
    assert task is not None
    assert (task.ctx.status, task.ctx.lock_by) == (Status.RUNNING, "w1"), task.ctx.last_error


async def test_a_sweep_passes_by_a_claim_and_an_acknowledgement_in_flight(
    mysql_url: str, mysql_store: MysqlStore
) -> None:
    """A sweeper recovers the tasks of stale workers without waiting for the row locks of a live
    worker's acknowledgement and claim that are not committed yet (tasks it leaves alone). Its
    recovery was a locking scan of the queue's running tasks in the status index, which waited
    for every claim in flight in the queue, for up to the server's lock wait timeout (50 s by
    default), while the sweeper's beat grew stale."""
    queue = mysql_store.backend("q", codec=JsonCodec())
    claimed, *_ = await queue.push_bulk(list(range(300)))  # enough rows for the planner to walk an index
    acked = await queue.push({"acked": True})
    await _running_under(mysql_url, "w2", acked, 0)
    orphan = await queue.push({"orphan": True})
    await _running_under(mysql_url, "gone", orphan, 60)
    # A task done a moment ago (kept): the purge's range of expired tasks ends at its entry.
    kept = await queue.push({"kept": True})
    await admin_execute(
        mysql_url,
        "UPDATE apalis_tasks SET status = 'done', done_at = UNIX_TIMESTAMP(NOW(6)) - 1 WHERE id = %s",
        (kept,),
    )
    w1, w2 = queue.heartbeat(_context("w1")), queue.heartbeat(_context("w2", (acked,)))
    for _ in range(int(STALE_AFTER / 0.1) + 5):  # w1 beats for stale_after: its next beat sweeps
        await anext(w1)
    await anext(w2)  # w2 is alive
    admin = await admin_connect(mysql_url)
    try:
        async with admin.cursor() as cursor:  # w2's acknowledgement, on its way
            await cursor.execute("START TRANSACTION")
            await cursor.execute(
                "UPDATE apalis_tasks SET status = 'done', done_at = UNIX_TIMESTAMP(NOW(6)), lock_by = NULL,"
                " lock_at = NULL WHERE id = %s",
                (acked,),
            )
            await cursor.execute(  # and its claim of the next task
                "UPDATE apalis_tasks SET status = 'running', attempts = 1, lock_by = 'w2',"
                " lock_at = UNIX_TIMESTAMP(NOW(6)) WHERE id = %s",
                (claimed,),
            )
        async with asyncio.timeout(20):  # far under the lock wait timeout
            await anext(w1)
        async with admin.cursor() as cursor:
            await cursor.execute("COMMIT")
    finally:
        admin.close()
        for stream in (w1, w2):
            await stream.aclose()  # type: ignore[attr-defined]
    recovered = await queue.get(orphan)
    assert recovered is not None
    assert recovered.ctx.status in (Status.FAILED, Status.KILLED), recovered.ctx.status
    done = await queue.get(acked)
    assert done is not None
    assert done.ctx.status == Status.DONE


async def _beat_waits_for_its_row(admin: Any) -> bool:
    """Whether a heartbeat's `beat` (the only INSERT into the workers table here) waits to run."""
    async with admin.cursor() as cursor:
        await cursor.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
            " WHERE DB = DATABASE() AND COMMAND = 'Query' AND INFO LIKE 'INSERT INTO apalis_workers%%'"
        )
        return bool((await cursor.fetchone())[0])


async def test_a_task_claimed_while_a_beat_is_held_up_is_no_lost_claim(mysql_url: str, mysql_store: MysqlStore) -> None:
    queue = mysql_store.backend("q", codec=JsonCodec())
    task_id = await queue.push({"n": 1})
    running: set[str] = set()
    w1 = queue.heartbeat(
        WorkerContext(
            id="w1", name="w1", queue="q", stale_after=STALE_AFTER, keep_alive=0.1, running=lambda: tuple(running)
        )
    )
    await anext(w1)  # registered: its row is there to lock
    admin = await admin_connect(mysql_url)
    try:
        async with admin.cursor() as cursor:
            await cursor.execute("START TRANSACTION")
            await cursor.execute("SELECT id FROM apalis_workers WHERE id = 'w1' FOR UPDATE")
        beating = asyncio.ensure_future(anext(w1))  # it reads what w1 runs (nothing), then waits
        async with asyncio.timeout(30):
            while not await _beat_waits_for_its_row(admin):  # noqa: ASYNC110 - the server's state
                await asyncio.sleep(0.05)
        await _running_under(mysql_url, "w1", task_id, 0)  # meanwhile w1 claims the task and runs it
        running.add(task_id)
        await asyncio.sleep(STALE_AFTER * 1.5)  # the claim is older than the lost-claim grace
        async with admin.cursor() as cursor:
            await cursor.execute("COMMIT")
        await beating
    finally:
        admin.close()
        await w1.aclose()  # type: ignore[attr-defined]
    task = await queue.get(task_id)
    assert task is not None
    assert (task.ctx.status, task.ctx.lock_by) == (Status.RUNNING, "w1"), "w1's running task was released as lost"


async def test_a_beat_that_wakes_other_processes_does_not_wait_for_their_wake_up(
    mysql_url: str, mysql_store: MysqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beat that gives a lost claim back wakes the other processes' pollers for it: on MariaDB a
    KILL QUERY of each of their listeners, which the server holds for up to 2 s when the
    listener is not asleep yet (woken by another signal just before). The beat waited for it,
    past stale_after, and a worker of another process swept its worker's running task."""
    queue = mysql_store.backend("q", codec=JsonCodec())
    running, lost = await queue.push({"running": True}), await queue.push({"lost": True})
    await _running_under(mysql_url, "w1", running, 0)
    hold, held = asyncio.Event(), asyncio.Event()

    async def signal_held(tag: str) -> None:  # the server holds the KILL QUERY
        held.set()
        async with asyncio.timeout(STALE_AFTER * 5):
            await hold.wait()

    monkeypatch.setattr(mysql_store.database, "signal", signal_held)
    other = make_mysql_store(mysql_url)  # w2's process: its own contact with the server
    await other.open()
    w1 = queue.heartbeat(_context("w1", (running,)))
    w2 = other.backend("q", codec=JsonCodec()).heartbeat(_context("w2"))
    try:
        async with beating_all_along(w1, w2):
            try:
                await asyncio.sleep(STALE_AFTER * 1.5)  # both have beaten for stale_after: w2's beats sweep
                await _running_under(mysql_url, "w1", lost, STALE_AFTER * 3)  # a claim whose reply was lost
                async with asyncio.timeout(10):
                    await held.wait()  # w1's beat gave it back, and wakes the other processes
                await asyncio.sleep(STALE_AFTER * 2)  # the wake-up is held past stale_after; w2 sweeps
            finally:
                hold.set()
    finally:
        await other.close()
    task = await queue.get(running)
    assert task is not None
    assert (task.ctx.status, task.ctx.lock_by) == (Status.RUNNING, "w1"), task.ctx.last_error
    given_back = await queue.get(lost)
    assert given_back is not None
    assert given_back.ctx.status == Status.PENDING


@contextlib.asynccontextmanager
async def _slow_link(url: str, delay: float) -> AsyncIterator[str]:
    """A URL of `url`'s server whose every answer comes `delay` seconds late (a proxy on
    loopback): a server that far away, or that loaded."""
    parts = urlsplit(url)

    async def serve(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection(parts.hostname, parts.port or 3306)

        async def pipe(read: asyncio.StreamReader, write: asyncio.StreamWriter, late: float) -> None:
            with contextlib.suppress(Exception):
                while data := await read.read(65536):
                    if late:
                        arrives = asyncio.get_running_loop().time() + late
                        asyncio.get_running_loop().call_at(arrives, write.write, data)  # in order
                    else:
                        write.write(data)
            write.close()

        await asyncio.gather(pipe(client_in, server_out, 0.0), pipe(server_in, client_out, delay))

    proxy = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    try:
        yield urlunsplit(parts._replace(netloc=f"{parts.username or 'root'}@127.0.0.1:{port}"))
    finally:
        proxy.close()


async def test_a_worker_whose_server_answers_late_keeps_its_running_task(
    mysql_url: str, mysql_store: MysqlStore
) -> None:
    # Each round trip of w1's connection takes 0.3 s. A beat of MariaDB's was a round trip a
    # statement: five where another worker holds the sweep lock (1.5 s between two of its
    # beats, past stale_after, 1.2 s), and w2's sweep ran w1's running task a second time. A
    # beat is one round trip.
    queue = mysql_store.backend("q", codec=JsonCodec())
    task_id = await queue.push({"n": 1})
    await _running_under(mysql_url, "w1", task_id, 0)
    context = {"queue": "q", "stale_after": 1.2, "keep_alive": 0.3}
    async with _slow_link(mysql_url, 0.3) as far:
        slow = make_mysql_store(far)
        await slow.open()
        try:
            w1 = slow.backend("q", codec=JsonCodec()).heartbeat(
                WorkerContext(id="w1", name="w1", running=lambda: (task_id,), **context)  # type: ignore[arg-type]
            )
            w2 = queue.heartbeat(WorkerContext(id="w2", name="w2", **context))  # type: ignore[arg-type]
            async with beating_all_along(w1, w2):
                await asyncio.sleep(8)  # both sweep (each once its contact is steady for stale_after)
        finally:
            await slow.close()
    task = await queue.get(task_id)
    assert task is not None
    assert (task.ctx.status, task.ctx.lock_by) == (Status.RUNNING, "w1"), task.ctx.last_error
