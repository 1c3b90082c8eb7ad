"""MySQL/MariaDB claims ahead: an ack claims ahead only while the worker's last claim came back
full, so acks stay one statement when tasks trickle in.

The cases every store that claims ahead shares are in tests/conformance/test_claims_ahead.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.fleet import FleetLimits
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_mysql import MysqlStore

from ..acceptance.chaos_servers import free_port, mariadb_database, private_mariadb
from .conftest import make_mysql_store


async def test_acks_claim_ahead_only_while_claims_come_back_full(mysql_store: MysqlStore) -> None:
    q = mysql_store.backend("q", codec=JsonCodec())
    (first,) = await q.push_bulk(["a"])
    stream = q.poll_compact(WorkerContext(id="w1", name="w1", queue="q", free_slots=lambda: 2))
    task = await anext(stream)  # asked for two, got one: no backlog
    assert task is not None
    assert task.id == first
    # With a key, so the push does not hand it to the idle worker itself (test_mysql_handing.py).
    second = await q.push("b", idempotency_key="b")
    await q.ack_batch([(task, Outcome.done())])
    left = await q.get(second)
    assert left is not None
    assert (left.ctx.status, left.ctx.attempts, left.ctx.lock_by) == (Status.PENDING, 0, None)  # left to the poller
    again = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert again is not None
    assert again.id == second


async def test_a_claim_passes_the_tasks_another_transaction_holds(mysql_store: MysqlStore) -> None:
    """Claims read their candidates without locking, then lock them one by one: tasks another
    claim holds at that moment are passed by, and the claim still fills up from those after."""
    q = mysql_store.backend("q", codec=JsonCodec())
    ids = await q.push_bulk([0, 1, 2, 3, 4, 5])
    tasks = f"{mysql_store.config.table_prefix}tasks"

    async def while_holding_the_first_three(conn: Any) -> list[str]:
        cursor = conn.cursor()
        await cursor.execute("START TRANSACTION")
        try:
            for held in ids[:3]:  # one at a time: an IN list would lock every row it scans
                await cursor.execute(f"SELECT id FROM {tasks} WHERE id = %s FOR UPDATE", (held,))
            stream = q.poll_compact(WorkerContext(id="w2", name="w2", queue="q", free_slots=lambda: 3))
            claimed = [await anext(stream) for _ in range(3)]
            await stream.aclose()  # type: ignore[attr-defined]
            return [task.id for task in claimed if task is not None]
        finally:
            await cursor.execute("ROLLBACK")

    assert await mysql_store.database.run(while_holding_the_first_three) == ids[3:]


async def _status(conn: Any, query: str) -> int:
    cursor = conn.cursor()
    await cursor.execute(query)
    ((value,),) = await cursor.fetchall()
    return int(value)


@pytest.fixture
def private_url() -> Iterator[str]:
    """The URL of a database on a private MariaDB: its InnoDB counters are the test's alone."""
    with private_mariadb(free_port()) as server:
        yield mariadb_database(server, "room")


@pytest.mark.parametrize("limited", [False, True], ids=["plain", "keyed"])
async def test_a_drain_claims_rows_where_they_lie(private_url: str, limited: bool) -> None:
    """A claim writes the worker's id and its time over NULLs, and a page filled by pushes has no
    room for rows that grow: before migration 0008, InnoDB reorganized a page every few claimed
    rows and logged the whole of it (~3 KB of redo a task over claim and acknowledgement). A push
    now leaves room on the row that the claim takes back."""
    store = make_mysql_store(private_url)
    await store.open()
    try:
        q = store.backend("q", codec=JsonCodec())
        n = 1000
        limits = FleetLimits(key="account", concurrency=50, keyed_concurrency=True) if limited else None
        for key in range(10):  # 10 keys of 100 tasks (the keyed claim's path), or keyless
            await q.push_bulk([{"n": i} for i in range(n // 10)], limit_key=f"k{key}" if limited else None)
        reorgs = "SELECT count FROM information_schema.INNODB_METRICS WHERE name = 'index_page_reorg_attempts'"
        lsn = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'INNODB_LSN_CURRENT'"

        async def counters(conn: Any) -> tuple[int, int]:
            await conn.cursor().execute("SET GLOBAL innodb_monitor_enable = 'index_page_reorg_attempts'")
            return await _status(conn, reorgs), await _status(conn, lsn)

        reorgs0, lsn0 = await store.database.run(counters)
        worker = "w1-worker-7d9f8b6c5-x2x4z-12345-a1b2c3"  # as long as a daemon's (worker.py)
        ctx = WorkerContext(id=worker, name="w1", queue="q", concurrency=50, free_slots=lambda: 50, limits=limits)
        stream = q.poll_compact(ctx)
        batch: list[tuple[Task[bytes], Outcome]] = []
        for _ in range(n):
            task = await anext(stream)
            while task is None:
                task = await anext(stream)
            batch.append((task, Outcome.done()))
            if len(batch) == 50:
                await q.ack_batch(batch)
                batch = []
        await stream.aclose()  # type: ignore[attr-defined]
        reorgs1, lsn1 = await store.database.run(counters)
        assert (await q.stats()).counts[Status.DONE] == n
    finally:
        await store.close()
    # Before / after on a private server: plain 112-115 / 2 pages and ~2,016 / ~950 bytes a task;
    # keyed (its indexes on the key move as well) 85 / 15-23 pages and ~2,155 / 1,460-1,560 bytes.
    most_reorgs, most_redo = (40, 1900) if limited else (20, 1500)
    assert reorgs1 - reorgs0 < most_reorgs, f"{reorgs1 - reorgs0} pages reorganized for {n} tasks"
    assert (lsn1 - lsn0) / n < most_redo, f"{(lsn1 - lsn0) / n:.0f} bytes of redo a task"
