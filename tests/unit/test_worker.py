"""The Worker over the memory store: burst mode, hurry(), events, poll errors, the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.events import (
    BackendUnavailable,
    Event,
    HeartbeatSent,
    Idle,
    Started,
    Stopped,
    TaskFinished,
    WorkerCrashed,
)
from apalis_cli.layers.retry import Backoff
from apalis_cli.memory import MemoryQueue, MemoryStore
from apalis_cli.polling import beat_every
from apalis_cli.supervisor import Supervisor
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker

FAST = Backoff(kind="constant", base=0.01, jitter=False)


def memory_queue(max_attempts: int = 1) -> MemoryQueue:
    return MemoryStore().backend("jobs", codec=JsonCodec(), max_attempts=max_attempts)


def make_worker(queue: MemoryQueue, handler: Any, **options: Any) -> tuple[Worker, list[Event]]:
    events: list[Event] = []
    settings: dict[str, Any] = {"keep_alive": 0.1, "poll_interval": 0.02, "backoff": FAST} | options
    worker = Worker(name="w", backend=queue, handler=handler, on_event=[events.append], **settings)
    return worker, events


async def noop(args: Any, task: Task[bytes]) -> Any:
    return args


async def test_burst_runs_what_is_ready_then_returns() -> None:
    queue = memory_queue()
    ids = await queue.push_bulk(range(20))
    later = await queue.push("tomorrow", delay=86400)
    worker, events = make_worker(queue, noop, concurrency=4)

    async with asyncio.timeout(10):
        await worker.run(asyncio.Event(), burst=True)

    done = {t.id for t in await queue.list_tasks(Status.DONE, limit=100)}
    assert done == set(ids)
    scheduled = await queue.get(later)
    assert scheduled is not None
    assert scheduled.ctx.status is Status.PENDING, "burst does not wait for scheduled tasks"
    assert isinstance(events[-1], Stopped)


async def test_burst_leaves_a_distant_retry_for_later() -> None:
    queue = memory_queue(max_attempts=2)
    await queue.push("flaky")
    calls = 0

    async def fails_once(args: Any, task: Task[bytes]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first run fails")
        return "ok"

    worker, _ = make_worker(queue, fails_once, backoff=Backoff(kind="constant", base=3600, jitter=False))
    async with asyncio.timeout(10):
        await worker.run(asyncio.Event(), burst=True)
    [task] = await queue.list_tasks()
    assert task.ctx.status is Status.FAILED, "a retry an hour away is left for later"
    assert calls == 1


async def test_events_tell_the_story_of_a_run() -> None:
    queue = memory_queue(max_attempts=2)
    ok = await queue.push("ok")
    await asyncio.sleep(0.002)
    bad = await queue.push("bad")

    async def handler(args: Any, task: Task[bytes]) -> Any:
        if args == "bad":
            raise ValueError("nope")
        return args

    worker, events = make_worker(queue, handler)
    stop = asyncio.Event()

    def stop_after_three_runs(event: Event) -> None:
        if len([e for e in events if isinstance(e, TaskFinished)]) >= 3:
            stop.set()

    worker.subscribe(stop_after_three_runs)
    runner = asyncio.ensure_future(worker.run(stop))
    async with asyncio.timeout(10):
        await stop.wait()
    await runner

    assert isinstance(events[0], HeartbeatSent)
    started = events[1]
    assert isinstance(started, Started)
    assert started.worker_id == worker.context.id
    assert started.concurrency == 1
    assert any(isinstance(e, Idle) for e in events)
    finished = [(e.task_id, e.attempt, e.outcome, e.error) for e in events if isinstance(e, TaskFinished)]
    assert finished == [
        (ok, 1, "done", None),
        (bad, 1, "retry", "ValueError: nope"),
        (bad, 2, "kill", "ValueError: nope (attempt 2 of 2, giving up)"),
    ]
    assert all(e.worker == "w" and e.queue == "jobs" for e in events)
    assert events[-1] == Stopped(worker="w", queue="jobs", released=0)


async def test_hurry_releases_running_tasks_at_once() -> None:
    queue = memory_queue(max_attempts=3)
    ids = await queue.push_bulk(range(3))
    entered: list[str] = []
    all_entered = asyncio.Event()

    async def hangs(args: Any, task: Task[bytes]) -> Any:
        entered.append(task.id)
        if len(entered) == 3:
            all_entered.set()
        await asyncio.sleep(60)

    worker, events = make_worker(queue, hangs, concurrency=3, shutdown_timeout=60)
    stop = asyncio.Event()
    runner = asyncio.ensure_future(worker.run(stop))
    async with asyncio.timeout(10):
        await all_entered.wait()
        stop.set()
        await asyncio.sleep(0.05)
        assert not runner.done(), "a graceful stop waits for running tasks"
        began = time.monotonic()
        worker.hurry()
        await runner
    assert time.monotonic() - began < 2

    assert events[-1] == Stopped(worker="w", queue="jobs", released=3)
    for task_id in ids:
        task = await queue.get(task_id)
        assert task is not None
        assert (task.ctx.status, task.ctx.attempts, task.ctx.lock_by) == (Status.PENDING, 0, None)


async def test_worker_reports_poll_errors_and_resumes() -> None:
    class FlakyQueue(MemoryQueue):
        """The memory store with the first two poll streams failing, as a dropped link would."""

        failures = 2

        def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
            if self.failures:
                self.failures -= 1
                return self._broken()
            return super().poll_compact(worker)

        async def _broken(self) -> AsyncIterator[Task[bytes] | None]:
            raise ConnectionError("connection reset by peer")
            yield None  # pragma: no cover - makes this an async generator

    store = MemoryStore()
    plain = store.backend("jobs", codec=JsonCodec())
    queue = FlakyQueue(store, plain._state, "jobs", codec=JsonCodec(), max_attempts=1)
    task_id = await queue.push("survives")
    worker, events = make_worker(queue, noop)
    async with asyncio.timeout(10):
        await worker.run(asyncio.Event(), burst=True)

    outages = [e for e in events if isinstance(e, BackendUnavailable)]
    assert [e.error for e in outages] == ["ConnectionError: connection reset by peer"] * 2
    assert outages[1].retry_in > outages[0].retry_in, "reconnect attempts back off"
    done = await queue.get(task_id)
    assert done is not None
    assert done.ctx.status is Status.DONE


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Worker(name="w", backend=memory_queue(), handler=noop, concurrency=0)


async def test_supervisor_restarts_a_crashed_worker() -> None:
    queue = memory_queue()
    task_id = await queue.push("after the crash")
    events: list[Event] = []
    builds = 0

    class CrashingWorker(Worker):
        """A worker whose run dies at once, as a bug in a handler's import could make it."""

        async def run(self, stop: asyncio.Event, *, burst: bool = False) -> None:
            raise RuntimeError("worker died")

    def factory() -> Worker:
        nonlocal builds
        builds += 1
        kind = CrashingWorker if builds == 1 else Worker
        return kind(name="w", backend=queue, handler=noop, keep_alive=0.1, poll_interval=0.02)

    supervisor = Supervisor([factory], restart_backoff=0.01, on_event=[events.append])
    async with asyncio.timeout(10):
        await supervisor.run(burst=True)

    crashes = [e for e in events if isinstance(e, WorkerCrashed)]
    assert [(c.error, c.restart_in) for c in crashes] == [("RuntimeError: worker died", 0.01)]
    assert builds == 2
    done = await queue.get(task_id)
    assert done is not None
    assert done.ctx.status is Status.DONE


