"""MySQL/MariaDB claims ahead: an ack claims ahead only while the worker's last claim came back
full, so acks stay one statement when tasks trickle in.

The cases every store that claims ahead shares are in tests/conformance/test_claims_ahead.py."""

from __future__ import annotations

from typing import Any

from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status
from apalis_mysql import MysqlStore


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
