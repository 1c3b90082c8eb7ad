"""What is special to the NATS JetStream store, on the real server: redelivery after ack_wait
(counted), in_progress keeping a long task, the dead-letter subject, keys as Nats-Msg-Id,
big payloads, peeking by sequence, and reconnection after a cut socket."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import nats
import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import Abort, BackendError, BadPayload
from apalis_cli.task import Status, Task, new_task_id
from apalis_cli.worker import Worker
from apalis_nats import NatsStore
from apalis_nats.control import final_key, record
from apalis_nats.queue import NatsQueue
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from ..conformance.stores.nats import abort_connection
from ..nats_streams import drop_stream
from ..services import need_server
from .conftest import open_nats_store
from .running import run_until

STORE_KINDS = ("nats",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


def _worker(queue: NatsQueue, handler: Any, **options: Any) -> Worker:
    options.setdefault("keep_alive", 0.1)
    options.setdefault("poll_interval", 0.05)
    return Worker(name="it", backend=queue, handler=handler, **options)


async def test_a_dead_workers_task_comes_back_after_ack_wait_counted(store: NatsStore) -> None:
    doomed = await open_nats_store(store.config.stream[1:])  # another connection: the "process" that dies
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    task_id = await queue.push({"n": 1})
    ghost = WorkerContext(id="ghost", name="ghost", queue="jobs", stale_after=0.5, free_slots=lambda: 1)
    stream = doomed.backend("jobs", codec=JsonCodec(), max_attempts=3).poll_compact(ghost)
    claimed = await anext(stream)
    while claimed is None:
        claimed = await anext(stream)
    claimed_at = time.time()
    assert (claimed.id, claimed.ctx.attempts) == (task_id, 1)
    abort_connection(doomed.connection.current)  # dies without a word: no ack, no release
    runs: list[tuple[int, float]] = []

    async def record(args: Any, task: Task[bytes]) -> Any:
        runs.append((task.ctx.attempts, time.time()))

    await run_until(_worker(store.backend("jobs", codec=JsonCodec()), record, stale_after=0.5), lambda: runs)
    assert [attempts for attempts, _ in runs] == [2], "redelivered once, the lost run counted"
    assert runs[0][1] >= claimed_at + 0.5 - 0.05, "not before ack_wait (= stale_after)"
    await doomed.close()


async def test_in_progress_keeps_a_long_task_from_redelivery(store: NatsStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    await queue.push({"n": 1})
    runs: list[int] = []

    async def slow(args: Any, task: Task[bytes]) -> Any:
        runs.append(task.ctx.attempts)
        await asyncio.sleep(1.2)  # four times ack_wait

    finished: list[str] = []
    worker = _worker(
        queue, slow, concurrency=2, stale_after=0.3, on_event=[lambda e: finished.append(type(e).__name__)]
    )
    await run_until(worker, lambda: "TaskFinished" in finished)
    await asyncio.sleep(0.5)
    assert runs == [1]


async def test_killed_task_is_kept_on_the_dead_subject(store: NatsStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    task_id = await queue.push({"account": 7})

    async def refuse(args: Any, task: Task[bytes]) -> Any:
        raise Abort("the account is closed")

    finished: list[str] = []
    await run_until(
        _worker(queue, refuse, on_event=[lambda e: finished.append(type(e).__name__)]),
        lambda: "TaskFinished" in finished,
    )
    for _ in range(2):  # reading by sequence consumes nothing
        dead = await queue.get(task_id)
        assert dead is not None
        assert dead.ctx.status is Status.KILLED
        assert dead.ctx.last_error == "aborted: the account is closed"
        assert JsonCodec().decode(dead.args) == {"account": 7}
    assert (await queue.stats()).counts[Status.KILLED] == 1


async def test_peeking_pending_and_scheduled_tasks_consumes_nothing(store: NatsStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=2)
    now_id = await queue.push({"when": "now"})
    later_id = await queue.push({"when": "later"}, delay=3600)
    for _ in range(2):
        listed = await queue.list_tasks(Status.PENDING)
        assert {t.id for t in listed} == {now_id, later_id}
        assert all(t.ctx.attempts == 0 and t.ctx.max_attempts == 2 for t in listed)
    stats = await queue.stats()
    assert stats.counts[Status.PENDING] == 2
    assert stats.counts[Status.DONE] is None, "done tasks leave a WorkQueue stream: not counted"


async def test_key_is_the_msg_id_and_big_payloads_are_compressed(store: NatsStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec())
    first = await queue.push({"copy": 1}, idempotency_key="order-1")
    assert await queue.push({"copy": 2}, idempotency_key="order-1") == first
    big = {"blob": "x" * (2 * 1024 * 1024)}  # twice max_payload, compressible
    big_id = await queue.push(big)
    with pytest.raises(BadPayload, match="max_payload"):
        await queue.push({"noise": os.urandom(1024 * 1024).hex()})
    seen: dict[str, Any] = {}

    async def record(args: Any, task: Task[bytes]) -> Any:
        seen[task.id] = args

    await run_until(_worker(queue, record), lambda: len(seen) == 2)
    assert seen == {first: {"copy": 1}, big_id: big}


async def test_worker_and_producer_survive_a_cut_connection(store: NatsStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=5)
    await queue.push_bulk(range(10))
    seen: set[int] = set()
    cut = asyncio.Event()

    async def record(args: Any, task: Task[bytes]) -> Any:
        seen.add(args)
        if args == 5:
            abort_connection(store.connection.current)
            cut.set()

    async def produce_more() -> None:
        await cut.wait()
        await queue.push_bulk(range(10, 20))

    producer = asyncio.create_task(produce_more())
    await run_until(_worker(queue, record, concurrency=2), lambda: seen >= set(range(20)), within=30)
    await producer


async def test_a_wait_whose_connection_is_cut_reads_the_end_written_meanwhile(store: NatsStore) -> None:
    """A waiter hears its task's end on a core subscription, which a cut connection loses until
    the client has subscribed again: an end written in between was never heard, and the wait
    sat out its whole timeout. Once reconnected it reads the record again."""
    queue = store.backend("cut", codec=JsonCodec())
    await queue.prepare()
    worker = await open_nats_store(store.config.stream[1:])  # the worker's own connection
    try:
        task_id = new_task_id()
        waiting = asyncio.create_task(queue.wait(task_id, timeout=8))
        await asyncio.sleep(0.3)  # subscribed by now, most likely; cut earlier, it reads after
        abort_connection(store.connection.current)
        await worker.connection.put_final(final_key(queue.queue, task_id), record(Status.DONE, result="7"))
        ended = await waiting
        assert ended is not None, "the wait missed the end written while its connection was cut"
        assert (ended.id, ended.ctx.status) == (task_id, Status.DONE)
    finally:
        await worker.close()


async def test_admin_kill_retry_and_purge_by_sequence(store: NatsStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    doomed = await queue.push({"job": "doomed"})
    kept = await queue.push({"job": "kept"})
    assert await queue.kill(doomed, "no longer wanted") is True
    assert await queue.kill(doomed) is False, "a killed task cannot be killed again"
    dead = await queue.get(doomed)
    assert dead is not None
    assert (dead.ctx.status, dead.ctx.last_error) == (Status.KILLED, "no longer wanted")

    runs: list[tuple[str, int]] = []

    async def record(args: Any, task: Task[bytes]) -> Any:
        runs.append((task.id, task.ctx.attempts))

    await run_until(_worker(queue, record), lambda: runs)
    assert runs == [(kept, 1)]
    assert await queue.retry(doomed) is True
    assert await queue.retry("no-such-task") is False
    await run_until(_worker(queue, record), lambda: len(runs) == 2)
    assert runs[1] == (doomed, 1), "an operator's retry starts the count afresh"

    again = await queue.push({"job": "again"})
    await queue.kill(again)
    assert await queue.purge(Status.KILLED, older_than=3600) == 0
    assert await queue.purge(Status.KILLED) == 1
    assert await queue.get(again) is None


async def _plain_js() -> tuple[Any, Any]:
    """A plain nats-py client (another program) and its JetStream context."""
    client = await nats.connect(need_server("nats"))
    return client, client.jetstream()


def _settings(tag: str, **options: Any) -> NatsStore:
    defaults = {"stream": f"I{tag}", "prefix": f"i{tag}", "storage": "memory"}
    spec = StoreSpec(name="it", kind="nats", url=need_server("nats"), options={**defaults, **options})
    return NatsStore.from_spec(spec)


@pytest.mark.parametrize(
    ("made", "said"),
    [
        ({"retention": RetentionPolicy.LIMITS}, 'has retention "limits", and apalis needs a WorkQueue stream'),
        ({"subjects": ["orders.>"]}, 'takes subjects orders.>, not "i{tag}.>"'),
    ],
)
async def test_a_stream_someone_made_that_cannot_serve_is_one_line_at_once(made: dict[str, Any], said: str) -> None:
    tag = uuid.uuid4().hex[:10]
    client, js = await _plain_js()
    config = {"subjects": [f"i{tag}.>"], "retention": RetentionPolicy.WORK_QUEUE, "storage": StorageType.MEMORY}
    await js.add_stream(StreamConfig(name=f"I{tag}", **{**config, **made}))
    store = _settings(tag)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError) as refused:
            await store.open()
        assert time.monotonic() - started < 5, "at once, not after 30 s of retries"
        assert said.format(tag=tag) in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        await store.close()
        await drop_stream(js, f"I{tag}")
        await client.close()


async def test_subjects_another_stream_owns_are_named_with_that_stream() -> None:
    tag = uuid.uuid4().hex[:10]
    client, js = await _plain_js()
    await js.add_stream(StreamConfig(name=f"OWNER{tag}", subjects=[f"i{tag}.>"], storage=StorageType.MEMORY))
    store = _settings(tag)
    try:
        with pytest.raises(BackendError, match=f'belong to stream "OWNER{tag}".*set stream = "OWNER{tag}"'):
            await store.open()
    finally:
        await store.close()
        await drop_stream(js, f"OWNER{tag}")
        await client.close()


async def test_a_workqueue_stream_someone_made_with_other_settings_is_used_as_it_is() -> None:
    tag = uuid.uuid4().hex[:10]
    client, js = await _plain_js()
    # File storage, a short duplicate window and a second subject: not what apalis would make.
    await js.add_stream(
        StreamConfig(
            name=f"I{tag}",
            subjects=[f"i{tag}.>", f"other{tag}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=5,
        )
    )
    store = _settings(tag)
    try:
        await store.open()
        queue = store.backend("jobs", codec=JsonCodec())
        await queue.prepare()
        await js.publish(f"i{tag}.q.jobs", b'{"from": "plain"}')  # no headers at all
        seen: list[tuple[str, Any]] = []

        async def refuse(args: Any, task: Task[bytes]) -> Any:
            seen.append((task.id, args))
            raise Abort("no")

        await run_until(_worker(queue, refuse), lambda: seen)
        [dead] = await queue.list_tasks(Status.KILLED)
        assert seen == [(dead.id, {"from": "plain"})], "the dead copy is the task the worker ran"
    finally:
        await store.close()
        await drop_stream(js, f"I{tag}")
        await client.close()


async def test_a_consumer_another_client_made_on_our_subject_is_named(store: NatsStore) -> None:
    client, js = await _plain_js()
    subject = f"{store.config.prefix}.q.jobs"
    await js.add_consumer(store.config.stream, ConsumerConfig(durable_name="theirs", filter_subject=subject))
    queue = store.backend("jobs", codec=JsonCodec())
    try:
        with pytest.raises(BackendError) as refused:
            await queue.prepare()
        message = str(refused.value)
        assert "consumer theirs on stream" in message
        assert "one consumer" in message
    finally:
        await client.close()


async def test_a_stream_deleted_under_a_running_worker_is_made_again(store: NatsStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec())
    await queue.push({"n": 0})
    runs: list[int] = []

    async def record(args: Any, task: Task[bytes]) -> Any:
        runs.append(args["n"])

    stop = asyncio.Event()
    running = asyncio.create_task(_worker(queue, record).run(stop))
    try:
        deadline = time.monotonic() + 10
        while runs != [0]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        client, js = await _plain_js()
        await drop_stream(js, store.config.stream)
        await client.close()
        await queue.push({"n": 1})  # the stream is made again, not 30 s of "no responders"
        while runs != [0, 1]:
            assert time.monotonic() < deadline + 10, runs
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
