"""What is special to the pgmq backend, on the real pgmq 1.13 SQL: interop with the official
`pgmq` client both ways, the message layout, leases, reconnect after pg_terminate_backend."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from typing import Any

import psycopg
import pytest
from apalis_cli.backend import Capability, StoreSpec
from apalis_cli.codec import JsonCodec, MsgpackCodec
from apalis_cli.errors import ConfigError, UsageError
from apalis_cli.events import HeartbeatSent
from apalis_cli.layers.retry import Backoff
from apalis_cli.sink import new_task
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_pgmq import PgmqStore
from psycopg.conninfo import conninfo_to_dict

from ..services import need_server
from .running import run_until

FAST = Backoff(kind="constant", base=0.05, max=0.05, jitter=False)


STORE_KINDS = ("pgmq",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


@pytest.fixture
def queue() -> str:
    return f"it_{os.urandom(6).hex()}"


async def sql(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


def official_client(url: str) -> Any:
    from pgmq import PGMQueue

    return PGMQueue(conn_string=url, init_extension=False, pool_size=1)


async def test_official_client_send_is_a_task_for_us(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=2)
    await backend.stats()  # creates the queue
    client = official_client(pgmq_url)
    try:
        msg_id = await asyncio.to_thread(client.send, queue, {"to": "ann", "n": 1})
    finally:
        await asyncio.to_thread(client.close)
    seen: list[tuple[str, Any, int]] = []

    async def handler(args: Any, task: Task[bytes]) -> str:
        seen.append((task.id, args, task.ctx.attempts))
        return "sent"

    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, backoff=FAST)
    await run_until(worker, lambda: bool(seen))
    assert seen == [(str(msg_id), {"to": "ann", "n": 1}, 1)]
    archived = await sql(pgmq_url, f"SELECT message, headers FROM pgmq.a_{queue} WHERE msg_id = %s", (msg_id,))
    assert archived == [({"to": "ann", "n": 1}, {"apalis": {"result": '"sent"'}})]


async def test_foreign_headers_of_any_shape_are_acknowledged(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=2)
    await backend.stats()  # creates the queue
    for headers in ("[1, 2]", '"text"', '{"apalis": 5, "trace": "t"}'):
        await sql(pgmq_url, "SELECT pgmq.send(%s, '{\"n\": 1}'::jsonb, %s::jsonb)", (queue, headers))
    runs: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        runs.append(task.ctx.attempts)
        if task.ctx.attempts == 1:
            raise RuntimeError("once")

    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, backoff=FAST)
    await run_until(worker, lambda: len(runs) == 6)
    stats = await backend.stats()
    assert stats.counts[Status.DONE] == 3
    rows = await sql(pgmq_url, f"SELECT headers -> 'trace' FROM pgmq.a_{queue} WHERE headers ? 'trace'")
    assert rows == [("t",)]


async def test_our_push_is_a_message_for_the_official_client(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=4)
    task_id = await backend.push({"to": "bob"}, meta={"trace": "t1"})
    client = official_client(pgmq_url)
    try:
        message = await asyncio.to_thread(client.read, queue, 30)
        assert await asyncio.to_thread(client.archive, queue, message.msg_id)
    finally:
        await asyncio.to_thread(client.close)
    assert str(message.msg_id) == task_id
    assert message.message == {"to": "bob"}
    assert message.read_ct == 1
    assert message.headers == {"apalis": {"max_attempts": 4, "meta": {"trace": "t1"}}}
    stored = await backend.get(task_id)
    assert stored is not None
    assert stored.ctx.status is Status.DONE


async def test_msgpack_payload_is_base64_with_a_header(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=MsgpackCodec(), max_attempts=1)
    value = {"blob": b"\x00\xff", "n": -3}
    task_id = await backend.push(value)
    rows = await sql(pgmq_url, f"SELECT message, headers FROM pgmq.q_{queue} WHERE msg_id = %s", (int(task_id),))
    assert rows == [
        (base64.b64encode(backend.codec.encode(value)).decode(), {"apalis": {"max_attempts": 1, "enc": "base64"}})
    ]
    got: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        got.append(args)

    await run_until(Worker(name="w", backend=backend, handler=handler, keep_alive=0.2), lambda: bool(got))
    assert got == [value]


async def test_json_text_that_jsonb_would_reorder_travels_exactly(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec())
    plain = await backend.push_compact(b'{"a":1,"bb":[1.5,"x"]}')
    reordered = await backend.push_compact(b'{"long":1,"s":2}')
    rows = dict(await sql(pgmq_url, f"SELECT msg_id::text, headers -> 'apalis' ? 'text' FROM pgmq.q_{queue}"))
    assert rows == {plain: False, reordered: True}
    assert [t.args for t in await backend.list_tasks()] == [b'{"a":1,"bb":[1.5,"x"]}', b'{"long":1,"s":2}']


async def test_a_batch_due_at_different_times_keeps_its_order(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec())
    now = time.time()
    tasks = [
        new_task(f'{{"n":{n}}}'.encode(), default_max_attempts=1, run_at=at)
        for n, at in enumerate([now + 60, now - 1, now + 30, now + 60, now - 1])
    ]
    ids = await backend.enqueue(tasks)
    rows = await sql(
        pgmq_url, f"SELECT msg_id::text, message ->> 'n', extract(epoch FROM vt)::float8 FROM pgmq.q_{queue}"
    )
    by_id = {msg_id: (int(n), vt) for msg_id, n, vt in rows}
    assert [by_id[i][0] for i in ids] == [0, 1, 2, 3, 4]
    for task, task_id in zip(tasks, ids, strict=True):
        assert by_id[task_id][1] == pytest.approx(max(task.run_at, now), abs=2.0)


async def test_a_dead_workers_message_comes_back_with_read_ct_plus_one(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=2)
    task_id = await backend.push({"x": 1})
    # A worker that read the message and died: pgmq.read with a 1 s lease, never acknowledged.
    await sql(pgmq_url, "SELECT * FROM pgmq.read(%s, 1, 1)", (queue,))
    assert (await backend.get(task_id)).ctx.status is Status.RUNNING  # type: ignore[union-attr]
    seen: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(task.ctx.attempts)

    await run_until(Worker(name="w", backend=backend, handler=handler, keep_alive=0.2), lambda: bool(seen))
    assert seen == [2]


_DYING_WORKER = """
import asyncio, sys
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.worker import Worker
from apalis_pgmq import PgmqStore

