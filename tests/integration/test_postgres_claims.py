"""PostgreSQL claims ahead: the statement that acknowledges a worker's runs announces the tasks it
makes ready.

The cases every store that claims ahead shares are in tests/conformance/test_claims_ahead.py."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.fleet import FleetLimits
from apalis_cli.service import Outcome
from apalis_cli.task import Status
from apalis_postgres import PostgresStore
from psycopg import sql


def context(worker_id: str, slots: int = 1, **settings: Any) -> WorkerContext:
    return WorkerContext(id=worker_id, name=worker_id, queue="q", free_slots=lambda: slots, **settings)


@pytest.mark.parametrize("outcome", [Outcome.release(), Outcome.retry("flaky", 0.0)], ids=["released", "retried-now"])
async def test_a_task_ready_again_is_announced_to_listening_workers_once_acknowledged(
    postgres_store: PostgresStore, outcome: Outcome
) -> None:
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=3)
    await q.push("a")
    stream = q.poll_compact(context("w1"))
    task = await anext(stream)
    assert task is not None
    async with await psycopg.AsyncConnection.connect(postgres_store.config.url, autocommit=True) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(postgres_store.config.schema)))
        await q.ack_batch([(task, outcome)])
        heard = [(n.channel, n.payload) async for n in listener.notifies(timeout=5.0, stop_after=1)]
    await stream.aclose()  # type: ignore[attr-defined]
    assert heard == [(postgres_store.config.schema, "q")]


@pytest.mark.parametrize(("slots", "told"), [(2, True), (5, False)], ids=["took-all-it-asked", "took-fewer"])
async def test_a_limited_claim_that_took_all_it_asked_for_tells_the_other_daemons(
    postgres_store: PostgresStore, slots: int, told: bool
) -> None:
    """Another daemon idle since every key was at its limit hears of the slots a claim could not
    fill; a claim that took fewer than it asked for took all there was, and tells no one."""
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=1)
    for n in range(3):
        await q.push({"account": f"k{n}"}, limit_key=f"k{n}")
    limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
    async with await psycopg.AsyncConnection.connect(postgres_store.config.url, autocommit=True) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(postgres_store.config.schema)))
        stream = q.poll_compact(context("w1", slots=slots, limits=limits))
        assert await anext(stream) is not None
        heard = [(n.channel, n.payload) async for n in listener.notifies(timeout=1.0, stop_after=1)]
        await stream.aclose()  # type: ignore[attr-defined]
    assert heard == ([(postgres_store.config.schema, "q")] if told else [])


async def test_tasks_without_a_key_run_behind_a_keyed_backlog_deeper_than_one_scan(
    postgres_store: PostgresStore,
) -> None:
    """A limited claim finds the tasks pushed without a key however many keyed tasks come before
    them in the queue's order (they have an index of their own, migration 0014). (Tasks without
    a key share the limit as one key of their own: one at a time here.)"""
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=1)
    await q.push_bulk([{"account": "hot", "n": n} for n in range(2500)], limit_key="hot", priority=5)
    keyless = set(await q.push_bulk([{"n": n} for n in range(3)]))
    limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
    stream = q.poll_compact(context("w1", slots=4, limits=limits))
    got: list[Any] = []
    try:
        for _ in range(100):  # each turn of the stream is a claim, or an idle wait after one
            task = await anext(stream)
            if task is not None:
                got.append(task)
                if task.id in keyless:
                    await q.ack_batch([(task, Outcome.done())])
            if keyless <= {t.id for t in got}:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert keyless <= {t.id for t in got}, "every task without a key ran"
    assert sum(t.id not in keyless for t in got) == 1, "one task of the key at its limit, no more"


async def test_a_task_without_a_key_behind_a_saturated_key_is_taken_by_the_first_claim_with_room(
    postgres_store: PostgresStore,
) -> None:
    """A task pushed without a key waits for no claim but one with room for it, however deep the
    backlog of a key at its limit before it: the claim that takes the key's one task takes it too.
    (Before, each claim read the next 1,000 ready tasks for keyless ones, so this one, behind
    2,500, came a claim or two later: in a daemon that keeps up, a poll interval or two.)"""
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=1)
    hot = await q.push_bulk([{"account": "hot", "n": n} for n in range(2500)], limit_key="hot", priority=5)
    keyless = await q.push({"n": 0})
    limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
    stream = q.poll_compact(context("w1", slots=4, limits=limits))
    try:
        first, second = await anext(stream), await anext(stream)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert [None if t is None else t.id for t in (first, second)] == [hot[0], keyless], (
        "the saturated key's first task, then the task without a key, from the same claim"
    )


async def test_keys_at_a_per_key_limit_take_turns_in_the_order_their_tasks_were_pushed(
    postgres_store: PostgresStore,
) -> None:
    """Under a per-key concurrency the keys' tasks are claimed first pushed, first taken: a key's
    first task before any key's second (migration 0016 numbers each task within its key). Before,
    a claim walked the keys in their names' order, whenever their tasks came."""
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=1)
    pushed = [await q.push({"account": account}, limit_key=account) for account in ("z", "m", "z", "a")]
    limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
    stream = q.poll_compact(context("w1", slots=1, limits=limits))
    taken: list[str] = []
    try:
        for _ in range(3):
            task = await anext(stream)
            assert task is not None
            taken.append(task.id)
            await q.ack_batch([(task, Outcome.done())])
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert taken == [pushed[0], pushed[1], pushed[3]], "z's first task, then m's, then a's; z's second after them"


