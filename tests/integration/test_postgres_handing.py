"""PostgreSQL hands a pushed task to an idle worker: the push claims it for a worker whose last
claim found nothing and NOTIFYs the task itself, so the worker starts it without a claim of its
own (apalis_postgres.handing).

A handed task is an ordinary claim, so it keeps every promise a claim keeps: a worker that
vanished gives it back through the orphan sweep, a worker that stops gives back the one still on
its way, a NOTIFY missed while the LISTEN connection was down is asked for again, and nothing is
handed out of order, out of a paused queue, or past a listing's time."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status, Task
from apalis_postgres import PostgresStore
from apalis_postgres.connection import Database
from apalis_postgres.handing import Handing
from apalis_sql import SqlQueue

from .test_redis_backend import until, worker


class Given:
    """What a push handed to the workers listed by `list_idle`, by worker id."""

    def __init__(self) -> None:
        self.tasks: dict[str, list[Task[bytes]]] = {}

    def __call__(self, worker_id: str, tasks: list[Task[bytes]]) -> None:
        self.tasks.setdefault(worker_id, []).extend(tasks)


async def list_idle(store: PostgresStore, queue: str, worker_id: str, given: Given) -> list[Task[bytes]]:
    """A claim by `worker_id` as its poll stream makes it: one that finds nothing lists it idle."""
    db = store.database
    db.handing.enlist(queue, WorkerContext(id=worker_id, name=worker_id, queue=queue), given)
    db.listen(queue)
    await db.listening()
    return await db.claim(queue, worker_id, 1)


async def listing(store: PostgresStore, worker_id: str) -> tuple[bool, str | None] | None:
    """The worker's row of `idle_workers`: (listed, handed), or None."""
    query = (
        "SELECT channel <> '' AND until >= extract(epoch FROM now()), handed"
        f' FROM "{store.config.schema}".idle_workers WHERE worker = %s'
    )
    rows = await store.database.pool.run(lambda conn: _all(conn, query, worker_id))
    return (rows[0][0], rows[0][1]) if rows else None


async def _all(conn: psycopg.AsyncConnection[Any], query: str, *args: Any) -> list[Any]:
    return await (await conn.execute(query.encode(), args)).fetchall()


async def status_of(q: SqlQueue, task_id: str) -> tuple[Status, str | None, int]:
    task = await q.get(task_id)
    assert task is not None
    return task.ctx.status, task.ctx.lock_by, task.ctx.attempts


async def listed_idle(store: PostgresStore, worker_id: str) -> None:
    """Return once `worker_id` is listed idle."""
    deadline = time.monotonic() + 10
    while (row := await listing(store, worker_id)) is None or not row[0]:
        assert time.monotonic() < deadline, "never listed idle"
        await asyncio.sleep(0.02)


