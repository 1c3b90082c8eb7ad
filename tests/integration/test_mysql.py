"""What is special to MySQL/MariaDB: the GET_LOCK-guarded sweep, idempotent migrations, validated
table prefixes, redacted passwords, claims by concurrent workers that never overlap."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import BackendError, ConfigError
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_mysql import MysqlStore, listener
from apalis_sql import load_migrations

from ..conformance.stores.mysql import admin_connect, admin_execute
from ..services import need_server
from .conftest import controls_after_migration, make_mysql_store, mysql_schema_of_version


async def test_only_the_named_lock_holder_sweeps(mysql_url: str, mysql_store: MysqlStore) -> None:
    queue = mysql_store.backend("q", codec=JsonCodec())
    task_id = await queue.push({"orphan": True}, max_attempts=3)
    await admin_execute(
        mysql_url,
        "UPDATE apalis_tasks SET status = 'running', attempts = 1, lock_by = 'ghost' WHERE id = %s",
        (task_id,),
    )
    database = urlsplit(mysql_url).path.lstrip("/")
    lock = "apalis-sweep:" + hashlib.sha1(f"{database}:apalis_:q".encode()).hexdigest()
    admin = await admin_connect(mysql_url)
    started = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.set()

    worker = Worker(name="w", backend=queue, handler=handler, keep_alive=0.1, stale_after=0.2, poll_interval=0.05)
    stop = asyncio.Event()
    try:
        async with admin.cursor() as cursor:
            await cursor.execute("SELECT GET_LOCK(%s, 0)", (lock,))
            assert (await cursor.fetchone())[0] == 1
            running = asyncio.create_task(worker.run(stop))
            try:
                await asyncio.sleep(0.8)
                held = await queue.get(task_id)
                assert held is not None
                assert (held.ctx.status, held.ctx.lock_by) == (Status.RUNNING, "ghost")
                await cursor.execute("SELECT RELEASE_LOCK(%s)", (lock,))
                await asyncio.wait_for(started.wait(), 5)
            finally:
                stop.set()
                await running
    finally:
        admin.close()
    done = await queue.get(task_id)
    assert done is not None
    assert done.ctx.status is Status.DONE
    assert done.ctx.attempts == 2


async def test_migrations_applied_twice_are_a_no_op(mysql_url: str, caplog: pytest.LogCaptureFixture) -> None:
    first, second = make_mysql_store(mysql_url), make_mysql_store(mysql_url)
    await first.open()
    caplog.clear()
    await second.open()
    latest = load_migrations("apalis_mysql")[-1].version
    try:
        assert first.migrations_applied == list(range(1, latest + 1))
        assert second.migrations_applied == []
        # A start of an up-to-date database says nothing (the driver logged the server's note
        # "Table 'apalis_schema_version' already exists" as a warning at every start).
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        rows = await admin_execute(mysql_url, "SELECT version FROM apalis_schema_version ORDER BY version")
        assert rows == [(v,) for v in range(1, latest + 1)]
    finally:
        await first.close()
        await second.close()


async def test_a_table_prefix_keeps_stores_apart(mysql_url: str) -> None:
    one, two = make_mysql_store(mysql_url, table_prefix="one_"), make_mysql_store(mysql_url, table_prefix="two_")
    await one.open()
    await two.open()
    try:
        task_id = await one.backend("q", codec=JsonCodec()).push(1)
        assert await two.backend("q", codec=JsonCodec()).get(task_id) is None
        assert await one.backend("q", codec=JsonCodec()).get(task_id) is not None
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("bad", ["x`; DROP TABLE t; --", "a-b", "1abc", "x" * 49, 3])
def test_a_malicious_or_bad_table_prefix_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        MysqlStore.from_spec(StoreSpec(name="t", kind="mysql", url="mysql://u@h/db", options={"table_prefix": bad}))
    assert caught.value.key == "table_prefix"


async def test_passwords_never_appear_in_errors() -> None:
    secret = "s3cr3t-pw"
    with pytest.raises(ConfigError) as no_database:
        MysqlStore.from_spec(StoreSpec(name="t", kind="mysql", url=f"mysql://u:{secret}@h:3306/"))
    assert secret not in str(no_database.value)
    assert "***" in str(no_database.value)

    server = urlsplit(need_server("mysql"))
    url = f"mysql://nobody:{secret}@{server.hostname}:{server.port or 3306}/test"
    store = MysqlStore.from_spec(StoreSpec(name="t", kind="mysql", url=url, options={"connect_timeout": "2s"}))
    with pytest.raises(BackendError) as refused:
        await store.open()
    assert secret not in str(refused.value)
    assert "nobody:***@" in str(refused.value)


async def test_concurrent_workers_claim_disjoint_batches(mysql_store: MysqlStore) -> None:
    queue = mysql_store.backend("q", codec=JsonCodec())
    ids = await queue.push_bulk(range(300))
    seen: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(task.id)

    workers = [
        Worker(name=f"w{i}", backend=mysql_store.backend("q", codec=JsonCodec()), handler=handler, concurrency=20)
        for i in range(3)
    ]
    stop = asyncio.Event()
    runs = [asyncio.create_task(w.run(stop)) for w in workers]
    for _ in range(500):
        if len(seen) >= len(ids):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*runs)
    assert sorted(seen) == sorted(ids)  # every task once, none twice


async def test_a_listener_that_starts_is_woken_by_the_next_push_of_a_process_that_knew_none(
    mysql_url: str, mysql_store: MysqlStore
) -> None:
    """A daemon that starts listening is woken by another process's next push at once, not
    after that process's list of sleeping listeners (looked up at its last push, trusted for
    `KNOWN_FOR`) has gone stale: the new listener announces itself on the control plane, and a
    process that hears it looks its lists up again. The pusher listens on the control plane as
    a daemon or a waiter does; its pushes are bulk ones (a push of one task may be handed to an
    idle worker instead, which wakes that worker's listener by its id)."""
    jobs = mysql_store.backend("jobs", codec=JsonCodec())
    await mysql_store.database.listening()
    await jobs.push_bulk([1, 2])  # looks up the listeners of "jobs": none yet
    daemon = make_mysql_store(mysql_url)  # another process's connections
    await daemon.open()
    try:
        daemon.database.listen("jobs")
        await daemon.database.listening()
        woken = daemon.database.waker("jobs").subscribe()
        woken.clear()  # the listener's own wake-up as it started
        started = time.monotonic()
        while not woken.is_set() and time.monotonic() - started < 0.6:
            await jobs.push_bulk([3, 4])
            await asyncio.sleep(0.05)
        assert woken.is_set(), "the new listener heard no push for 0.6 s"
    finally:
        await daemon.close()


async def _listener_sleep(conn: Any, name: str) -> None:
    """One sleep of a listener of tag `name` on `conn`, until a signal ends it."""
    try:
        await conn.cursor().execute(listener.sleep_statement(name))
    except Exception as exc:  # MariaDB answers an ended SLEEP with an error
        if exc.args[0] != 1317:
            raise


async def _stop_sleeping(conn: Any, sleeping: asyncio.Future[None]) -> None:
    """The listener's connection closed, its sleep given up."""
    sleeping.cancel()
    conn.close()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await sleeping


async def test_a_listener_between_two_sleeps_as_a_process_looked_it_up_is_woken_by_its_next_signals(
    mysql_store: MysqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process looks up the listeners of a tag (those running its SLEEP) when its list is
    older than `KNOWN_FOR`; a listener woken a moment before, its next SLEEP not yet running,
    is not among them. It is there all the same: the process's next signals wake it (they woke
    none until the list went stale again, and a task pushed meanwhile waited for the worker's
    idle timer)."""
    db = mysql_store.database
    name = listener.tag("listener-between-sleeps", str(time.time_ns()), "q")
    sleeper = await db._connect()  # a listener's connection, in another process
    signals = listener.Signals()

    async def signal() -> None:
        await db.run(lambda conn: signals.send(conn, name))

    sleeping = asyncio.ensure_future(_listener_sleep(sleeper, name))
    try:
        await asyncio.sleep(0.2)  # the SLEEP runs on the server
        await signal()  # the first lookup finds it, and wakes it
        await asyncio.wait_for(sleeping, 2)
        monkeypatch.setattr(listener, "KNOWN_FOR", 0.0)
        await signal()  # looked up again while it is between two sleeps
        monkeypatch.setattr(listener, "KNOWN_FOR", 60.0)
        sleeping = asyncio.ensure_future(_listener_sleep(sleeper, name))
        await asyncio.sleep(0.2)
        await signal()
        done, _ = await asyncio.wait({sleeping}, timeout=2)
        assert done, "the signal after the lookup did not wake the listener"
    finally:
        await _stop_sleeping(sleeper, sleeping)


async def test_a_listener_between_two_sleeps_at_a_process_first_lookup_is_woken_by_its_signals_soon(
    mysql_store: MysqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose lookup of a tag's listeners found none (its only listener was between
    two sleeps then) looks again at its next signal after `RECHECK_EVERY`: it trusted the empty
    list for `KNOWN_FOR`, and its signals meanwhile woke nobody."""
    monkeypatch.setattr(listener, "KNOWN_FOR", 60.0)
    db = mysql_store.database
    name = listener.tag("listener-first-lookup", str(time.time_ns()), "q")
    sleeper = await db._connect()  # a listener's connection, in another process, not asleep yet
    signals = listener.Signals()

    await db.run(lambda conn: signals.send(conn, name))  # finds no listener asleep
    sleeping = asyncio.ensure_future(_listener_sleep(sleeper, name))
    try:
        for _ in range(40):  # 2 s of signals, one every 50 ms
            await asyncio.sleep(0.05)
            await db.run(lambda conn: signals.send(conn, name))
            if sleeping.done():
                break
        assert sleeping.done(), "the listener slept on through 2 s of signals"
    finally:
        await _stop_sleeping(sleeper, sleeping)


async def test_a_claim_whose_reply_was_lost_is_released_by_its_own_worker(
    mysql_url: str, mysql_store: MysqlStore
) -> None:
    queue = mysql_store.backend("q", codec=JsonCodec())
    task_id = await queue.push({"lost": True})
    started = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.set()

    worker = Worker(name="w", backend=queue, handler=handler, keep_alive=0.1, stale_after=0.3)
    # As if this worker's claim committed but the reply never reached it.
    await admin_execute(
        mysql_url,
        "UPDATE apalis_tasks SET status = 'running', attempts = 1, lock_by = %s,"
        " lock_at = UNIX_TIMESTAMP(NOW(6)) - 1 WHERE id = %s",
        (worker.context.id, task_id),
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(started.wait(), 5)
    finally:
        stop.set()
        await running
    done = await queue.get(task_id)
    assert done is not None
    assert (done.ctx.status, done.ctx.attempts) == (Status.DONE, 1)  # the lost claim was not counted


async def test_a_database_of_an_earlier_version_gains_the_control_plane_and_keeps_its_tasks(mysql_url: str) -> None:
    """A database made before the control plane (schema version 2) is migrated on open: its
    pending task can be cancelled (a status longer than the old column), its queue paused."""
    await mysql_schema_of_version(mysql_url, 2)
    await admin_execute(
        mysql_url,
        "INSERT INTO apalis_tasks (id, queue, payload, status, run_at, created_at)"
        " VALUES ('old-pending', 'q', '{}', 'pending', UNIX_TIMESTAMP(), UNIX_TIMESTAMP())",
    )
    store = make_mysql_store(mysql_url)
    await store.open()
    try:
        assert store.migrations_applied == [m.version for m in load_migrations("apalis_mysql") if m.version > 2]
        await controls_after_migration(store.backend("q", codec=JsonCodec()))
    finally:
        await store.close()


async def test_stamps_are_read_in_utc_whatever_the_servers_time_zone(mysql_store: MysqlStore) -> None:
    """UNIX_TIMESTAMP(NOW(6)) read back through a zone with daylight saving is an hour off for one
    of the two hours that repeat (leases would look an hour old or new); the store's sessions
    read it in UTC."""

    async def zone_and_clock(conn: Any) -> tuple[str, float]:
        cursor = conn.cursor()
        await cursor.execute("SELECT @@session.time_zone, UNIX_TIMESTAMP(NOW(6)) - UNIX_TIMESTAMP()")
        ((zone, skew),) = await cursor.fetchall()
        return str(zone), float(skew)

    zone, skew = await mysql_store.database.run(zone_and_clock)
    assert zone == "+00:00"
    assert 0 <= skew < 1, "the stamp is the epoch the server's own clock gives"