async def test_supervisor_stop_is_graceful_and_stop_now_releases() -> None:
    queue = memory_queue()
    await queue.push_bulk(range(2))
    entered = asyncio.Event()

    async def hangs(args: Any, task: Task[bytes]) -> Any:
        entered.set()
        await asyncio.sleep(60)

    def factory() -> Worker:
        return Worker(
            name="w",
            backend=queue,
            handler=hangs,
            concurrency=2,
            keep_alive=0.1,
            poll_interval=0.02,
            shutdown_timeout=60,
        )

    supervisor = Supervisor([factory])
    runner = asyncio.ensure_future(supervisor.run())
    async with asyncio.timeout(10):
        await entered.wait()
        supervisor.stop()
        await asyncio.sleep(0.05)
        assert not runner.done()
        assert supervisor.stopping
        supervisor.stop_now()
        await runner
    assert [t.ctx.status for t in await queue.list_tasks()] == [Status.PENDING, Status.PENDING]


async def test_a_failing_farewell_does_not_swallow_the_cancellation_of_the_heartbeat() -> None:
    async def beat() -> None:
        pass

    async def farewell() -> None:
        raise ConnectionError("store is down")

    stream = beat_every(WorkerContext(id="w", name="w", queue="q", keep_alive=10), beat, farewell)
    await anext(stream)

    async def next_beat() -> None:
        await anext(stream)

    beating = asyncio.create_task(next_beat())  # now asleep for keep_alive
    await asyncio.sleep(0.01)
    beating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await beating


