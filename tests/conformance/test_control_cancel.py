"""Cancel, on every store that offers it: a task cancelled before it starts never starts, one
cancelled while it runs is stopped where it runs, and either way it ends `cancelled`, with the
reason, and is never retried."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

from apalis_cli.backend import Capability, Inspector
from apalis_cli.control import CancelResult, CancelState
from apalis_cli.errors import Retry
from apalis_cli.task import Status, Task, TaskContext

from .conftest import Calls, Harness
from .controls import assert_cancelled, canceller, command_worker, pid_alive, status_of, thread_worker

REASON = "the customer withdrew the order"


async def test_cancel_of_a_pending_task_means_it_never_starts(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.CANCEL)
    backend = harness.backend(max_attempts=3)
    doomed = await backend.push({"n": "doomed"})
    kept = await backend.push({"n": "kept"})

    result = await canceller(harness, backend).cancel(doomed, REASON)

    assert result == CancelResult.cancelled()
    await assert_cancelled(harness, backend, doomed, REASON)
    # A second cancel is told the task has already ended, cancelled: nothing was cancelled twice.
    assert await canceller(harness, backend).cancel(doomed, REASON) == CancelResult.already_final(Status.CANCELLED)
    await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: kept in calls.ids(), what="the task that was not cancelled to run")
    await asyncio.sleep(0.3)  # a few more polls: the cancelled task still never comes
    assert calls.ids() == [kept]


async def test_cancel_of_a_scheduled_task_means_it_never_starts(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.CANCEL, Capability.SCHEDULE)
    backend = harness.backend()
    doomed = await backend.push({"n": 1}, delay=1.5)  # far enough ahead for a busy server

    result = await canceller(harness, backend).cancel(doomed, REASON)

    assert result.state is CancelState.CANCELLED
    await assert_cancelled(harness, backend, doomed, REASON)
    await harness.worker(backend, calls.handler()).start()
    await asyncio.sleep(2.0)  # past its run_at, with the worker polling all along
    assert calls.ids() == []


async def test_cancel_of_a_task_waiting_for_its_retry(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.CANCEL, Capability.MAX_ATTEMPTS)
    backend = harness.backend(max_attempts=5)
    task_id = await backend.push({"n": 1})

    async def fail_later(args: Any, task: Task[bytes]) -> None:
        raise Retry(delay=1.0)

    await harness.worker(backend, calls.handler(fail_later)).start()
    await harness.wait_until(lambda: len(harness.finished("retry")) == 1, what="the first run to fail")

    result = await canceller(harness, backend).cancel(task_id, REASON)

    assert result.state is CancelState.CANCELLED
    await assert_cancelled(harness, backend, task_id, REASON)
    await asyncio.sleep(1.5)  # past the retry's run_at
    assert len(calls.of(task_id)) == 1


async def test_cancel_stops_a_running_async_handler(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.CANCEL)
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"n": 1})
    stopped = asyncio.Event()

    async def long(args: Any, task: Task[bytes]) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    await harness.worker(backend, calls.handler(long)).start()
    await harness.wait_until(lambda: calls.of(task_id), what="the run to start")

    result = await canceller(harness, backend).cancel(task_id, REASON)

    assert result == CancelResult.requested()
    await harness.wait_until(stopped.is_set, what="the handler to get CancelledError")
    await harness.wait_until(lambda: harness.finished("cancel"), what="the run to end cancelled")
    assert harness.finished("cancel")[0].error == REASON
    await assert_cancelled(harness, backend, task_id, REASON)
    await asyncio.sleep(0.3)
    assert len(calls.of(task_id)) == 1, "a cancelled task is never retried"


async def test_cancel_sets_the_flag_a_sync_handler_polls(harness: Harness) -> None:
    harness.require(Capability.CANCEL)
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"n": 1})
    seen: list[str | None] = []
    started: list[float] = []

    def patient(args: Any, ctx: TaskContext) -> str:
        started.append(time.time())
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(ctx.cancel_reason)
        return "stopped early"

    await thread_worker(harness, backend, patient).start()
    await harness.wait_until(lambda: started, what="the thread to start")

    result = await canceller(harness, backend).cancel(task_id, REASON)

    assert result.state is CancelState.REQUESTED
    await harness.wait_until(lambda: seen, within=5, what="the handler to see ctx.cancelled")
    assert seen == [REASON]
    await harness.wait_until(lambda: harness.finished("cancel"), what="the run to end cancelled")
    await assert_cancelled(harness, backend, task_id, REASON)
    assert len(started) == 1


async def test_cancel_terminates_a_running_command(harness: Harness, tmp_path: Path) -> None:
    harness.require(Capability.CANCEL)
    backend = harness.backend(max_attempts=3)
    pid_file = tmp_path / "pid"
    task_id = await backend.push({"n": 1})
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    await command_worker(harness, backend, [sys.executable, "-c", script], grace=5.0).start()
    await harness.wait_until(lambda: pid_file.exists() and pid_file.read_text(), what="the command to start")

    begun = time.monotonic()
    result = await canceller(harness, backend).cancel(task_id, REASON)

    assert result.state is CancelState.REQUESTED
    await harness.wait_until(lambda: harness.finished("cancel"), what="the run to end cancelled")
    assert not pid_alive(pid_file), "the command's process still runs"
    assert time.monotonic() - begun < 5.0, "SIGTERM, not the SIGKILL after the grace period, ended it"
    await assert_cancelled(harness, backend, task_id, REASON)


async def test_cancel_of_a_final_task_changes_nothing(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.CANCEL)
    backend = harness.backend()
    task_id = await backend.push({"n": 1})
    await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: harness.finished("done"), what="the task to be done")

    cancel = canceller(harness, backend)
    answer = await cancel.cancel(task_id, REASON)
    if harness.store.capabilities.has(Capability.INSPECT):
        assert answer == CancelResult.already_final(Status.DONE)
    else:  # a broker forgets a message once it is done: then there is nothing to cancel either
        assert answer in (CancelResult.already_final(Status.DONE), CancelResult.not_found())
    assert await cancel.cancel("no-such-task", REASON) == CancelResult.not_found()
    assert await status_of(harness, backend, task_id) in (Status.DONE, None)


async def test_a_cancelled_task_can_be_retried(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.CANCEL, Capability.ADMIN, Capability.INSPECT)
    backend = harness.backend()
    task_id = await backend.push({"n": 1})
    await canceller(harness, backend).cancel(task_id, REASON)
    inspector = harness.inspector(backend)
    assert isinstance(inspector, Inspector)

    assert await inspector.retry(task_id)

    await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: harness.finished("done"), what="the retried task to run")
    assert calls.ids() == [task_id]


async def test_cancel_racing_claims_never_lets_a_cancelled_task_start(harness: Harness, calls: Calls) -> None:
    """Many push / cancel cycles while two workers claim: a task whose cancel answered
    `cancelled` never starts, and one that had started is stopped and ends cancelled."""
    harness.require(Capability.CANCEL)
    backend = harness.backend(max_attempts=3)
    cancel = canceller(harness, backend)

    async def brief(args: Any, task: Task[bytes]) -> None:
        await asyncio.sleep(0.02)

    for name in ("a", "b"):
        await harness.worker(
            harness.backend(max_attempts=3), calls.handler(brief, worker=name), name=name, concurrency=4
        ).start()
    rng = random.Random(12)
    results: dict[str, CancelResult] = {}
    pushed = 0
    while pushed < 300:
        # Pushed a few at a time, up to more than the workers' eight slots: a store whose
        # workers claim the moment a task lands (woken by the push itself) still has tasks
        # waiting when some of the cancels come, as a busy queue has.
        batch = await backend.push_bulk([{"n": 1}] * rng.randint(1, 12))
        pushed += len(batch)
        for task_id in rng.sample(batch, len(batch)):
            pause = rng.choice((0.0, 0.0, 0.001, 0.003))
            if pause:
                await asyncio.sleep(pause)
            results[task_id] = await cancel.cancel(task_id, REASON)

    never = [task_id for task_id, result in results.items() if result.state is CancelState.CANCELLED]
    requested = [task_id for task_id, result in results.items() if result.state is CancelState.REQUESTED]
    assert never, "no cancel found its task waiting: the race was never run"

    def ended() -> dict[str, str]:
        return {e.task_id: e.outcome for e in harness.finished() if e.outcome in ("cancel", "done")}

    await harness.wait_until(lambda: set(requested) <= ended().keys(), within=20, what="the requested runs to end")
    await asyncio.sleep(0.3)
    for task_id in requested:
        assert await status_of(harness, backend, task_id) in (Status.CANCELLED, Status.DONE, None)
    started = [task_id for task_id in never if calls.of(task_id)]
    assert started == [], f"{len(started)} of {len(never)} cancelled tasks started"
    assert all(len(calls.of(task_id)) <= 1 for task_id in requested), "a cancelled run was retried"


async def test_a_cancel_stops_its_run_within_a_few_heartbeats(harness: Harness, calls: Calls) -> None:
    """However the store tells the worker (its push path, or the answer to a heartbeat, here
    every 0.2 s), the run is stopped within a few heartbeats of the cancel."""
    harness.require(Capability.CANCEL)
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"n": 1})

    async def long(args: Any, task: Task[bytes]) -> None:
        await asyncio.sleep(60)

    worker = harness.worker(backend, calls.handler(long), keep_alive=0.2)
    await worker.start()
    await harness.wait_until(lambda: calls.of(task_id), what="the run to start")
    begun = time.monotonic()
    await canceller(harness, backend).cancel(task_id, REASON)
    await harness.wait_until(lambda: harness.finished("cancel"), within=5, what="the run to end cancelled")
    assert time.monotonic() - begun < 2.0
