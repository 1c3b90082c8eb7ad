"""PostgreSQL: a heartbeat whose sweep starts a VACUUM of the tasks table (the server's
autovacuum off) does not wait for it.

A VACUUM reads every index of the table, seconds on a large one. A beat that waited for it was
that late to the other daemons: past stale_after they found its worker stale and recovered its
running tasks, which then ran a second time (as MariaDB's wake-ups did, test_mysql_sweep.py).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status
from apalis_postgres import PostgresStore
from apalis_sql import queue as sql_queue
from psycopg import sql

from .conftest import beating_all_along, make_postgres_store

STALE_AFTER = 1.0


def _context(worker_id: str, running: tuple[str, ...] = (), retention: float = 7 * 86400) -> WorkerContext:
    return WorkerContext(
        id=worker_id,
        name=worker_id,
        queue="q",
        stale_after=STALE_AFTER,
        keep_alive=0.1,
        retention=retention,
        running=lambda: running,
    )


async def _running_under(url: str, schema: str, worker_id: str, task_id: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL(
                "UPDATE {}.tasks SET status = 'running', attempts = 1, lock_by = %s,"
                " lock_at = extract(epoch FROM now()) WHERE id = %s"
            ).format(sql.Identifier(schema)),
            (worker_id, task_id),
        )


async def test_a_beat_whose_sweep_tidies_the_table_does_not_wait_for_the_vacuum(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = postgres_store.backend("q", codec=JsonCodec())
    running = await queue.push({"running": True})
    await _running_under(postgres_url, postgres_schema, "w1", running)
    hold, held = asyncio.Event(), asyncio.Event()
    vacuums = 0

    async def vacuum_held() -> None:  # a VACUUM of a large table
        nonlocal vacuums
        vacuums += 1
        held.set()
        async with asyncio.timeout(STALE_AFTER * 5):
            await hold.wait()

    monkeypatch.setattr(postgres_store.database, "tidy", vacuum_held)
    other = make_postgres_store(postgres_url, postgres_schema)  # w2's process: its own contact with the server
    await other.open()
    w1 = queue.heartbeat(_context("w1", (running,)))
    w2 = other.backend("q", codec=JsonCodec()).heartbeat(_context("w2"))
    try:
        async with beating_all_along(w1, w2):
            try:
                async with asyncio.timeout(10):
                    await held.wait()  # w1 swept (after stale_after of beats) and vacuums
                await asyncio.sleep(STALE_AFTER * 2)  # the vacuum runs past stale_after; w2 sweeps meanwhile
                assert vacuums == 1, "a second vacuum started while the first ran"
            finally:
                hold.set()
    finally:
        await other.close()
    task = await queue.get(running)
    assert task is not None
    assert (task.ctx.status, task.ctx.lock_by) == (Status.RUNNING, "w1"), task.ctx.last_error


async def _expired(url: str, schema: str, task_ids: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL(
                "UPDATE {}.tasks SET status = 'done', done_at = extract(epoch FROM now()) - 3600 WHERE id = ANY(%s)"
            ).format(sql.Identifier(schema)),
            (task_ids,),
        )


async def _expired_at(url: str, schema: str, task_id: str, ago: float) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(
            sql.SQL("UPDATE {}.tasks SET done_at = extract(epoch FROM now()) - %s WHERE id = %s").format(
                sql.Identifier(schema)
            ),
            (ago, task_id),
        )


async def test_a_beat_whose_sweep_purges_a_backlog_does_not_wait_for_the_purge(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge of the tasks past their retention ran in the beat's own transaction, whose
    last_seen is the transaction's start: a purge of many tasks (retention shortened) made the
    beat that old once it committed, and the other daemon's next sweep took its running task."""
    queue = postgres_store.backend("q", codec=JsonCodec())
    running = await queue.push({"running": True})
    await _running_under(postgres_url, postgres_schema, "w1", running)
    slow = b"SELECT pg_sleep(%(stale)s) FROM (SELECT %(queue)s, %(retention)s, %(limit)s) AS p"
    sql_of = postgres_store.database.sql
    monkeypatch.setitem(sql_of, "purge_expired", slow.replace(b"%(stale)s", str(STALE_AFTER * 2.5).encode()))
    other = make_postgres_store(postgres_url, postgres_schema)  # w2's process: its own contact with the server
    await other.open()
    w1 = queue.heartbeat(_context("w1", (running,)))
    w2 = other.backend("q", codec=JsonCodec()).heartbeat(_context("w2"))
    try:
        async with beating_all_along(w1, w2):
            await asyncio.sleep(STALE_AFTER * 5)  # w1 sweeps (its purge takes 2.5 stale_after), so does w2
    finally:
        await other.close()
    task = await queue.get(running)
    assert task is not None
    assert (task.ctx.status, task.ctx.lock_by) == (Status.RUNNING, "w1"), task.ctx.last_error


async def test_a_sweep_purges_a_backlog_of_expired_tasks_in_batches(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog larger than a batch goes whole, a transaction per batch, in one tidy."""
    monkeypatch.setattr(sql_queue, "PURGE_BATCH", 2)
    queue = postgres_store.backend("q", codec=JsonCodec())
    expired = [await queue.push({"n": n}) for n in range(5)]
    kept = await queue.push({"kept": True})
    await _expired(postgres_url, postgres_schema, [*expired, kept])
    await _expired_at(postgres_url, postgres_schema, kept, 30)  # done within the retention
    await queue._tidy(60)  # what a beat that swept starts beside it
    assert [await queue.get(task_id) for task_id in expired] == [None] * 5
    assert await queue.get(kept) is not None