async def test_a_key_with_room_behind_more_keys_at_their_limit_than_a_claim_scans_is_taken(
    postgres_store: PostgresStore,
) -> None:
    """A limited claim reads a window of the interleaved keyed tasks (twice what it wants, and 64
    more); where every task there belongs to a key at its limit, the claim still finds a key
    with room past them (the walk from key to key does), at once rather than never."""
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=1)
    keys = [f"k{n:03}" for n in range(100)]
    for _ in range(2):
        for key in keys:
            await q.push({"account": key}, limit_key=key)
    limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
    holder = q.poll_compact(context("w0", slots=100, limits=limits))
    stream = q.poll_compact(context("w1", slots=1, limits=limits))
    try:
        held = [await anext(holder) for _ in keys]
        assert len({t.id for t in held if t is not None}) == len(keys), "every key's first task runs"
        late = await q.push({"account": "late"}, limit_key="late")  # after all 100 keys' second tasks
        task = await anext(stream)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await holder.aclose()  # type: ignore[attr-defined]
    assert task is not None
    assert task.id == late, "the task of the key with room, past the 100 keys' tasks at their limit"


async def test_a_batch_of_runs_that_returned_nothing_ends_them_done_and_tells_their_waiters(
    postgres_store: PostgresStore,
) -> None:
    # Such a batch is sent as its ids alone (`ack_done`): it still ends only the runs still held
    # by the worker, and tells whoever waits for them.
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=3)
    ids = [await q.push({"n": n}) for n in range(3)]
    stream = q.poll_compact(context("w1", slots=3))
    tasks = [await anext(stream) for _ in range(3)]
    assert all(task is not None for task in tasks)
    lost = ids[2]  # its lease lost meanwhile: the orphan sweep gave it to another worker
    schema = sql.Identifier(postgres_store.config.schema)
    async with await psycopg.AsyncConnection.connect(postgres_store.config.url, autocommit=True) as conn:
        await conn.execute(sql.SQL("UPDATE {}.tasks SET lock_by = 'w2' WHERE id = %s").format(schema), (lost,))
    waiting = asyncio.ensure_future(q.wait(ids[0], timeout=30))
    await asyncio.sleep(0.2)  # its waiter listens
    await q.ack_batch([(task, Outcome.done(None)) for task in tasks if task is not None])
    waited = await waiting
    await stream.aclose()  # type: ignore[attr-defined]
    assert waited is not None
    assert waited.ctx.status is Status.DONE
    states = [(t.ctx.status, t.ctx.lock_by, t.ctx.attempts) for t in [await q.get(i) for i in ids] if t is not None]
    assert states == [(Status.DONE, None, 1), (Status.DONE, None, 1), (Status.RUNNING, "w2", 1)]


