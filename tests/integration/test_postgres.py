"""What is special to PostgreSQL: LISTEN/NOTIFY wake-ups (also after a reconnect), the
advisory-locked sweep, idempotent migrations, quoted identifiers, redacted passwords."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import BackendError, ConfigError
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_postgres import PostgresStore
from apalis_postgres.listener import Listener
from apalis_sql import load_migrations
from psycopg import sql

from ..conformance.stores.postgres import drop_schema, terminate_backends
from .conftest import controls_after_migration, make_postgres_store


class Starts:
    """Records when each task's handler started."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.event = asyncio.Event()

    async def handler(self, args: Any, task: Task[bytes]) -> None:
        self.at[task.id] = time.time()
        self.event.set()


async def start_worker(
    store: PostgresStore, queue: str, starts: Starts, **options: Any
) -> tuple[Worker, asyncio.Event, asyncio.Task[None]]:
    worker = Worker(name="w", backend=store.backend(queue, codec=JsonCodec()), handler=starts.handler, **options)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    return worker, stop, running


async def pushed_start_latency(producer: PostgresStore, queue: str, starts: Starts) -> float:
    starts.event.clear()
    before = time.time()
    task_id = await producer.backend(queue, codec=JsonCodec()).push({"n": 1})
    await asyncio.wait_for(starts.event.wait(), 5)
    return starts.at[task_id] - before


async def test_an_idle_worker_is_woken_by_notify_from_another_process(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore
) -> None:
    # poll_interval is long, and the producer is another store (no shared in-process Waker):
    # only the NOTIFY can start the task quickly.
    starts = Starts()
    _, stop, running = await start_worker(postgres_store, "q", starts, poll_interval=10.0, keep_alive=1.0)
    producer = make_postgres_store(postgres_url, postgres_schema, application_name="producer")
    await producer.open()
    try:
        listener = postgres_store.database.listen()
        await asyncio.wait_for(listener.listening(), 5)
        await asyncio.sleep(0.5)  # idle long enough for the poll back-off to grow
        latencies = [await pushed_start_latency(producer, "q", starts) for _ in range(5)]
        assert max(latencies) < 0.5, latencies  # typically a few ms; loose for busy machines

        # The listener comes back after its connection is killed, and LISTENs again.
        await terminate_backends(postgres_url, postgres_schema)
        for _ in range(500):
            if listener.connections >= 2:
                break
            await asyncio.sleep(0.02)
        assert listener.connections >= 2
        await asyncio.sleep(0.3)
        assert await pushed_start_latency(producer, "q", starts) < 0.5
    finally:
        stop.set()
        await running
        await producer.close()


async def test_only_the_advisory_lock_holder_sweeps(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore
) -> None:
    queue = postgres_store.backend("q", codec=JsonCodec())
    task_id = await queue.push({"orphan": True}, max_attempts=3)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        # A task left running by a worker that vanished without a farewell.
        await admin.execute(
            sql.SQL("UPDATE {}.tasks SET status = 'running', attempts = 1, lock_by = 'ghost' WHERE id = %s").format(
                sql.Identifier(postgres_schema)
            ),
            (task_id,),
        )
        # Another sweeper holds the queue's sweep lock: this worker must leave the orphan alone.
        await admin.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))", (postgres_schema, "q"))
        starts = Starts()
        _, stop, running = await start_worker(
            postgres_store, "q", starts, keep_alive=0.1, stale_after=0.2, poll_interval=0.05
        )
        try:
            await asyncio.sleep(0.8)
            held = await queue.get(task_id)
            assert held is not None
            assert (held.ctx.status, held.ctx.lock_by) == (Status.RUNNING, "ghost")
            await admin.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", (postgres_schema, "q"))
            await asyncio.wait_for(starts.event.wait(), 5)
        finally:
            stop.set()
            await running
    done = await queue.get(task_id)
    assert done is not None
    assert done.ctx.status is Status.DONE
    assert done.ctx.attempts == 2  # the orphaned run counted


