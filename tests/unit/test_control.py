"""The control plane's core, over the memory store: the worker's side of a cancel, the filter of
bulk actions, and waiting from the Python API (`Sink.push(wait=True)`, `Sink.wait`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.api import Sink, WaitTimeout, open_sink_sync, result_of
from apalis_cli.backend import Capabilities, Capability, StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.control import BulkAction, BulkFilter, CancelState
from apalis_cli.errors import Unsupported
from apalis_cli.events import CancelRequested, Event, QueuePaused, TaskFinished
from apalis_cli.memory import MemoryQueue, MemoryStore
from apalis_cli.task import Status, Task, TaskContext
from apalis_cli.worker import Worker


@pytest.fixture
def queue() -> MemoryQueue:
    store = MemoryStore.from_spec(StoreSpec(name="m", kind="memory", url="memory://"))
    return store.backend("q", codec=JsonCodec(), max_attempts=3)


class Running:
    """A worker on `queue` in the background, with its events."""

    def __init__(self, queue: MemoryQueue, handler: Any, **options: Any) -> None:
        self.events: list[Event] = []
        self.worker = Worker(
            name="w",
            backend=queue,
            handler=handler,
            keep_alive=0.05,
            poll_interval=0.02,
            on_event=[self.events.append],
            **options,
        )
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def finished(self, outcome: str) -> list[TaskFinished]:
        return [e for e in self.events if isinstance(e, TaskFinished) and e.outcome == outcome]


@pytest.fixture
async def running(queue: MemoryQueue) -> AsyncIterator[list[Running]]:
    made: list[Running] = []
    yield made
    for run in made:
        run.stop.set()
        if run.task is not None:
            await run.task


async def start(made: list[Running], queue: MemoryQueue, handler: Any, **options: Any) -> Running:
    run = Running(queue, handler, **options)
    run.task = asyncio.create_task(run.worker.run(run.stop))
    made.append(run)
    return run


async def until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_handler_that_swallows_the_cancellation_still_ends_cancelled(
    queue: MemoryQueue, running: list[Running]
) -> None:
    calls: list[str] = []

    async def stubborn(args: Any, task: Task[bytes]) -> str:
        calls.append(task.id)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        return "finished anyway"

    run = await start(running, queue, stubborn)
    task_id = await queue.push({})
    await until(lambda: calls)

    assert (await queue.cancel(task_id, "enough")).state is CancelState.REQUESTED

    task = await queue.wait(task_id, timeout=5)
    assert task is not None
    assert (task.ctx.status, task.ctx.last_error) == (Status.CANCELLED, "enough")
    await until(lambda: run.finished("cancel"))
    assert [e.task_id for e in run.events if isinstance(e, CancelRequested)] == [task_id]
    assert run.worker.cancel_run(task_id, "again") is False, "a run that ended is not cancelled"


async def test_a_stop_during_a_cancel_releases_and_the_store_cancels(
    queue: MemoryQueue, running: list[Running]
) -> None:
    entered = asyncio.Event()

    async def slow_to_stop(args: Any, task: Task[bytes]) -> None:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # cleaning up while the worker is stopped too
            raise

    run = await start(running, queue, slow_to_stop)
    task_id = await queue.push({})
    await entered.wait()
    await queue.cancel(task_id, "no longer needed")
    run.worker.hurry()  # a second Ctrl-C at the same moment

    task = await queue.wait(task_id, timeout=5)
    assert task is not None
    assert (task.ctx.status, task.ctx.last_error) == (Status.CANCELLED, "no longer needed")


async def test_the_worker_hears_of_a_pause_with_its_heartbeat(queue: MemoryQueue, running: list[Running]) -> None:
    async def nothing(args: Any, task: Task[bytes]) -> None:
        return None

    run = await start(running, queue, nothing)
    await queue.pause()
    await until(lambda: run.worker.paused)
    await queue.resume()
    await until(lambda: not run.worker.paused)
    assert [e.paused for e in run.events if isinstance(e, QueuePaused)] == [True, False]


def test_a_bulk_filter_narrows_an_action_to_the_statuses_it_can_change() -> None:
    assert BulkFilter().statuses_for(BulkAction.RETRY) == {Status.KILLED, Status.CANCELLED}
    assert BulkFilter().statuses_for(BulkAction.PURGE) == {Status.DONE, Status.KILLED, Status.CANCELLED}
    wanted = frozenset({Status.FAILED, Status.DONE})
    assert BulkFilter(statuses=wanted).statuses_for(BulkAction.RETRY) == {Status.FAILED}
    assert BulkFilter(statuses=frozenset({Status.RUNNING})).statuses_for(BulkAction.PURGE) == set()
    killed = Task(
        id="t",
        args=b"",
        ctx=TaskContext(queue="q", status=Status.KILLED, last_error="Disk Full", created_at=10.0, done_at=100.0),
    )
    assert BulkFilter(error_contains="disk full").matches(killed, BulkAction.RETRY)
    assert not BulkFilter(error_contains="timeout").matches(killed, BulkAction.RETRY)
    assert BulkFilter(since=100.0, until=100.0).matches(killed, BulkAction.RETRY), "bounds are inclusive"
    assert not BulkFilter(since=100.5).matches(killed, BulkAction.RETRY), "compared with done_at"
    assert not BulkFilter().matches(killed, BulkAction.CANCEL)


async def test_push_with_wait_returns_the_ended_task(queue: MemoryQueue, running: list[Running]) -> None:
    async def double(args: Any, task: Task[bytes]) -> int:
        return int(args["n"]) * 2

    await start(running, queue, double)
    sink = Sink(queue, queue.capabilities, "m")

    task = await sink.push({"n": 21}, wait=True, timeout=5)

    assert task.ctx.status is Status.DONE
    assert result_of(task) == 42
    again = await sink.wait(task.id, timeout=0)
    assert again is not None
    assert result_of(again) == 42


async def test_push_with_wait_gives_up_at_its_timeout(queue: MemoryQueue) -> None:
    sink = Sink(queue, queue.capabilities, "m")

    with pytest.raises(WaitTimeout) as raised:
        await sink.push({"n": 1}, wait=True, timeout=0.05)

    task = await queue.get(raised.value.task_id)
    assert task is not None
    assert task.ctx.status is Status.PENDING, "the task goes on"
    assert await sink.wait(raised.value.task_id, timeout=0.01) is None


async def test_waiting_on_a_store_that_cannot_says_why(queue: MemoryQueue) -> None:
    sink = Sink(queue, Capabilities({Capability.WAIT: "this store cannot tell"}), "m")

    with pytest.raises(Unsupported, match="this store cannot tell"):
        await sink.push({"n": 1}, wait=True)
    with pytest.raises(Unsupported, match="this store cannot tell"):
        await sink.wait("t")
    assert await queue.stats() == await queue.stats()
    assert (await queue.stats()).counts[Status.PENDING] == 0, "nothing pushed when it cannot wait"


def test_the_blocking_twin_waits_too(tmp_path: Path) -> None:
    config = tmp_path / "jobs.toml"
    config.write_text(
        '[backends.mem]\nkind = "memory"\n\n'
        '[[workers]]\nname = "w"\nbackend = "mem"\nqueue = "q"\nhandler = "json:dumps"\n'
    )
    with open_sink_sync(config, worker="w") as sink:
        with pytest.raises(WaitTimeout) as raised:
            sink.push({"n": 1}, wait=True, timeout=0.05)  # no worker runs in this process
        assert sink.wait(raised.value.task_id, timeout=0.01) is None
        assert isinstance(sink.push({"n": 2}), str)


def test_stats_show_cancelled_counts_and_a_paused_queue(capsys: pytest.CaptureFixture[str]) -> None:
    from apalis_cli.cli.console import print_stats

    counts = {status.value: n for n, status in enumerate(Status)}
    print_stats([{"queue": "mail", **counts, "paused": True}, {"queue": "jobs", **counts, "paused": None}])

    def cells(word: str) -> list[str]:
        line = next(line for line in capsys_lines if word in line)
        return [cell.strip() for cell in line.replace("┃", "│").strip().split("│")[1:-1]]

    capsys_lines = capsys.readouterr().out.splitlines()
    assert cells("queue")[-2:] == ["cancelled", "state"]
    assert cells("mail")[-2:] == [str(counts["cancelled"]), "paused"]
    assert cells("jobs")[-2:] == [str(counts["cancelled"]), ""]


async def test_a_cancel_told_before_the_run_starts_means_it_never_runs(
    queue: MemoryQueue, running: list[Running]
) -> None:
    """A store may tell the worker of a task it holds but has not started (claimed ahead)."""
    calls: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        calls.append(task.id)

    task_id = await queue.push({})
    later = Running(queue, handler)
    assert later.worker.cancel_run(task_id, "too late to run") is False  # not running yet
    later.task = asyncio.create_task(later.worker.run(later.stop))
    running.append(later)
    # The store still has it pending (it was told of nothing): the worker claims it, and ends
    # it cancelled without running it.
    await until(lambda: later.finished("cancel"))
    assert calls == []
    assert later.finished("cancel")[0].error == "too late to run"


async def test_waiting_by_polling_returns_the_task_once_final(queue: MemoryQueue) -> None:
    from apalis_cli.control import wait_by_polling

    task_id = await queue.push({})
    assert await wait_by_polling(queue.get, task_id, 0.05) is None  # pending all along
    assert await wait_by_polling(queue.get, "no-such-task", 5) is None

    async def cancel_soon() -> None:
        await asyncio.sleep(0.1)
        await queue.cancel(task_id, "enough")

    later = asyncio.ensure_future(cancel_soon())
    begun = time.monotonic()
    task = await wait_by_polling(queue.get, task_id, 5)
    await later
    assert task is not None
    assert task.ctx.status is Status.CANCELLED
    assert time.monotonic() - begun < 0.1 + 0.2


async def test_the_live_view_asks_the_store_whether_a_queue_is_paused(queue: MemoryQueue) -> None:
    from apalis_cli.cli.daemon import _count_depths
    from apalis_cli.cli.live import Dashboard

    board = Dashboard([("w", "q")], lambda name: 0, lambda: False)
    await queue.pause()
    await _count_depths({"q": queue}, board, 5.0)
    assert board.queues["q"].paused
    await queue.resume()
    await _count_depths({"q": queue}, board, 5.0)
    assert not board.queues["q"].paused