async def test_an_idle_worker_starts_pushed_tasks_without_claiming_them(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = postgres_store.backend("handed", codec=JsonCodec())
    started: list[Task[bytes]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(task)

    running = worker(q, handler, poll_interval=30.0)
    worker_id = running.worker.context.id
    await listed_idle(postgres_store, worker_id)  # its first claim found nothing
    claims = 0

    async def no_claim(self: Database, queue: str, worker_id: str, limit: int) -> list[Task[bytes]]:
        nonlocal claims
        claims += 1
        return []

    monkeypatch.setattr(Database, "claim", no_claim)  # from now on the worker's own claims find nothing
    first = await q.push({"n": 1})
    await until(lambda: len(started) == 1)
    # The acknowledgement of the first (which claims ahead and finds nothing) lists it again.
    deadline = time.monotonic() + 10
    while (await status_of(q, first))[0] is not Status.DONE:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await listed_idle(postgres_store, worker_id)
    second = await q.push({"n": 2})
    await until(lambda: len(started) == 2)
    await running.stop()
    assert [t.id for t in started] == [first, second]
    assert [(json.loads(t.args), t.ctx.attempts, t.ctx.lock_by) for t in started] == [
        ({"n": 1}, 1, worker_id),
        ({"n": 2}, 1, worker_id),
    ]
    assert [(await status_of(q, i))[0] for i in (first, second)] == [Status.DONE, Status.DONE]


@pytest.mark.parametrize("beat_after", [False, True], ids=["killed-idle", "killed-after-a-beat"])
async def test_a_task_handed_to_a_worker_that_vanished_comes_back(
    postgres_store: PostgresStore, beat_after: bool
) -> None:
    q = postgres_store.backend("ghost", codec=JsonCodec(), max_attempts=3)
    ghost = WorkerContext(id="ghost", name="ghost", queue="ghost", keep_alive=0.1, stale_after=0.3)
    beats = q.heartbeat(ghost)
    await anext(beats)  # registered (its stream is left open: no farewell)
    await list_idle(postgres_store, "ghost", "ghost", Given())
    task_id = await q.push({"x": 1})
    assert await status_of(q, task_id) == (Status.RUNNING, "ghost", 1)
    if beat_after:
        await anext(beats)  # alive after the hand-over: the task reached it, then it vanished
    started: list[Task[bytes]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(task)

    running = worker(q, handler, keep_alive=0.1, stale_after=0.3)
    await until(lambda: bool(started))
    await running.stop()
    # The sweep counts the attempt of a worker seen alive after the hand-over, not of one
    # killed while idle (never received by a handler).
    assert [(t.id, t.ctx.attempts) for t in started] == [(task_id, 2 if beat_after else 1)]


async def test_a_worker_that_stops_gives_back_the_task_on_its_way(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = postgres_store.backend("leaving", codec=JsonCodec())
    me = WorkerContext(id="leaving", name="leaving", queue="leaving")
    beats = q.heartbeat(me)
    await anext(beats)
    monkeypatch.setattr(Handing, "heard", lambda self, payload: None)  # the NOTIFY never arrives
    await list_idle(postgres_store, "leaving", "leaving", Given())
    task_id = await q.push({"x": 1})
    assert await status_of(q, task_id) == (Status.RUNNING, "leaving", 1)
    await beats.aclose()  # type: ignore[attr-defined]  # the farewell: it never received the task
    assert await status_of(q, task_id) == (Status.PENDING, None, 0)
    assert await listing(postgres_store, "leaving") is None


async def test_a_task_whose_notify_was_missed_is_given_once_listening_again(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = postgres_store.backend("missed", codec=JsonCodec())
    given = Given()
    heard = Handing.heard
    monkeypatch.setattr(Handing, "heard", lambda self, payload: None)  # lost with the LISTEN connection
    await list_idle(postgres_store, "missed", "w1", given)
    task_id = await q.push({"x": 1})
    await asyncio.sleep(0.1)
    assert given.tasks == {}
    await postgres_store.database.handing.rejoined()  # listening again: asks what it may have missed
    assert [(t.id, t.ctx.attempts, t.ctx.lock_by) for t in given.tasks["w1"]] == [(task_id, 1, "w1")]
    monkeypatch.setattr(Handing, "heard", heard)
    await postgres_store.database.handing.rejoined()  # asked again: what it has is not given twice
    assert len(given.tasks["w1"]) == 1


async def test_a_task_on_its_way_keeps_its_worker_from_being_listed_again(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = postgres_store.backend("slots", codec=JsonCodec())
    given = Given()
    heard = Handing.heard
    monkeypatch.setattr(Handing, "heard", lambda self, payload: None)  # not arrived yet
    await list_idle(postgres_store, "slots", "w1", given)
    first = await q.push({"n": 1})
    assert (await status_of(q, first))[:2] == (Status.RUNNING, "w1")
    # w1 claims again before the task reached it: it finds nothing but is not listed again.
    assert await postgres_store.database.claim("slots", "w1", 1) == []
    second = await q.push({"n": 2})
    assert (await status_of(q, second))[:2] == (Status.PENDING, None)
    # Once it has the first task, its claim takes the second.
    monkeypatch.setattr(Handing, "heard", heard)
    await postgres_store.database.handing.rejoined()
    assert [t.id for t in given.tasks["w1"]] == [first]
    assert [t.id for t in await postgres_store.database.claim("slots", "w1", 1)] == [second]


async def test_nothing_is_handed_out_of_order_out_of_a_paused_queue_or_past_a_listing(
    postgres_store: PostgresStore,
) -> None:
    q = postgres_store.backend("held", codec=JsonCodec())
    given = Given()
    await list_idle(postgres_store, "held", "w1", given)
    await q.pause()
    paused = await q.push({"n": 1})
    assert (await status_of(q, paused))[0] is Status.PENDING
    await q.resume()
    waiting = await q.push({"n": 2})  # a ready task is served before any handing
    assert (await status_of(q, waiting))[0] is Status.PENDING
    await q.cancel(paused, "out of the way")
    await q.cancel(waiting, "out of the way")
    later = await q.push({"n": 3}, delay=60)  # not due: the claim would not take it either
    assert (await status_of(q, later))[0] is Status.PENDING
    big = await q.push({"blob": "x" * 9000})  # its NOTIFY would pass 8,000 bytes
    assert (await status_of(q, big))[0] is Status.PENDING
    await q.cancel(big, "out of the way")
    schema = postgres_store.config.schema
    await postgres_store.database.pool.run(
        lambda conn: conn.execute(f'UPDATE "{schema}".idle_workers SET until = 1'.encode())  # its time is past
    )
    late = await q.push({"n": 4})
    assert (await status_of(q, late))[0] is Status.PENDING
    assert given.tasks == {}


async def test_a_push_of_a_stored_id_stores_nothing_and_leaves_the_worker_listed(
    postgres_store: PostgresStore,
) -> None:
    q = postgres_store.backend("stored", codec=JsonCodec())
    given = Given()
    await list_idle(postgres_store, "stored", "w1", given)
    later = await q.push({"n": 1}, delay=60, task_id="t-later")  # not due: not handed
    again = await q.push({"n": 2}, task_id="t-later")  # due now, but its id is taken
    assert again == later
    task = await q.get(later)
    assert task is not None
    assert (json.loads(task.args), task.ctx.status) == ({"n": 1}, Status.PENDING)  # the first push's, unchanged
    assert await listing(postgres_store, "w1") == (True, None)  # the listing was not used up
    fresh = await q.push({"n": 3})
    assert await status_of(q, fresh) == (Status.RUNNING, "w1", 1)
    await until(lambda: [t.id for t in given.tasks.get("w1", [])] == [fresh])


async def test_a_push_to_a_polled_queue_returns_once_its_task_is_on_disk(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A push to a queue whose worker was listed lately commits without waiting for the WAL flush
    # (its NOTIFY would wait for it), and makes it durable before it returns: everything written
    # before its call returned is flushed by then. The first push is handed to the idle worker,
    # the next ones wake it (busy now) to claim. Ten pushes: any other session's durable commit
    # flushes ours too, so on a busy server one push returned too early may go unseen, not ten.
    q = postgres_store.backend("durable", codec=JsonCodec())
    given = Given()
    await list_idle(postgres_store, "durable", "w1", given)
    db = postgres_store.database
    written: list[str] = []
    fetch = db.fetch

    async def lsn(conn: psycopg.AsyncConnection[Any], what: str) -> Any:
        return (await _all(conn, f"SELECT pg_current_wal_{what}_lsn() - '0/0'::pg_lsn"))[0][0]

    async def noting_fetch(name: str, params: Any) -> Any:
        rows = await fetch(name, params)
        if name == "enqueue_hand":
            written.append(await db.pool.run(lambda conn: lsn(conn, "insert")))
        return rows

    monkeypatch.setattr(db, "fetch", noting_fetch)
    for n, status in enumerate([(Status.RUNNING, "w1", 1), *[(Status.PENDING, None, 0)] * 9]):
        task_id = await q.push({"n": n})
        flushed = await db.pool.run(lambda conn: lsn(conn, "flush"))
        assert await status_of(q, task_id) == status  # handed, then left to be claimed
        assert len(written) == n + 1
        assert flushed >= written[n], "the push returned before its task was on disk"
    await until(lambda: len(given.tasks.get("w1", [])) == 1)


async def test_a_keyed_or_unique_task_is_never_handed(postgres_store: PostgresStore) -> None:
    q = postgres_store.backend("keyed", codec=JsonCodec())
    given = Given()
    await list_idle(postgres_store, "keyed", "w1", given)
    keyed = await q.push({"n": 1}, limit_key="a")
    unique = await q.push({"n": 2}, unique={"key": "u"})
    assert [(await status_of(q, i))[0] for i in (keyed, unique)] == [Status.PENDING, Status.PENDING]
    assert given.tasks == {}


async def test_a_worker_polling_again_after_an_error_is_listed_again(postgres_store: PostgresStore) -> None:
    q = postgres_store.backend("again", codec=JsonCodec())
    given = Given()
    await list_idle(postgres_store, "again", "w1", given)
    await q.push({"n": 1})
    await until(lambda: "w1" in given.tasks)  # received, and still running
    # Its poll stream starts anew (after a lost connection, say) and claims nothing: what it
    # received is not mistaken for a task still on its way, so pushes may hand to it again.
    assert await list_idle(postgres_store, "again", "w1", given) == []
    row = await listing(postgres_store, "w1")
    assert row is not None
    assert row[0]


async def test_a_task_whose_notify_is_late_runs_once(
    postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handed task's NOTIFY held up (a slow LISTEN connection) past its worker's stale_after:
    # its worker's heartbeats, which do not know of the task, must not give it back as a lost
    # claim, or another claim would run it while the NOTIFY is still on its way.
    q = postgres_store.backend("late", codec=JsonCodec())
    runs: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        runs.append(task.id)

    held: list[str] = []
    heard = Handing.heard
    monkeypatch.setattr(Handing, "heard", lambda self, payload: held.append(payload))
    running = worker(q, handler, keep_alive=0.1, stale_after=0.3, poll_interval=0.05)
    worker_id = running.worker.context.id
    await listed_idle(postgres_store, worker_id)
    task_id = await q.push({"n": 1})
    await until(lambda: bool(held))
    assert await status_of(q, task_id) == (Status.RUNNING, worker_id, 1)
    await asyncio.sleep(1.0)  # beats, and idle claims, past stale_after
    monkeypatch.setattr(Handing, "heard", heard)
    postgres_store.database.handing.heard(held[0])  # the NOTIFY arrives at last
    await until(lambda: bool(runs))
    deadline = time.monotonic() + 10
    while (await status_of(q, task_id))[0] is not Status.DONE:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    await running.stop()
    assert runs == [task_id]