async def main(url, queue):
    store = PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url=url))
    await store.open()

    async def handler(args, task):
        print("running", task.id, flush=True)
        await asyncio.sleep(3600)

    worker = Worker(name="doomed", backend=store.backend(queue, codec=JsonCodec(), max_attempts=2),
                    handler=handler, keep_alive=0.2, stale_after=0.6)
    await worker.run(asyncio.Event())

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_task_of_a_worker_killed_with_sigkill_runs_again(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=2)
    task_id = await backend.push({"x": 1})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DYING_WORKER, pgmq_url, queue, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().split() == ["running", task_id]
    finally:
        proc.kill()
        await proc.wait()
    seen: list[tuple[str, int]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append((task.id, task.ctx.attempts))

    await run_until(Worker(name="w", backend=backend, handler=handler, keep_alive=0.2), lambda: bool(seen))
    assert seen == [(task_id, 2)]


async def test_read_beyond_max_attempts_is_killed_not_run(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=1)
    task_id = await backend.push({"x": 1})
    await sql(pgmq_url, "SELECT * FROM pgmq.read(%s, 0, 1)", (queue,))  # read once, lease already over
    seen: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(task.id)

    async def killed() -> bool:
        got = await backend.get(task_id)
        return got is not None and got.ctx.status is Status.KILLED

    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 10
        while not await killed():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await running
    assert seen == []
    got = await backend.get(task_id)
    assert got is not None
    assert "lease" in (got.ctx.last_error or "")


async def test_heartbeat_extends_the_lease_of_a_long_task(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=1)
    await backend.push({"x": 1})
    runs: list[int] = []
    first_run = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        runs.append(task.ctx.attempts)
        first_run.set()
        await asyncio.sleep(2.5)  # longer than the 1 s lease: only set_vt keeps it ours

    other: list[int] = []

    async def other_handler(args: Any, task: Task[bytes]) -> None:
        other.append(task.ctx.attempts)

    one = Worker(name="a", backend=backend, handler=handler, keep_alive=0.2, stale_after=0.6)
    two = Worker(name="b", backend=store.backend(queue, codec=JsonCodec()), handler=other_handler, keep_alive=0.2)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(one.run(stop))]
    await first_run.wait()
    tasks.append(asyncio.create_task(two.run(stop)))
    await asyncio.sleep(2.7)
    stop.set()
    await asyncio.gather(*tasks)
    assert runs == [1]
    assert other == []


