"""Whatever a handler does in its process fails its own task at worst, and no task goes back to
the queue (or runs again) while its handler still runs.

Handlers are loaded the way `apalis run` loads them (sync ones in threads) and run by a real
`Worker` over the memory store.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.codec import JsonCodec
from apalis_cli.config import Config, parse_config
from apalis_cli.events import Event, Stopped, TaskFinished, WaitingForRuns
from apalis_cli.handlers import LoadedHandler, load_handler
from apalis_cli.layers.retry import Backoff
from apalis_cli.layers.timeout import TimeoutLayer
from apalis_cli.memory import MemoryQueue, MemoryStore
from apalis_cli.service import Outcome, Service
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker

MODULE = """
import asyncio, sys, threading, time

RUNS = []  # (task id, "start" | "end", time.monotonic())
LOCK = threading.Lock()

async def _double(n):
    return n * 2

def _misbehave(args):
    do = args["do"]
    if do == "exit":
        sys.exit(3)
    if do == "interrupt":
        raise KeyboardInterrupt
    if do == "generator-exit":
        raise GeneratorExit
    if do == "generator":
        return (n for n in range(3))
    if do == "coroutine":
        return _double(args["n"])  # a sync wrapper around an async function
    return "ok"

def sync(args):
    return _misbehave(args)

async def async_(args):
    do = args["do"]
    if do == "cancelled":
        raise asyncio.CancelledError  # raised by the handler: no stop of this run
    if do == "awaits-cancelled":
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
    if do == "coroutine":
        return _double(args["n"])  # not awaited: the work never runs
    return _misbehave(args)

def slow(args, task):
    with LOCK:
        RUNS.append((task.id, "start", time.monotonic()))
    time.sleep(args["sleep"])
    with LOCK:
        RUNS.append((task.id, "end", time.monotonic()))
    return "slept"