async def test_migrations_applied_twice_are_a_no_op(postgres_url: str, postgres_schema: str) -> None:
    first = make_postgres_store(postgres_url, postgres_schema)
    await first.open()
    second = make_postgres_store(postgres_url, postgres_schema)
    await second.open()
    every = [m.version for m in load_migrations("apalis_postgres")]
    try:
        assert first.migrations_applied == every
        assert second.migrations_applied == []
        await first.open()  # idempotent on an open store too
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            cursor = await admin.execute(
                sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(postgres_schema))
            )
            assert sorted(await cursor.fetchall()) == [(v,) for v in every]
            cursor = await admin.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'tasks_ready'",
                (postgres_schema,),
            )
            [(ready,)] = await cursor.fetchall()
            assert "(queue, priority DESC, run_at, id)" in ready, "ties in priority and run_at are claimed in id order"
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("bad", ['apalis"; DROP TABLE x; --', "a b", "1abc", "x" * 49, "", 7])
def test_a_malicious_or_bad_schema_name_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresStore.from_spec(
            StoreSpec(name="t", kind="postgres", url="postgresql://u@h/db", options={"schema": bad})
        )
    assert caught.value.key == "schema"


async def test_schema_names_are_quoted(postgres_url: str) -> None:
    name = f"Apalis_T_{uuid.uuid4().hex[:8]}"  # mixed case only survives when quoted
    store = make_postgres_store(postgres_url, name)
    await store.open()
    try:
        queue = store.backend("q", codec=JsonCodec())
        task_id = await queue.push(1)
        assert (await queue.get(task_id)) is not None
    finally:
        await store.close()
        await drop_schema(postgres_url, name)


async def test_passwords_never_appear_in_errors() -> None:
    secret = "s3cr3t-pw"
    with pytest.raises(ConfigError) as bad_url:
        PostgresStore.from_spec(StoreSpec(name="t", kind="postgres", url=f"mysql://u:{secret}@h/db"))
    assert secret not in str(bad_url.value)
    assert "***" in str(bad_url.value)

    store = PostgresStore.from_spec(
        StoreSpec(
            name="t",
            kind="postgres",
            url=f"postgresql://nobody:{secret}@127.0.0.1:1/db",
            options={"connect_timeout": "1s"},
        )
    )
    with pytest.raises(BackendError) as unreachable:
        await store.open()
    assert secret not in str(unreachable.value)
    assert "nobody:***@127.0.0.1:1" in str(unreachable.value)


async def test_unknown_option_names_its_key() -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresStore.from_spec(StoreSpec(name="t", kind="postgres", url="postgresql://u@h/db", options={"shema": "x"}))
    assert caught.value.key == "shema"


async def test_a_claim_whose_reply_was_lost_is_released_by_its_own_worker(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore
) -> None:
    queue = postgres_store.backend("q", codec=JsonCodec())
    task_id = await queue.push({"lost": True})
    starts = Starts()
    worker = Worker(name="w", backend=queue, handler=starts.handler, keep_alive=0.1, stale_after=0.3)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        # As if this worker's claim committed but the reply never reached it.
        await admin.execute(
            sql.SQL(
                "UPDATE {}.tasks SET status = 'running', attempts = 1, lock_by = %s,"
                " lock_at = extract(epoch FROM now()) - 1 WHERE id = %s"
            ).format(sql.Identifier(postgres_schema)),
            (worker.context.id, task_id),
        )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(starts.event.wait(), 5)
    finally:
        stop.set()
        await running
    done = await queue.get(task_id)
    assert done is not None
    assert (done.ctx.status, done.ctx.attempts) == (Status.DONE, 1)  # the lost claim was not counted