async def test_a_slow_purge_of_the_archive_does_not_hold_the_lease_of_a_long_task(
    store: PgmqStore, pgmq_url: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The beat's purge of the archive (all of it past retention, in one DELETE: seconds after a
    retention was shortened) ran in the beat's own round trip, after its `set_vt`: the beat
    ended, and the next `set_vt` came, that much later, the lease ran out meanwhile, and another
    worker read the task again (here out of attempts: killed while it ran)."""
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=1)
    monkeypatch.setitem(backend._sql, "purge_archive", "SELECT pg_sleep(1.5) FROM (SELECT %(retention)s) AS p")
    task_id = await backend.push({"x": 1})
    runs: list[int] = []
    first_run = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        runs.append(task.ctx.attempts)
        first_run.set()
        await asyncio.sleep(4)  # longer than the 1 s lease: only set_vt keeps it ours

    other: list[int] = []

    async def other_handler(args: Any, task: Task[bytes]) -> None:
        other.append(task.ctx.attempts)

    one = Worker(name="a", backend=backend, handler=handler, keep_alive=0.5, stale_after=1.0)
    two = Worker(
        name="b",
        backend=store.backend(queue, codec=JsonCodec()),
        handler=other_handler,
        keep_alive=0.2,
        poll_interval=0.05,  # reads as soon as a lease runs out
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(one.run(stop))]
    await first_run.wait()
    tasks.append(asyncio.create_task(two.run(stop)))
    await asyncio.sleep(4.3)
    stop.set()
    await asyncio.gather(*tasks)
    assert runs == [1]
    assert other == []
    done = await backend.get(task_id)  # not read again (and killed, out of attempts) meanwhile
    assert done is not None
    assert (done.ctx.status, done.ctx.last_error) == (Status.DONE, None)


async def test_worker_survives_pg_terminate_backend(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec())
    done: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        done.append(args)

    worker = Worker(name="w", backend=backend, handler=handler, concurrency=4, keep_alive=0.2, backoff=FAST)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await backend.push_bulk(range(20))
        deadline = time.monotonic() + 10
        while len(done) < 20:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        app = conninfo_to_dict(store.config.url)["application_name"]
        killed = await sql(
            pgmq_url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (app,),
        )
        assert killed[0][0] >= 2  # the pool and the LISTEN connection
        await backend.push_bulk(range(20, 40))
        while len(done) < 40:
            assert time.monotonic() < deadline
            if running.done():
                running.result()
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
    assert sorted(done) == list(range(40))


async def test_idle_workers_wake_on_a_foreign_send(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    started: dict[str, float] = {}

    def handler_for(name: str) -> Any:
        async def handler(args: Any, task: Task[bytes]) -> None:
            started.setdefault(name, time.monotonic())

        return handler

    # poll_interval 5 s: only the notifications can make this quick. The second queue is
    # listened to while the listener already waits on the first one's channel.
    queues = [queue, f"{queue}_2"]
    workers = [
        Worker(name=q, backend=store.backend(q, codec=JsonCodec()), handler=handler_for(q), poll_interval=5.0)
        for q in queues
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(workers[0].run(stop))]
    try:
        await asyncio.sleep(0.5)
        running.append(asyncio.create_task(workers[1].run(stop)))
        await asyncio.sleep(1.5)  # idle long enough for the poll backoff to reach seconds
        sent = {}
        for q in reversed(queues):
            sent[q] = time.monotonic()
            await sql(pgmq_url, "SELECT pgmq.send(%s, '{\"a\": 1}'::jsonb)", (q,))
        deadline = time.monotonic() + 10
        while len(started) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.gather(*running)
    for q in queues:
        assert started[q] - sent[q] < 1.0  # loose: polling alone would take up to 5 s


async def test_the_listener_reconnects_after_pg_terminate_backend(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    started: list[float] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(time.monotonic())

    backend = store.backend(queue, codec=JsonCodec())
    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, poll_interval=5.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.sleep(0.5)
        app = conninfo_to_dict(store.config.url)["application_name"]
        await sql(
            pgmq_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (app,),
        )
        await asyncio.sleep(2.5)  # reconnected, and idle long enough for the poll backoff to reach seconds
        sent = time.monotonic()
        await sql(pgmq_url, "SELECT pgmq.send(%s, '{}'::jsonb)", (queue,))
        deadline = time.monotonic() + 10
        while not started:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await running
    assert started[0] - sent < 1.0


async def test_idempotency_key_returns_the_first_message(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec())
    first = await backend.push({"a": 1}, idempotency_key="k")
    again = await asyncio.gather(*(backend.push({"a": 2}, idempotency_key="k") for _ in range(5)))
    assert set(again) == {first}
    assert await sql(pgmq_url, f"SELECT count(*) FROM pgmq.q_{queue}") == [(1,)]


async def test_a_dropped_queue_is_created_again(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    backend = store.backend(queue, codec=JsonCodec())
    await backend.push(1)
    await sql(pgmq_url, "SELECT pgmq.drop_queue(%s)", (queue,))
    task_id = await backend.push(2)
    assert [t.id for t in await backend.list_tasks()] == [task_id]


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="url"):
        PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url="redis://x"))
    with pytest.raises(ConfigError, match="pool_size"):
        PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url="postgresql://h/db", options={"pool_size": 0}))
    with pytest.raises(ConfigError, match="nope"):
        PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url="postgresql://h/db", options={"nope": 1}))
    with pytest.raises(ConfigError) as caught:
        PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url="mysql://u:secret@h/db"))
    assert "secret" not in str(caught.value)


def test_queue_names_must_suit_pgmq() -> None:
    made = PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url="postgresql://h/db"))
    with pytest.raises(UsageError, match="47"):
        made.backend("Bad-Name", codec=JsonCodec())
    assert not made.capabilities.has(Capability.PRIORITY)


async def test_open_without_pgmq_says_so(pgmq_url: str) -> None:
    plain = need_server("postgres")
    made = PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url=plain))
    rows = await sql(plain, "SELECT to_regnamespace('pgmq') IS NOT NULL")
    if rows[0][0]:
        pytest.skip("the default database has pgmq installed")
    with pytest.raises(Exception, match="pgmq is not installed"):
        await made.open()


async def test_an_unlogged_queue_the_official_client_made_is_used_as_it_is(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    client = official_client(pgmq_url)
    try:
        await asyncio.to_thread(client.create_queue, queue, True)  # unlogged
        await asyncio.to_thread(client.send, queue, {"from": "client"})
    finally:
        await asyncio.to_thread(client.close)
    backend = store.backend(queue, codec=JsonCodec())
    await backend.prepare()
    await backend.push({"from": "apalis"})
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(args["from"])

    await run_until(Worker(name="w", backend=backend, handler=handler, keep_alive=0.2), lambda: len(seen) == 2)
    assert seen == ["client", "apalis"]
    [(persistence,)] = await sql(pgmq_url, f"SELECT relpersistence FROM pg_class WHERE relname = 'q_{queue}'")
    assert persistence == "u", "still the client's unlogged table"


async def test_the_board_pages_by_keyset_and_finds_by_id_key_and_error(store: PgmqStore, queue: str) -> None:
    from apalis_cli.browsing import PageCursor, TaskBrowser, TaskSearch

    backend = store.backend(queue, codec=JsonCodec(), max_attempts=1)
    assert isinstance(backend, TaskBrowser)
    begun = time.time()
    ids = [await backend.push({"n": n}) for n in range(7)]
    keyed = await backend.push({"n": "k"}, idempotency_key="order-42")
    assert await backend.kill(ids[3], "Disk full on /var")

    seen: list[str] = []
    after: PageCursor | None = None
    while True:
        page = await backend.browse(TaskSearch(), after=after, limit=3)
        if not page:
            break
        seen += [task.id for task in page]
        after = PageCursor.of(page[-1])
    assert sorted(seen, key=int) == sorted([*ids, keyed], key=int)
    assert len(seen) == len(set(seen)), "a task shown on two pages"

    newest = await backend.browse(TaskSearch(status=Status.PENDING), limit=2, newest_first=True)
    assert [task.id for task in newest] == [keyed, ids[6]]
    assert [t.id for t in await backend.browse(TaskSearch(text=ids[5]))] == [ids[5]]
    assert [t.id for t in await backend.browse(TaskSearch(text="order-42"))] == [keyed]
    found = await backend.browse(TaskSearch(text="disk FULL"))
    assert [t.id for t in found] == [ids[3]]
    assert found[0].ctx.status is Status.KILLED
    assert (await backend.browse(TaskSearch(), limit=1, preview=2))[0].args == b'{"'
    activity = await backend.activity(time.time() - 60)
    assert activity.oldest_ready_at is not None
    assert begun - 1 <= activity.oldest_ready_at <= time.time()
    assert sum(minute.failed for minute in activity.per_minute.values()) == 1


async def test_unique_holders_that_hold_nothing_leave_the_list(store: PgmqStore, pgmq_url: str, queue: str) -> None:
    """A listed holder whose window ended, or whose message is gone, is dropped by a heartbeat;
    one that still holds its key stays (it ran: done holds a key by default), and a push of its
    key still meets it."""
    backend = store.backend(queue, codec=JsonCodec())
    short = await backend.push({"n": 1}, unique={"key": "short", "period": "200ms"})
    held = await backend.push({"n": 2}, unique={"key": "held"})
    gone = await backend.push({"n": 3}, unique={"key": "gone"})
    await sql(pgmq_url, "SELECT pgmq.delete(%s, %s::bigint)", (queue, int(gone)))
    listed = "SELECT key FROM apalis_pgmq.uniques WHERE queue = %s ORDER BY key"
    assert [key for (key,) in await sql(pgmq_url, listed, (queue,))] == ["gone", "held", "short"]
    await asyncio.sleep(0.3)
    beats = 0

    def beat(event: Any) -> None:
        nonlocal beats
        beats += isinstance(event, HeartbeatSent)

    async def run(args: Any, task: Task[bytes]) -> None:
        pass

    worker = Worker(name="w", backend=backend, handler=run, keep_alive=0.1, on_event=[beat])
    await run_until(worker, lambda: beats >= 2)
    assert [key for (key,) in await sql(pgmq_url, listed, (queue,))] == ["held"]
    assert await backend.push({"n": 4}, unique={"key": "held"}) == held
    assert await backend.push({"n": 5}, unique={"key": "short"}) != short


async def test_a_foreign_message_with_a_limit_key_header_waits_for_its_keys_slot(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """A producer on pgmq's own client keys its message for a global limit with the header
    `{"apalis": {"limit_key": ...}}` (README): it waits while its key is at its limit, and a
    message of another key runs past it."""
    from apalis_cli.layers import ConcurrencyLayer

    backend = store.backend(queue, codec=JsonCodec())
    holder = await backend.push({"account": "a", "n": 0}, limit_key="a")
    client = official_client(pgmq_url)
    try:
        same = await asyncio.to_thread(client.send, queue, {"account": "a", "n": 1}, {"apalis": {"limit_key": "a"}})
        other = await asyncio.to_thread(client.send, queue, {"account": "b", "n": 2}, {"apalis": {"limit_key": "b"}})
    finally:
        await asyncio.to_thread(client.close)
    release = asyncio.Event()
    started: list[str] = []
    ran = {str(other): asyncio.Event(), str(same): asyncio.Event()}

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(task.id)
        if task.id in ran:
            ran[task.id].set()
        if task.id == holder:
            await release.wait()

    limit = ConcurrencyLayer(1, scope="global", key="account")
    worker = Worker(name="w", backend=backend, handler=handler, concurrency=3, layers=[limit], keep_alive=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(10):
            await ran[str(other)].wait()
        await asyncio.sleep(0.3)  # time enough for a claim of the key's second message, were it let
        assert started == [holder, str(other)], "the key's second message waits for its slot; key b runs"
        release.set()
        async with asyncio.timeout(10):
            await ran[str(same)].wait()
    finally:
        release.set()
        stop.set()
        await running


async def test_a_keyed_limit_gives_the_queue_its_key_index_again_after_a_drop(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """The index a keyed limit's claim steps through (README) is made at the first such claim,
    and made again when the queue was dropped and created anew meanwhile."""
    from apalis_cli.layers import ConcurrencyLayer

    backend = store.backend(queue, codec=JsonCodec())
    index = f"pgmq.q_{queue}_apalis_rkey"
    limit = ConcurrencyLayer(1, scope="global", key="account")
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(args["n"])

    for n in (0, 1):
        await backend.push({"account": "a", "n": n}, limit_key="a")
        worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
        await run_until(worker, lambda n=n: n in seen)
        assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(True,)]
        if n == 0:
            await sql(pgmq_url, "SELECT pgmq.drop_queue(%s)", (queue,))
            assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(False,)]


async def test_a_keyed_claim_drops_the_key_index_of_earlier_versions(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """Earlier versions indexed a queue's messages by the key's text (`q_<queue>_apalis_key`),
    then every message by the key's hash (`q_<queue>_apalis_hkey`), indexes every write of the
    queue paid for: this version's first keyed claim of the queue makes its own (of the claimable
    messages by the key's hash) and drops those, and the claims keep each key's limit. One an
    earlier version makes again (a daemon of it still claiming) is dropped by the next process
    of this version, which claims alike meanwhile."""
    from apalis_cli.layers import ConcurrencyLayer

    backend = store.backend(queue, codec=JsonCodec())
    await backend.stats()  # creates the queue
    old = f"pgmq.q_{queue}_apalis_key"
    make_old = (
        f"CREATE INDEX q_{queue}_apalis_key ON pgmq.q_{queue}"
        " (((headers -> 'apalis' ->> 'limit_key') COLLATE \"C\"), vt, msg_id)"
    )
    await sql(pgmq_url, make_old)
    older_by_hash = f"pgmq.q_{queue}_apalis_hkey"
    await sql(
        pgmq_url,
        f"CREATE INDEX q_{queue}_apalis_hkey ON pgmq.q_{queue}"
        " ((hashtextextended(headers -> 'apalis' ->> 'limit_key', 0)), vt, msg_id)",
    )
    limit = ConcurrencyLayer(1, scope="global", key="account")
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        key = args["account"]
        running[key] = running.get(key, 0) + 1
        most[key] = max(most.get(key, 0), running[key])
        await asyncio.sleep(0.01)
        running[key] -= 1
        seen.append(args["n"])

    for n in range(6):
        await backend.push({"account": "ab"[n % 2], "n": n}, limit_key="ab"[n % 2])
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], concurrency=4, keep_alive=0.2)
    await run_until(worker, lambda: len(seen) == 6)
    assert sorted(seen) == list(range(6))
    assert most == {"a": 1, "b": 1}
    assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (old,)) == [(False,)]
    assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (older_by_hash,)) == [(False,)]
    assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (f"pgmq.q_{queue}_apalis_rkey",)) == [(True,)]

    await sql(pgmq_url, make_old)  # a daemon of the earlier version made it again
    await backend.push({"account": "a", "n": 6}, limit_key="a")
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
    await run_until(worker, lambda: 6 in seen)  # the same process: the index is left to the next one
    opened = PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url=pgmq_url))
    await opened.open()
    try:
        other = opened.backend(queue, codec=JsonCodec())
        await other.push({"account": "b", "n": 7}, limit_key="b")
        await run_until(
            Worker(name="w", backend=other, handler=handler, layers=[limit], keep_alive=0.2), lambda: 7 in seen
        )
    finally:
        await opened.close()
    assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (old,)) == [(False,)]
    assert sorted(seen) == list(range(8))


async def test_a_message_lost_before_the_key_index_was_made_runs_under_a_keyed_limit(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """The key index holds no message in flight (a claim writes no entry to it); a message whose
    reader died (read, its lease over, never acknowledged) comes back into it marked lost. One lost
    before the index was made is marked as the index is made: a keyed limit's worker runs it."""
    from apalis_cli.layers import ConcurrencyLayer

    backend = store.backend(queue, codec=JsonCodec(), max_attempts=3)
    lost = await backend.push({"account": "a", "n": 0}, limit_key="a")
    await backend.push({"account": "a", "n": 1}, limit_key="a")
    # Another client reads the first for a second and dies with it.
    assert await sql(pgmq_url, "SELECT msg_id FROM pgmq.read(%s, 1, 1)", (queue,)) == [(int(lost),)]
    await asyncio.sleep(1.2)
    limit = ConcurrencyLayer(1, scope="global", key="account")
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(args["n"])

    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
    await run_until(worker, lambda: len(seen) == 2)
    assert sorted(seen) == [0, 1]
    archived = await sql(
        pgmq_url, f"SELECT read_ct, headers -> 'apalis' -> 'lost' FROM pgmq.a_{queue} WHERE msg_id = %s", (int(lost),)
    )
    assert archived == [(2, 1)]
    predicate = "SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = to_regclass(%s)"
    assert "read_ct = 0" in (await sql(pgmq_url, predicate, (f"pgmq.q_{queue}_apalis_rkey",)))[0][0]