async def test_a_heartbeat_whose_driver_swallows_the_cancellation_still_lets_the_worker_stop() -> None:
    class DeafBeats(MemoryQueue):
        """Beats through a driver that turns a cancellation into a normal reply, every time."""

        def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
            return self._beats(worker)

        async def _beats(self, worker: WorkerContext) -> AsyncIterator[None]:
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(worker.keep_alive)
                yield None

    store = MemoryStore()
    plain = store.backend("jobs", codec=JsonCodec())
    queue = DeafBeats(store, plain._state, "jobs", codec=JsonCodec(), max_attempts=1)
    await queue.push("one")
    worker, events = make_worker(queue, noop)
    async with asyncio.timeout(10):
        await worker.run(asyncio.Event(), burst=True)
    assert isinstance(events[-1], Stopped)


async def test_tasks_a_store_starts_at_once_never_take_the_worker_past_its_concurrency() -> None:
    # A store may start a task it claimed for the worker at once (WorkerContext.start: a task
    # handed over on push, as its message is read). Runs started so take the slots the idle poll
    # stream would claim for: woken by a push, it must wait for a slot, not claim one more task.
    queue = memory_queue()
    gate = asyncio.Event()
    running: set[str] = set()
    most = 0
    ended = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal most
        running.add(task.id)
        most = max(most, len(running))
        await gate.wait()
        running.discard(task.id)
        if args == "c":
            ended.set()

    idle = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, Idle):
            idle.set()

    worker = Worker(name="w", backend=queue, handler=handler, on_event=[on_event], concurrency=2, poll_interval=30.0)
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(10):
            await idle.wait()  # its stream waits for a wake-up (not a guessed sleep: a loaded
            ids = await queue.push_bulk(["a", "b", "c"])  # machine starts it late); wakes it
            handed = [row.task(queue.queue) for row in queue._claim(worker.context.id, 2)]
            assert [worker.context.start(task) for task in handed] == [True, True]
            assert worker.context.start(handed[0]) is False  # no slot left: the store keeps it
            await asyncio.sleep(0.1)
            assert (len(running), most) == (2, 2)
            gate.set()
            await ended.wait()  # "c", the task the stream waited to start, ran last
    finally:
        stop.set()
        await run
    assert most == 2
    assert {t.id for t in await queue.list_tasks(Status.DONE, limit=10)} == set(ids)


async def test_a_worker_that_stopped_polling_starts_nothing_a_store_hands_it() -> None:
    queue = memory_queue()
    worker, _ = make_worker(queue, noop)
    await queue.push("late")
    handed = [row.task(queue.queue) for row in queue._claim(worker.context.id, 1)]
    assert worker.context.start(handed[0]) is False  # never polled
    stop = asyncio.Event()
    stop.set()
    await worker.run(stop)
    assert worker.context.start(handed[0]) is False  # stopped
    assert worker.running == 0