async def test_durable_push_can_be_traded_for_latency(postgres_url: str, postgres_schema: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_postgres_store(postgres_url, postgres_schema, durable_push="no")
    assert caught.value.key == "durable_push"
    store = make_postgres_store(postgres_url, postgres_schema, durable_push=False)
    await store.open()
    try:
        queue = store.backend("q", codec=JsonCodec())
        task_id = await queue.push({"fast": True})
        pushed = await queue.get(task_id)
        assert pushed is not None
        assert pushed.ctx.status is Status.PENDING
    finally:
        await store.close()


async def test_a_schema_of_an_earlier_version_gains_the_control_plane_and_keeps_its_tasks(
    postgres_url: str, postgres_schema: str
) -> None:
    """A database made before the control plane (schema version 3) is migrated on open: its
    pending task can be cancelled, its queue paused, its tasks' statuses kept."""
    ident = sql.Identifier(postgres_schema)
    names = {"schema": ident.as_string(), "columns": "", "channel": "''", "control": "''", "bulk_where": ""}
    earlier = [m for m in load_migrations("apalis_postgres", names) if m.version <= 3]
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        await admin.execute(
            sql.SQL(
                "CREATE TABLE {}.schema_version (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        for migration in earlier:
            await admin.execute(migration.sql.encode())
            await admin.execute(
                sql.SQL("INSERT INTO {}.schema_version (version, name) VALUES (%s, %s)").format(ident),
                (migration.version, migration.name),
            )
        for task_id, status in (("old-pending", "pending"), ("old-done", "done")):
            await admin.execute(
                sql.SQL(
                    "INSERT INTO {}.tasks (id, queue, payload, status, run_at, created_at)"
                    " VALUES (%s, 'q', '{{}}', %s, extract(epoch FROM now()), extract(epoch FROM now()))"
                ).format(ident),
                (task_id, status),
            )
    store = make_postgres_store(postgres_url, postgres_schema)
    await store.open()
    try:
        assert store.migrations_applied == [m.version for m in load_migrations("apalis_postgres") if m.version > 3]
        await controls_after_migration(store.backend("q", codec=JsonCodec()))
    finally:
        await store.close()


async def test_a_sweep_vacuums_the_tasks_table_when_the_servers_autovacuum_is_off(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore
) -> None:
    # Without a vacuum, every task ever claimed leaves an entry in the claim's index that each
    # claim walks: claims slow down as tasks pile up (bench/README.md).
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
        setting = await (await admin.execute("SELECT current_setting('autovacuum')")).fetchone()
        if setting != ("off",):
            pytest.skip("the server's autovacuum is on: the store leaves the vacuuming to it")
        queue = postgres_store.backend("q", codec=JsonCodec())
        await queue.push_bulk([{"n": n} for n in range(11_000)])
        starts = Starts()
        worker = Worker(name="w", backend=queue, handler=starts.handler, concurrency=50, keep_alive=0.2)
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        stats = sql.SQL("SELECT last_vacuum FROM pg_stat_user_tables WHERE relid = to_regclass(%s)")
        try:
            vacuumed = None
            for _ in range(600):  # the server counts dead rows a moment after each commit
                await asyncio.sleep(0.1)
                row = await (await admin.execute(stats, (f'"{postgres_schema}".tasks',))).fetchone()
                vacuumed = row[0] if row else None
                if vacuumed is not None and len(starts.at) == 11_000:
                    break
        finally:
            stop.set()
            await running
        assert vacuumed is not None
        assert (await queue.stats()).counts.get(Status.DONE) == 11_000


async def test_the_tasks_table_is_analyzed_when_a_backlog_outgrows_its_statistics(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore
) -> None:
    """A keyed limit's claim (`limit_claim`) keeps its plans for the life of its connection;
    plans made while a worker waited on a near-empty table claimed 640 tasks a second from a
    backlog that fresh plans claim 3,400 of (bench/README.md). The sweep beside the beat
    analyzes the tasks table once it holds far more rows than its statistics say (which also
    makes new plans); here the server's autovacuum is off, so nothing else would."""
    from apalis_cli.layers import ConcurrencyLayer

    release, first_ran = asyncio.Event(), asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        if args["n"] == 0:
            first_ran.set()
        else:
            await release.wait()

    queue = postgres_store.backend("q", codec=JsonCodec())
    await queue.push({"account": "a", "n": 0}, limit_key="a")
    limit = ConcurrencyLayer(1, scope="global", key="account")
    worker = Worker(name="w", backend=queue, handler=handler, layers=[limit], keep_alive=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    table = f'"{postgres_schema}".tasks'
    reltuples = sql.SQL("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)")
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            await asyncio.wait_for(first_ran.wait(), 10)  # the claim's plans made on a near-empty table
            assert ((await (await admin.execute(reltuples, (table,))).fetchone()) or (0,))[0] < 100
            # A backlog of one key: its first task runs (and holds the key), the rest wait.
            await queue.push_bulk([{"account": "a", "n": n} for n in range(1, 3001)], limit_key="a")
            deadline = time.monotonic() + 20.0
            while ((await (await admin.execute(reltuples, (table,))).fetchone()) or (0,))[0] < 2900:
                assert time.monotonic() < deadline, "the tasks table's statistics were never brought up to date"
                await asyncio.sleep(0.1)
    finally:
        release.set()
        stop.set()
        worker.hurry()
        await running


async def test_an_idle_listen_connection_does_not_wake_its_process(postgres_url: str) -> None:
    # Idle CPU ~ 0: a LISTEN connection with nothing to hear leaves the event loop asleep (it
    # woke ten times a second: psycopg's wait for notifications re-arms itself every 0.1 s),
    # and what it hears still arrives.
    heard: list[tuple[str, str]] = []
    channel = f"idle-{uuid.uuid4().hex[:8]}"

    async def rejoined() -> None:
        pass

    listener = Listener(lambda: postgres_url, [channel], lambda c, p: heard.append((c, p)), rejoined, name="idle")
    listener.start()
    try:
        await asyncio.wait_for(listener.listening(), 5)
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        select = selector.select
        wakes = 0

        def counted(timeout: float | None = None) -> Any:
            nonlocal wakes
            events = select(timeout)
            wakes += 1
            return events

        selector.select = counted
        try:
            await asyncio.sleep(1.0)
        finally:
            selector.select = select
        assert wakes <= 3, f"the loop woke {wakes} times in 1 s of idle listening"
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute("SELECT pg_notify(%s, 'hello')", (channel,))
        deadline = time.monotonic() + 5
        while not heard:
            assert time.monotonic() < deadline, "the NOTIFY never arrived"
            await asyncio.sleep(0.01)
        assert heard == [(channel, "hello")]
    finally:
        await listener.stop()


async def test_a_resume_from_another_process_lets_the_worker_take_its_tasks_at_once(
    postgres_url: str, postgres_schema: str, postgres_store: PostgresStore
) -> None:
    # The worker hears of the pause from its heartbeat. The resume comes from another process
    # (`apalis resume` has a store of its own), which only wakes the pollers: the worker's next
    # heartbeat, a minute away here, would be the first to tell it. Until then it must not take
    # its claimed tasks one per poll_interval (5 tasks: 12 s), but start them together.
    control_store = make_postgres_store(postgres_url, postgres_schema, application_name="control")
    await control_store.open()
    try:
        control = control_store.backend("q", codec=JsonCodec())
        await control.pause()
        starts = Starts()
        worker, stop, running = await start_worker(
            postgres_store, "q", starts, concurrency=5, poll_interval=3.0, keep_alive=60.0
        )
        for _ in range(200):
            if worker.paused:
                break
            await asyncio.sleep(0.02)
        assert worker.paused, "the worker's first heartbeat did not tell it of the pause"
        pushed = [await control.push({"n": n}) for n in range(5)]
        await asyncio.sleep(0.2)
        assert starts.at == {}, "a paused queue handed out a task"

        await control.resume()

        for _ in range(400):
            if len(starts.at) == len(pushed):
                break
            await asyncio.sleep(0.02)
        assert sorted(starts.at) == sorted(pushed), f"{len(starts.at)} of 5 started 8 s after the resume"
        assert worker.paused, "a heartbeat came: the test no longer shows what a resume alone does"
        stop.set()
        await asyncio.wait_for(running, 10)
    finally:
        await control_store.close()