async def test_a_lost_message_released_unstarted_is_marked_lost_again(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """An unlimited claim takes a lost message as it is; when that run is given back unstarted
    (read_ct back to the lost read's), the message is marked lost again, so a keyed limit's claim
    finds it in the key index at once, with no sweep to wait for."""
    backend = store.backend(queue, codec=JsonCodec(), max_attempts=3)
    msg = int(await backend.push({"n": 0}, limit_key="a"))
    await sql(pgmq_url, "SELECT pgmq.read(%s, 0, 1)", (queue,))  # read, its lease over at once: lost
    await sql(pgmq_url, "SELECT pgmq.read(%s, 30, 1)", (queue,))  # an unlimited claim takes it
    await backend._execute([("release", {"ids": [msg], "cts": [2]})])
    got = await sql(pgmq_url, f"SELECT read_ct, headers -> 'apalis' -> 'lost' FROM pgmq.q_{queue}")
    assert got == [(1, 1)]


async def test_a_message_whose_lease_another_client_ended_behind_the_sweep_runs_under_a_keyed_limit(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """A write that moves a message's vt into the past without marking it lost (another client's
    `pgmq.set_vt`, an earlier version's `release`) and lands behind where the sweeps have got to
    is met by no `limit_sweep`: the first sweep of each process marks every lost message, so a
    keyed limit's worker of a process started after it runs that message."""
    from apalis_cli.layers import ConcurrencyLayer

    limit = ConcurrencyLayer(1, scope="global", key="account")
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(args["n"])

    backend = store.backend(queue, codec=JsonCodec(), max_attempts=3)
    await backend.push({"account": "a", "n": 0}, limit_key="a")
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
    await run_until(worker, lambda: seen == [0])  # the key index made, its sweeps under way
    msg = int(await backend.push({"account": "a", "n": 1}, limit_key="a"))
    assert await sql(pgmq_url, "SELECT msg_id FROM pgmq.read(%s, 30, 1)", (queue,)) == [(msg,)]
    # The reader gives it back an hour into the past, behind every sweep, unmarked.
    await sql(pgmq_url, "SELECT pgmq.set_vt(%s, %s, -3600)", (queue, msg))
    assert await sql(
        pgmq_url, "SELECT swept_to > now() - interval '1 hour' FROM apalis_pgmq.limit_sweeps WHERE queue = %s", (queue,)
    ) == [(True,)]

    later = PgmqStore.from_spec(StoreSpec(name="t2", kind="pgmq", url=pgmq_url))
    await later.open()
    try:
        again = Worker(
            name="w2",
            backend=later.backend(queue, codec=JsonCodec(), max_attempts=3),
            handler=handler,
            layers=[limit],
            keep_alive=0.2,
        )
        await run_until(again, lambda: seen == [0, 1], within=30.0)
    finally:
        await later.close()


async def test_a_keyed_claim_makes_the_key_index_again_when_another_client_made_the_queue_anew(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """Another client drops the queue and makes it again between two keyed claims of this process,
    which sees no error otherwise: its next keyed claim gives the new queue its key index (it kept
    believing the old one was there, and walked the keys without it)."""
    from apalis_cli.layers import ConcurrencyLayer

    backend = store.backend(queue, codec=JsonCodec())
    index = f"pgmq.q_{queue}_apalis_rkey"
    limit = ConcurrencyLayer(1, scope="global", key="account")
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(args["n"])

    await backend.push({"account": "a", "n": 0}, limit_key="a")
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
    await run_until(worker, lambda: 0 in seen)
    await sql(pgmq_url, "SELECT pgmq.drop_queue(%s)", (queue,))
    await sql(pgmq_url, "SELECT pgmq.create(%s)", (queue,))
    message, headers = '{"account": "a", "n": 1}', '{"apalis": {"limit_key": "a"}}'
    await sql(pgmq_url, "SELECT pgmq.send(%s, %s::jsonb, %s::jsonb)", (queue, message, headers))
    assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(False,)]
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
    await run_until(worker, lambda: 1 in seen)
    assert seen == [0, 1]
    assert await sql(pgmq_url, "SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(True,)]


async def test_a_limited_claim_works_in_a_session_that_ran_it_before_a_drop(pgmq_url: str, queue: str) -> None:
    """The queue's claim function outlives pgmq.drop_queue; a session that ran it before another
    client dropped the queue and made it again (one connection: the same session) claims from
    the new queue as from the old."""
    from apalis_cli.layers import ConcurrencyLayer

    store = PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url=pgmq_url, options={"pool_size": 1}))
    await store.open()
    try:
        backend = store.backend(queue, codec=JsonCodec())
        limit = ConcurrencyLayer(1, scope="global", key="account")
        seen: list[Any] = []

        async def handler(args: Any, task: Task[bytes]) -> None:
            seen.append(args["n"])

        await backend.push({"account": "a", "n": 0}, limit_key="a")
        worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
        await run_until(worker, lambda: 0 in seen)
        # Another client drops the queue, makes it again and sends to it: this store sees no error.
        await sql(pgmq_url, "SELECT pgmq.drop_queue(%s)", (queue,))
        await sql(pgmq_url, "SELECT pgmq.create(%s)", (queue,))
        message, headers = '{"account": "a", "n": 1}', '{"apalis": {"limit_key": "a"}}'
        await sql(pgmq_url, "SELECT pgmq.send(%s, %s::jsonb, %s::jsonb)", (queue, message, headers))
        worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
        await run_until(worker, lambda: 1 in seen)
        assert seen == [0, 1]
    finally:
        await store.close()


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "queue-wide"])
async def test_a_limited_claim_hands_out_nothing_pushed_after_it_began(
    store: PgmqStore, pgmq_url: str, queue: str, keyed: bool
) -> None:
    """A limited claim counts as ready what was due when it began: a message pushed while it
    waits for the queue's limit lock (or runs) is not handed out by it, which is what holds back
    a push that follows a pause the claim read before the pause committed. Here the claim waits
    for the lock another daemon holds; meanwhile a message is pushed; then the lock is freed."""
    from apalis_cli.backend import WorkerContext
    from apalis_cli.fleet import fleet_limits
    from apalis_cli.layers import ConcurrencyLayer

    backend = store.backend(queue, codec=JsonCodec())
    await backend.stats()  # creates the queue
    layer = ConcurrencyLayer(5, scope="global", key="account" if keyed else None)
    worker = WorkerContext(
        id=f"w-{os.urandom(4).hex()}",
        name="w",
        queue=queue,
        concurrency=5,
        stale_after=5.0,
        free_slots=lambda: 5,
        limits=fleet_limits([layer]),
    )
    scope = f"apalis_pgmq:limits:{queue}"
    async with await psycopg.AsyncConnection.connect(pgmq_url, autocommit=True) as other:
        await other.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(''))", (scope,))
        stream = backend.poll_compact(worker)
        try:
            claim = asyncio.ensure_future(anext(stream))
            # This store's own sessions only: another test process's claims wait on the same server.
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = %s AND wait_event = 'advisory' AND query LIKE %s"
            )
            app = conninfo_to_dict(store.config.url)["application_name"]
            for _ in range(500):  # until the claim waits for the lock
                if (await sql(pgmq_url, waiting, (app, "%limit_claim%")))[0][0]:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the claim never waited for the queue's limit lock")
            pushed = await backend.push({"account": "a"}, limit_key="a")
            await other.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(''))", (scope,))
            assert await claim is None, "the claim hands out nothing"
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
    assert [(t.id, t.ctx.status) for t in await backend.list_tasks()] == [(pushed, Status.PENDING)]