"""

FAST = Backoff(kind="constant", base=0.01, jitter=False)


@pytest.fixture
def module(tmp_path: Path) -> Iterator[str]:
    name = f"escapes_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    yield name
    sys.modules.pop(name, None)


def load(tmp_path: Path, path: str, concurrency: int = 4) -> LoadedHandler:
    file = tmp_path / "jobs.toml"
    source = (
        f'[backends.m]\nkind = "memory"\n\n[[workers]]\nname = "w"\nconcurrency = {concurrency}\nhandler = "{path}"\n'
    )
    file.write_text(source)
    config: Config = parse_config(source, file)
    return load_handler(config, config.workers[0])


def worker_for(queue: MemoryQueue, loaded: LoadedHandler, **options: Any) -> tuple[Worker, list[Event]]:
    events: list[Event] = []
    settings: dict[str, Any] = {"keep_alive": 0.1, "poll_interval": 0.02, "backoff": FAST, "concurrency": 4}
    worker = Worker(
        name="w",
        backend=queue,
        handler=loaded.handler,
        stoppable=loaded.stoppable,
        on_event=[events.append],
        **(settings | options),
    )
    return worker, events


def finished(events: list[Event]) -> dict[str, TaskFinished]:
    return {e.task_id: e for e in events if isinstance(e, TaskFinished)}


@pytest.mark.parametrize(
    ("handler", "do", "error"),
    [
        ("sync", "exit", "SystemExit: 3"),
        ("async_", "exit", "SystemExit: 3"),
        ("sync", "interrupt", "KeyboardInterrupt"),
        ("async_", "interrupt", "KeyboardInterrupt"),
        ("sync", "generator-exit", "GeneratorExit"),
        ("async_", "generator-exit", "GeneratorExit"),
        ("async_", "cancelled", "CancelledError"),
        ("async_", "awaits-cancelled", "CancelledError"),
        ("sync", "generator", "result cannot be stored: the handler returned a generator"),
        ("async_", "coroutine", "result cannot be stored: the handler returned a coroutine"),
    ],
)
async def test_what_a_handler_raises_or_returns_fails_its_own_task(
    tmp_path: Path, module: str, handler: str, do: str, error: str
) -> None:
    loaded = load(tmp_path, f"{module}:{handler}")
    queue = MemoryStore().backend("jobs", codec=JsonCodec(), max_attempts=1)
    bad = await queue.push({"do": do, "n": 1})
    good = await queue.push_bulk([{"do": "nothing"} for _ in range(3)])
    worker, events = worker_for(queue, loaded)
    try:
        async with asyncio.timeout(10):
            await worker.run(asyncio.Event(), burst=True)  # returns: the daemon was not stopped
    finally:
        loaded.close()

    ended = finished(events)
    assert ended[bad].outcome == "kill"
    assert (ended[bad].error or "").startswith(error)
    for task_id in good:
        assert ended[task_id].outcome == "done"
    stored = await queue.get(bad)
    assert stored is not None
    assert stored.ctx.status is Status.KILLED
    assert (stored.ctx.last_error or "").startswith(error)


async def test_a_sync_handler_returning_a_coroutine_has_it_awaited(tmp_path: Path, module: str) -> None:
    loaded = load(tmp_path, f"{module}:sync")
    queue = MemoryStore().backend("jobs", codec=JsonCodec(), max_attempts=1)
    task_id = await queue.push({"do": "coroutine", "n": 21})
    worker, _ = worker_for(queue, loaded)
    try:
        async with asyncio.timeout(10):
            await worker.run(asyncio.Event(), burst=True)
    finally:
        loaded.close()
    stored = await queue.get(task_id)
    assert stored is not None
    assert (stored.ctx.status, stored.ctx.result) == (Status.DONE, "42")


def runs_of(module: str) -> list[tuple[str, str, float]]:
    runs: list[tuple[str, str, float]] = sys.modules[module].RUNS
    return runs


async def test_a_stop_waits_for_a_thread_past_shutdown_timeout_and_keeps_its_task(tmp_path: Path, module: str) -> None:
    loaded = load(tmp_path, f"{module}:slow")
    assert not loaded.stoppable
    queue = MemoryStore().backend("jobs", codec=JsonCodec(), max_attempts=3)
    task_id = await queue.push({"sleep": 0.8})
    worker, events = worker_for(queue, loaded, shutdown_timeout=0.1)
    stop = asyncio.Event()
    runner = asyncio.ensure_future(worker.run(stop))
    try:
        async with asyncio.timeout(10):
            while not runs_of(module):
                assert not runner.done()
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.sleep(0.3)  # past shutdown_timeout: the thread still runs
            worker.hurry()  # cannot stop a thread either
            await asyncio.sleep(0.1)
            stored = await queue.get(task_id)
            assert stored is not None
            assert stored.ctx.status is Status.RUNNING, "a task goes back only once its handler returned"
            assert not runner.done()
            await runner
    finally:
        loaded.close()

    assert [kind for _, kind, _ in runs_of(module)] == ["start", "end"]
    stored = await queue.get(task_id)
    assert stored is not None
    assert (stored.ctx.status, stored.ctx.attempts) == (Status.DONE, 1)
    assert any(isinstance(e, WaitingForRuns) and e.running == 1 for e in events)
    assert events[-1] == Stopped(worker="w", queue="jobs", released=0)


async def test_a_timed_out_thread_is_retried_only_once_it_returned(tmp_path: Path, module: str) -> None:
    loaded = load(tmp_path, f"{module}:slow")
    queue = MemoryStore().backend("jobs", codec=JsonCodec(), max_attempts=2)
    task_id = await queue.push({"sleep": 0.5})
    worker, events = worker_for(queue, loaded, layers=[TimeoutLayer(0.1)])
    stop = asyncio.Event()

    def stop_after_two_runs(event: Event) -> None:
        if len(finished_in_order(events)) == 2:
            stop.set()

    worker.subscribe(stop_after_two_runs)
    try:
        async with asyncio.timeout(15):
            await worker.run(stop)
    finally:
        loaded.close()

    runs = runs_of(module)
    assert [(tid, kind) for tid, kind, _ in runs] == [(task_id, k) for k in ("start", "end", "start", "end")]
    first_end, second_start = runs[1][2], runs[2][2]
    assert second_start >= first_end, "the retry started while the timed-out run's thread still ran"
    assert [e.outcome for e in finished_in_order(events)] == ["retry", "kill"]


def finished_in_order(events: list[Event]) -> list[TaskFinished]:
    return [e for e in events if isinstance(e, TaskFinished)]


def test_module_threads_do_not_leak() -> None:
    # The thread pools of this module's tests are closed; no handler thread outlives its test.
    deadline = time.monotonic() + 5
    while any(t.name.startswith("apalis-handler") for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.05)


async def test_a_layer_that_raises_fails_the_run_not_the_worker() -> None:
    def exiting(inner: Service) -> Service:
        async def service(task: Task[Any]) -> Outcome:
            if bytes(task.args) == b'"bad"':
                raise SystemExit(5)  # a layer's bug, or its use of sys.exit
            return await inner(task)

        return service

    async def handler(args: Any, task: Task[bytes]) -> Any:
        return args

    queue = MemoryStore().backend("jobs", codec=JsonCodec(), max_attempts=1)
    bad = await queue.push("bad")
    good = await queue.push("good")
    events: list[Event] = []
    worker = Worker(name="w", backend=queue, handler=handler, layers=[exiting], on_event=[events.append])
    async with asyncio.timeout(10):
        await worker.run(asyncio.Event(), burst=True)
    ended = finished(events)
    assert (ended[bad].outcome, ended[bad].error) == ("kill", "SystemExit: 5 (attempt 1 of 1, giving up)")
    assert ended[good].outcome == "done"
