"""What is special to the control plane of the SQL stores (PostgreSQL, MySQL/MariaDB): a worker
hears of a cancel of its run long before its next heartbeat, from another process (NOTIFY;
MySQL: its worker asking between heartbeats), and a bulk action goes batch by batch.

The shared behaviour is proven by the conformance suite (`tests/conformance/test_control_*.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from apalis_cli.codec import JsonCodec
from apalis_cli.control import BulkAction, BulkFilter, CancelState
from apalis_cli.errors import Abort
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_mysql import MysqlStore
from apalis_postgres import PostgresStore

from .conftest import make_mysql_store, make_postgres_store

SqlStore = PostgresStore | MysqlStore


@pytest.fixture(params=["postgres", "mysql"])
async def stores(
    request: pytest.FixtureRequest, postgres_url: str, postgres_schema: str, mysql_url: str
) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two stores on the same tables, as two processes have (no in-process shortcut between them)."""
    if request.param == "postgres":
        pair: tuple[SqlStore, SqlStore] = (
            make_postgres_store(postgres_url, postgres_schema),
            make_postgres_store(postgres_url, postgres_schema),
        )
    else:
        pair = (make_mysql_store(mysql_url), make_mysql_store(mysql_url))
    for store in pair:
        await store.open()
    yield pair
    for store in pair:
        await store.close()


async def test_a_cancel_from_another_process_stops_a_run_long_before_the_next_heartbeat(
    stores: tuple[SqlStore, SqlStore],
) -> None:
    daemon, operator = stores
    started, stopped = asyncio.Event(), asyncio.Event()

    async def long(args: Any, task: Task[bytes]) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    queue = daemon.backend("q", codec=JsonCodec(), max_attempts=3)
    worker = Worker(name="w", backend=queue, handler=long, keep_alive=30.0, poll_interval=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    control = operator.backend("q", codec=JsonCodec())
    try:
        task_id = await control.push({"n": 1})
        async with asyncio.timeout(10):
            await started.wait()
        begun = time.monotonic()
        assert (await control.cancel(task_id, "enough")).state is CancelState.REQUESTED
        async with asyncio.timeout(10):
            await stopped.wait()
        assert time.monotonic() - begun < 2.0, "told by its heartbeat (every 30 s), not by the push path"
        ended = await control.wait(task_id, timeout=10)
        assert ended is not None
        assert (ended.ctx.status, ended.ctx.last_error) == (Status.CANCELLED, "enough")
    finally:
        stop.set()
        await running


async def test_a_bulk_action_goes_batch_by_batch_and_stops_at_its_limit(stores: tuple[SqlStore, SqlStore]) -> None:
    store, _ = stores
    store.database.bulk_batch = 3  # ten tasks: four statements
    queue = store.backend("q", codec=JsonCodec())
    ids = await queue.push_bulk(list(range(10)))

    async def refuse(args: Any, task: Task[bytes]) -> None:
        raise Abort("disk full")

    worker = Worker(name="w", backend=queue, handler=refuse, concurrency=10, poll_interval=0.05)
    await worker.run(asyncio.Event(), burst=True)
    killed = BulkFilter(statuses=frozenset({Status.KILLED}))
    assert await queue.bulk(BulkAction.RETRY, killed, dry_run=True) == 10

    assert await queue.bulk(BulkAction.RETRY, BulkFilter(statuses=killed.statuses, limit=7)) == 7
    assert await queue.bulk(BulkAction.RETRY, killed) == 3
    assert (await queue.stats()).counts[Status.PENDING] == 10
    assert await queue.bulk(BulkAction.CANCEL, BulkFilter()) == 10
    assert {t.ctx.status for t in [await queue.get(i) for i in ids] if t is not None} == {Status.CANCELLED}