async def test_claims_keep_one_plan_per_connection_behind_a_backlog_the_statistics_show(
    postgres_store: PostgresStore,
) -> None:
    # With a backlog in the table's statistics, a claim's LIMIT (a parameter) makes the generic
    # plan look dearer than a custom one, so PostgreSQL planned every claim and acknowledgement
    # again (half the server's CPU of a lone task). The worker's claims keep the generic plan.
    db = postgres_store.database
    schema = sql.Identifier(postgres_store.config.schema)
    q = postgres_store.backend("q", codec=JsonCodec(), max_attempts=1)
    await q.push_bulk(list(range(3000)))
    async with await psycopg.AsyncConnection.connect(postgres_store.config.url, autocommit=True) as conn:
        await conn.execute(sql.SQL("ANALYZE {}.tasks").format(schema))
    stream = q.poll_compact(context("w1", slots=5))
    for _ in range(12):  # claims and acknowledgements that claim ahead, beyond psycopg's five
        batch = [await anext(stream) for _ in range(5)]
        await q.ack_batch([(task, Outcome.done(None)) for task in batch if task is not None])
    await stream.aclose()  # type: ignore[attr-defined]

    async def plans(conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, int, str]]:
        cursor = await conn.execute(
            "SELECT generic_plans, custom_plans, statement FROM pg_prepared_statements", prepare=False
        )
        return await cursor.fetchall()

    used = [row for row in await db.claims.run(plans) if "UPDATE" in row[2]]
    assert used, "no claim ran on the claims' sessions"
    assert all(custom <= 0 for _, custom, _ in used), [(generic, custom) for generic, custom, _ in used]


@pytest.mark.parametrize("first", ["limit_claim", "ack_done_limit_claim"], ids=["polled", "carried-by-ack"])
async def test_a_limited_claim_planned_while_the_table_was_near_empty_reads_no_whole_table_later(
    postgres_store: PostgresStore, first: str
) -> None:
    """`limit_claim` keeps each statement's generic plan for the life of its session, made at the
    session's first claim. A daemon that started on a near-empty queue (on a server without
    autovacuum, whose statistics never see the backlog come) had its claims' lookups of the chosen
    rows planned as scans of the whole table, twice a claim: 8-10 times the server's CPU a task
    in a saturated drain (bench.limits after a warm-up of 100 tasks: 410-644 tasks/s against
    3,153-3,260). The claim plans without sequential scans where an index or the rows' places
    serve (`_limit_plans`), whichever statement's call made them."""
    db = postgres_store.database
    schema = postgres_store.config.schema
    small = postgres_store.backend("small", codec=JsonCodec(), max_attempts=1)
    big = postgres_store.backend("big", codec=JsonCodec(), max_attempts=1)
    await small.push_bulk([{"account": f"k{n}"} for n in range(3)], limit_key="k0")

    def params(queue: str) -> dict[str, Any]:
        return {
            "queue": queue,
            "worker": "w1",
            "want": 10,
            "after": None,
            "concurrency": 1,
            "keyed_concurrency": True,
            "rate": None,
            "per": 1.0,
            "keyed_rate": False,
            "scope": db.lock_scope("limits", queue),
            "forget": False,
            "keyless_priority": None,
            "keyless_run_at": None,
            "keyless_id": None,
            "ids": [],  # an acknowledgement of nothing (`ack_done_limit_claim`), claiming nothing ahead
            "lock_by": "w1",
            "claim_n": None,
            "slots": [],
        }

    async with await psycopg.AsyncConnection.connect(postgres_store.config.url, autocommit=True) as conn:
        claimed = await (await conn.execute(db.sql[first], params("small"))).fetchall()
        assert len(claimed) == 1 + 1, "the near-empty queue's one task of its key, then the account"
        for start in range(0, 2000, 1000):  # the backlog comes after the plans were made
            await big.push_bulk([{"n": n} for n in range(start, start + 1000)], limit_key="k")
        for n in range(20):
            await big.push({"account": f"k{n}"}, limit_key=f"k{n}")
        scans = (
            "SELECT seq_scan, seq_tup_read FROM pg_stat_xact_user_tables WHERE schemaname = %s AND relname = 'tasks'"
        )
        # The backend's counts not yet reported, which it reports only outside a transaction:
        # read on both sides of the claim, in one transaction.
        async with conn.transaction():
            before = await (await conn.execute(scans, (schema,))).fetchone()
            claimed = await (await conn.execute(db.sql["limit_claim"], params("big"))).fetchall()
            after = await (await conn.execute(scans, (schema,))).fetchone()
    assert before is not None
    assert after is not None
    seq = (after[0] - before[0], after[1] - before[1])
    assert len(claimed) == 10 + 1, "ten tasks of ten keys, then the account"
    assert seq == (0, 0), f"the claim read the whole tasks table: (scans, rows read) {seq}"