async def test_a_pause_during_a_claim_holds_back_what_was_pushed_after_it(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """A pause and a push that both commit while a claim is under way must not meet in that
    claim: it reads the pause and the messages in one snapshot. The push's transaction holds the
    queue table (EXCLUSIVE) from before the claim until after the pause has committed, so the
    claim waits for it in the middle of its work, and the push commits while it waits."""
    from apalis_cli.backend import WorkerContext

    backend = store.backend(queue, codec=JsonCodec())
    await backend.stats()  # creates the queue
    worker = WorkerContext(id=f"w-{os.urandom(4).hex()}", name="w", queue=queue, concurrency=5, free_slots=lambda: 5)
    stream = backend.poll_compact(worker)
    table = f"pgmq.q_{queue}"
    try:
        async with await psycopg.AsyncConnection.connect(pgmq_url) as pusher:  # one transaction until commit
            await pusher.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            claim = asyncio.ensure_future(anext(stream))
            # pg_locks lists every database's locks, and a relation's oid is unique in one only.
            waiting = (
                "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            deadline = time.monotonic() + 10
            while await sql(pgmq_url, waiting, (table,)) == [(0,)]:
                assert not claim.done(), "the claim did not wait for the queue table"
                assert time.monotonic() < deadline, "the claim never waited for the queue table"
                await asyncio.sleep(0.01)
            await backend.pause()
            sent = await pusher.execute("SELECT pgmq.send(%s, '{\"n\": 1}'::jsonb)", (queue,))
            pushed = (await sent.fetchall())[0][0]
            await pusher.commit()
            assert await claim is None, "the claim handed out a task of a paused queue"
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert [(t.id, t.ctx.status) for t in await backend.list_tasks()] == [(str(pushed), Status.PENDING)]


async def test_a_dropped_queues_claim_function_goes_when_a_store_opens(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """pgmq.drop_queue leaves behind the limited claim function apalis made for the queue: the
    next store to open drops it (the schema does not gather one per queue ever dropped), and a
    queue made again with the name claims within its limits as before."""
    from apalis_cli.layers import ConcurrencyLayer

    backend = store.backend(queue, codec=JsonCodec())
    function = f"apalis_pgmq.limit_claim3_{queue}"
    limit = ConcurrencyLayer(1, scope="global")
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(args["n"])

    await backend.push({"n": 0})
    await run_until(
        Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2), lambda: 0 in seen
    )
    assert await sql(pgmq_url, "SELECT to_regproc(%s) IS NOT NULL", (function,)) == [(True,)]
    await sql(pgmq_url, "SELECT pgmq.drop_queue(%s)", (queue,))
    opened = PgmqStore.from_spec(StoreSpec(name="t", kind="pgmq", url=pgmq_url))
    await opened.open()
    await opened.close()
    assert await sql(pgmq_url, "SELECT to_regproc(%s) IS NOT NULL", (function,)) == [(False,)]
    await backend.push({"n": 1})
    await run_until(
        Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2), lambda: 1 in seen
    )
    assert seen == [0, 1]


async def test_a_keyed_workers_queue_is_analyzed_when_a_backlog_outgrows_its_statistics(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """A keyed limit's claim keeps its plans for the life of its connection; plans made while a
    worker waited on a near-empty queue claimed 17-41 messages a second from a backlog of 20,000
    that fresh plans claim 2,400 of (bench/README.md). The worker's beat analyzes the queue table
    once it holds far more rows than its statistics say (which also makes new plans): here the
    server's autovacuum is off, so nothing else would."""
    from apalis_cli.layers import ConcurrencyLayer

    limit = ConcurrencyLayer(1, scope="global", key="account")
    release, first_ran = asyncio.Event(), asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        if args["n"] == 0:
            first_ran.set()
        else:
            await release.wait()

    backend = store.backend(queue, codec=JsonCodec())
    await backend.push({"account": "a", "n": 0}, limit_key="a")
    stop = asyncio.Event()
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(first_ran.wait(), 10)  # the key index and plans made on a near-empty queue
        table = f'pgmq."q_{queue}"'
        before = await sql(pgmq_url, "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (table,))
        assert before[0][0] < 100
        # A backlog of one key: its first message runs (and holds the key), the rest wait.
        await backend.push_bulk([{"account": "a", "n": n} for n in range(1, 3001)], limit_key="a")
        deadline = time.monotonic() + 20.0
        while (await sql(pgmq_url, "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (table,)))[0][
            0
        ] < 2900:
            assert time.monotonic() < deadline, "the queue's statistics were never brought up to date"
            await asyncio.sleep(0.1)
    finally:
        release.set()
        stop.set()
        worker.hurry()
        await running


async def test_a_keyed_claim_planned_while_the_queue_was_near_empty_reads_no_whole_table_later(
    store: PgmqStore, pgmq_url: str, queue: str
) -> None:
    """The limited claim function keeps each statement's generic plan for the life of its
    session, made at the session's first claim: made on a near-empty queue, they read the whole
    queue table at every claim once a backlog came, 25-50 claims a second where fresh plans make
    2,400 (bench/README.md, session 14). The function plans without sequential scans where an
    index serves, whenever its plans are made."""
    from apalis_cli.layers import ConcurrencyLayer
    from apalis_pgmq.statements import statements_for

    limit = ConcurrencyLayer(1, scope="global", key="account")
    seen: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append(args["n"])

    backend = store.backend(queue, codec=JsonCodec())
    await backend.push({"account": "a", "n": 0}, limit_key="a")
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.2)
    await run_until(worker, lambda: seen == [0])  # the key index and the claim function made
    claim = statements_for(queue)["limit_claim"]
    params = {
        "queue": queue,
        "worker": "w1",
        "want": 10,
        "after": None,
        "concurrency": 1,
        "keyed_concurrency": True,
        "rate": None,
        "per": 1.0,
        "keyed_rate": False,
        "scope": f"apalis_pgmq:limits:{queue}",
        "forget": False,
        "lease": 30.0,
    }
    async with await psycopg.AsyncConnection.connect(pgmq_url, autocommit=True) as conn:
        assert len(await (await conn.execute(claim, params)).fetchall()) == 1, "the account row alone"
        for start in range(0, 2000, 1000):  # the backlog comes after this session's plans were made
            await backend.push_bulk([{"account": "k", "n": n} for n in range(start, start + 1000)], limit_key="k")
        for n in range(20):
            await backend.push({"account": f"k{n}", "n": n}, limit_key=f"k{n}")
        scans = "SELECT seq_scan, seq_tup_read FROM pg_stat_xact_user_tables WHERE schemaname = 'pgmq' AND relname = %s"
        # A backend reports its counts only outside a transaction: read on both sides of the claim, in one.
        async with conn.transaction():
            before = await (await conn.execute(scans, (f"q_{queue}",))).fetchone()
            claimed = await (await conn.execute(claim, params)).fetchall()
            after = await (await conn.execute(scans, (f"q_{queue}",))).fetchone()
    assert before is not None
    assert after is not None
    assert len(claimed) == 10 + 1, "ten messages of ten keys, then the account"
    seq = (after[0] - before[0], after[1] - before[1])
    assert seq == (0, 0), f"the claim read the whole queue table: (scans, rows read) {seq}"
