"""What is special to the AMQP store, on the real RabbitMQ: delay queues, the dead-letter queue,
redelivery of a dead worker's task (counted), and reconnection after a cut socket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import pika
import pytest
from apalis_amqp import AmqpStore
from apalis_amqp.control import final_record, records_message
from apalis_amqp.queue import AmqpQueue
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.envelope import Envelope
from apalis_cli.errors import Abort, BackendError, ConnectionLost, Unsupported
from apalis_cli.layers.retry import Backoff
from apalis_cli.task import Status, Task, new_task_id
from apalis_cli.worker import Worker

from ..conformance.stores.amqp import abort_connection
from ..services import need_server
from .conftest import open_amqp_store
from .running import run_until

STORE_KINDS = ("amqp",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


def _worker(queue: AmqpQueue, handler: Any, **options: Any) -> Worker:
    options.setdefault("keep_alive", 0.2)
    options.setdefault("poll_interval", 0.05)
    return Worker(name="it", backend=queue, handler=handler, **options)


async def test_retry_waits_in_a_delay_queue_then_runs(store: AmqpStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    task_id = await queue.push({"n": 1})
    runs: list[tuple[int, float]] = []

    async def flaky(args: Any, task: Task[bytes]) -> Any:
        runs.append((task.ctx.attempts, time.time()))
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return "ok"

    backoff = Backoff(kind="constant", base=0.4, jitter=False)
    await run_until(_worker(queue, flaky, backoff=backoff), lambda: len(runs) >= 2)
    assert [attempts for attempts, _ in runs] == [1, 2]
    assert runs[1][1] - runs[0][1] >= 0.4 - 0.02
    assert f"{queue.work}.delay.400" in store.connection.created, "the retry went through a 400 ms delay queue"
    assert task_id


async def test_killed_task_is_peekable_in_the_dead_letter_queue(store: AmqpStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    task_id = await queue.push({"account": 7})

    async def refuse(args: Any, task: Task[bytes]) -> Any:
        raise Abort("the account is closed")

    done: list[str] = []
    worker = _worker(queue, refuse, on_event=[lambda e: done.append(type(e).__name__)])
    await run_until(worker, lambda: "TaskFinished" in done)

    for _ in range(2):  # peeking twice shows the same: nothing was consumed
        [dead] = await queue.list_tasks(Status.KILLED)
        assert dead.id == task_id
        assert dead.ctx.status is Status.KILLED
        assert dead.ctx.last_error == "aborted: the account is closed"
        assert dead.ctx.attempts == 1
        assert JsonCodec().decode(dead.args) == {"account": 7}
    stats = await queue.stats()
    assert stats.counts[Status.KILLED] == 1
    assert stats.counts[Status.PENDING] == 0
    with pytest.raises(Unsupported):
        await queue.list_tasks(Status.PENDING)
    assert await queue.purge(Status.KILLED) == 1
    assert await queue.list_tasks(Status.KILLED) == []


async def test_a_dead_workers_task_is_redelivered_and_the_lost_run_counted(store: AmqpStore) -> None:
    prefix = store.config.prefix
    doomed = await open_amqp_store(prefix)  # another connection: the "process" that dies
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    task_id = await queue.push({"n": 1})
    ghost = WorkerContext(id="ghost", name="ghost", queue="jobs", concurrency=1, free_slots=lambda: 1)
    stream = doomed.backend("jobs", codec=JsonCodec(), max_attempts=3).poll_compact(ghost)
    claimed = await anext(stream)
    while claimed is None:
        claimed = await anext(stream)
    assert (claimed.id, claimed.ctx.attempts) == (task_id, 1)

    abort_connection(doomed.connection.current)  # the process dies without a word: no ack, no close
    runs: list[int] = []

    async def record(args: Any, task: Task[bytes]) -> Any:
        runs.append(task.ctx.attempts)

    await run_until(_worker(queue, record), lambda: runs)
    assert runs == [2], "the broker redelivered the task and its lost run counted"
    with pytest.raises(ConnectionLost):  # the dead "process" learns it too, if it ever asks
        await anext(stream)
    await doomed.close()


async def test_scheduled_push_and_producer_survive_a_cut_connection(store: AmqpStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec())
    pushed = time.time()
    later = await queue.push({"when": "later"}, delay=0.5)
    abort_connection(store.connection.current)
    now = await queue.push({"when": "now"})  # reconnects by itself
    runs: dict[str, float] = {}

    async def record(args: Any, task: Task[bytes]) -> Any:
        runs[task.id] = time.time()

    await run_until(_worker(queue, record), lambda: len(runs) == 2)
    assert runs[now] < runs[later]
    assert runs[later] >= pushed + 0.5 - 0.01


async def _plain_channel() -> tuple[Any, Any]:
    """A connection and channel of a plain aio-pika client (another program)."""
    connection = await aio_pika.connect(need_server("amqp"))
    return connection, await connection.channel()


async def test_a_queue_a_tutorial_producer_declared_is_used_as_it_is(
    store: AmqpStore, caplog: pytest.LogCaptureFixture
) -> None:
    # RabbitMQ's tutorial declares its queue durable with no arguments: no x-max-priority.
    connection, channel = await _plain_channel()
    work = f"{store.config.prefix}.jobs"
    await channel.declare_queue(work, durable=True)
    await channel.default_exchange.publish(aio_pika.Message(b'{"from": "tutorial"}'), routing_key=work)

    queue = store.backend("jobs", codec=JsonCodec())
    started = time.monotonic()
    ours = await queue.push({"from": "apalis"}, priority=5)
    assert time.monotonic() - started < 5, "the push did not retry on PRECONDITION_FAILED"
    runs: list[Any] = []

    async def record(args: Any, task: Task[bytes]) -> Any:
        runs.append(args)

    await run_until(_worker(queue, record), lambda: len(runs) == 2)
    assert sorted(run["from"] for run in runs) == ["apalis", "tutorial"]
    assert ours
    warned = [r.getMessage() for r in caplog.records if work in r.getMessage()]
    assert len(warned) == 1, warned
    assert "using it as it is" in warned[0]
    assert "without priorities" in warned[0]
    await channel.queue_delete(work)
    await connection.close()


async def test_a_delay_queue_made_with_other_arguments_fails_at_once_saying_what_to_do(store: AmqpStore) -> None:
    connection, channel = await _plain_channel()
    delay_queue = f"{store.config.prefix}.jobs.delay.30000"  # 30 s, rounded up to 2 digits
    await channel.declare_queue(delay_queue, durable=True)
    queue = store.backend("jobs", codec=JsonCodec())
    started = time.monotonic()
    with pytest.raises(BackendError) as refused:
        await queue.push({"n": 1}, delay=30)
    assert time.monotonic() - started < 5, "refused at once, not after 30 s of retries"
    message = str(refused.value)
    assert "\n" not in message
    assert delay_queue in message
    assert "delete it" in message
    await channel.queue_delete(delay_queue)
    await connection.close()


async def test_a_queue_deleted_under_a_running_worker_loses_no_push(store: AmqpStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec())
    await queue.push({"n": 0})
    runs: list[int] = []

    async def record(args: Any, task: Task[bytes]) -> Any:
        runs.append(args["n"])

    worker = _worker(queue, record)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: runs == [0])
        connection, channel = await _plain_channel()
        await channel.queue_delete(queue.work)  # the broker cancels the worker's consumer
        await connection.close()
        await queue.push({"n": 1})  # declared again, not published into nowhere
        await _until(lambda: runs == [0, 1])
    finally:
        stop.set()
        await running


def _pika_publish(queue: str, *bodies: bytes) -> None:
    """Publish as pika does by default: no headers, no message_id."""
    connection = pika.BlockingConnection(pika.URLParameters(need_server("amqp")))
    channel = connection.channel()
    for body in bodies:
        channel.basic_publish(exchange="", routing_key=queue, body=body)
    connection.close()


async def test_a_plain_message_keeps_one_id_across_retries_and_a_bad_body_is_killed(store: AmqpStore) -> None:
    queue = store.backend("jobs", codec=JsonCodec(), max_attempts=3)
    await queue.prepare()
    await asyncio.to_thread(_pika_publish, queue.work, b'{"n": 1}', b"\xff not json")
    seen: list[tuple[str, int]] = []

    async def flaky(args: Any, task: Task[bytes]) -> Any:
        seen.append((task.id, task.ctx.attempts))
        if len(seen) == 1:
            raise RuntimeError("first run fails")

    backoff = Backoff(kind="constant", base=0.05, jitter=False)
    await run_until(_worker(queue, flaky, backoff=backoff), lambda: len(seen) == 2)
    assert [attempts for _, attempts in seen] == [1, 2]
    assert seen[0][0] == seen[1][0], "the retried copy is the same task"
    [dead] = await queue.list_tasks(Status.KILLED)
    assert dead.args == b"\xff not json"
    assert "not valid JSON" in (dead.ctx.last_error or "")


async def test_a_wait_finds_an_end_written_before_it_whatever_the_pushing_hosts_clock(store: AmqpStore) -> None:
    """A waiter finds a task's end already in the finals stream, also when the task's id was
    made by a host whose clock runs ahead of the broker's.

    The waiter attached to the stream from its id's time: past every record there, RabbitMQ
    (3.10) attaches at the stream's end, so the end already written was skipped and the wait
    ran to its timeout. The same attach at the end, when the end was written between the two
    reads of the stream's end RabbitMQ makes to attach, is how `test_push_wait[amqp]` failed
    under load (its queue's first end, written as the waiter came)."""
    queue = store.backend("ahead", codec=JsonCodec())
    await queue.prepare()
    for ahead in (0.0, 30.0):
        made = f"{int((time.time() + ahead) * 1000):012x}"
        task_id = made + new_task_id()[len(made) :]
        envelope = Envelope(id=task_id, attempts=1, max_attempts=1, run_at=time.time())
        record = final_record(Status.DONE, envelope, attempts=1, error=None, result="7")
        await store.connection.publish_many([(queue.finals, records_message([record]))])
        ended = await queue.wait(task_id, timeout=3)
        assert ended is not None, f"the end of a task made {ahead:g} s ahead was missed"
        assert (ended.id, ended.ctx.status) == (task_id, Status.DONE)


async def test_a_wait_whose_connection_is_cut_reads_the_end_written_meanwhile(store: AmqpStore) -> None:
    """A wait whose connection is cut attaches again (from the same start) and reads the end
    its task got while it was away; it used to sit out its whole timeout on a closed channel."""
    queue = store.backend("cut", codec=JsonCodec())
    await queue.prepare()
    worker = await open_amqp_store(store.config.prefix)  # the worker's own connection
    try:
        task_id = new_task_id()
        waiting = asyncio.create_task(queue.wait(task_id, timeout=8))
        await asyncio.sleep(0.3)  # attached by now, most likely; cut earlier, it attaches after
        abort_connection(store.connection.current)
        envelope = Envelope(id=task_id, attempts=1, max_attempts=1, run_at=time.time())
        record = final_record(Status.DONE, envelope, attempts=1, error=None, result="7")
        await worker.connection.publish_many([(queue.finals, records_message([record]))])
        ended = await waiting
        assert ended is not None, "the wait missed the end written while its connection was cut"
        assert (ended.id, ended.ctx.status) == (task_id, Status.DONE)
    finally:
        await worker.close()


async def _until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_stall_of_the_whole_process_does_not_make_its_workers_take_each_others_tasks(
    store: AmqpStore,
) -> None:
    # After the event loop was blocked past stale_after, every worker's last beat is old, the live
    # ones' too: the first worker to beat again must not close its neighbour's channel (the broker
    # would hand the neighbour's running task to someone else, a second run).
    queue = store.backend("stalls", codec=JsonCodec(), max_attempts=3)
    await queue.push({"kind": "long"})
    release = asyncio.Event()
    runs: list[str] = []

    def handler(name: str) -> Any:
        async def run(args: Any, task: Task[bytes]) -> Any:
            runs.append(name)
            await release.wait()
            return args

        return run

    stop = asyncio.Event()
    options: dict[str, Any] = {"keep_alive": 0.1, "stale_after": 0.6, "poll_interval": 0.05}
    holder = asyncio.create_task(Worker(name="holder", backend=queue, handler=handler("holder"), **options).run(stop))
    deadline = time.monotonic() + 10
    while not runs:
        assert time.monotonic() < deadline, "the task did not start"
        await asyncio.sleep(0.01)
    sweeper = asyncio.create_task(
        Worker(name="sweeper", backend=queue, handler=handler("sweeper"), **options).run(stop)
    )
    try:
        await asyncio.sleep(0.7)  # the sweeper beats steadily for longer than stale_after
        for _ in range(4):
            time.sleep(1.0)  # noqa: ASYNC251 - the whole process stalls (a blocking call, a swapped-out host)
            await asyncio.sleep(0.8)
        assert runs == ["holder"], "a worker of the stalled process took its neighbour's task"
    finally:
        release.set()
        stop.set()
        await asyncio.gather(holder, sweeper)


async def test_a_tasks_end_is_kept_for_its_waiter_when_the_finals_stream_was_lost(store: AmqpStore) -> None:
    """A task's end is published confirmed before its message is acknowledged: an end the broker
    did not take (here: its finals stream deleted under the worker) is published again once the
    stream is declared again, so a waiter still gets its answer. Published unconfirmed, the end
    went nowhere and the wait ran to its timeout."""
    queue = store.backend("ends", codec=JsonCodec())
    await queue.prepare()
    connection, channel = await _plain_channel()
    await channel.queue_delete(queue.finals)
    await connection.close()
    task_id = await queue.push({"n": 1})
    runs: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> Any:
        runs.append(task.id)
        return 7

    await run_until(_worker(queue, handler), lambda: bool(runs))
    ended = await queue.wait(task_id, timeout=5)
    assert ended is not None, "the task's end was lost"
    assert (ended.id, ended.ctx.status) == (task_id, Status.DONE)
