"""Failing runs on every store: persisted retries with backoff, exhaustion, Abort, timeouts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.errors import Abort
from apalis_cli.layers.retry import Backoff
from apalis_cli.layers.timeout import TimeoutLayer
from apalis_cli.task import Status, Task

from .conftest import Calls, Harness


class Boom(Exception):
    """What the failing handlers of this module raise."""


def fail_first(times: int) -> Any:
    """A behaviour that raises `Boom` on its first `times` calls, then returns "ok"."""
    seen = 0

    async def behaviour(args: Any, task: Task[bytes]) -> Any:
        nonlocal seen
        seen += 1
        if seen <= times:
            raise Boom(f"boom #{seen}")
        return "ok"

    return behaviour


async def test_failed_run_runs_again_after_the_backoff(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.SCHEDULE)
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"job": "flaky"})
    delay = 0.4
    worker = harness.worker(
        backend, calls.handler(fail_first(1)), backoff=Backoff(kind="constant", base=delay, jitter=False)
    )
    await worker.start()
    await harness.wait_until(lambda: worker.finished("done"), what="the retried task to succeed")
    await worker.stop()

    runs = calls.of(task_id)
    assert len(runs) == 2
    assert runs[1].at - runs[0].at >= delay - 0.02, "the retry ran before its backoff elapsed"
    assert runs[1].at - runs[0].at < delay + 5.0
    assert [e.outcome for e in worker.finished()] == ["retry", "done"]
    retry = worker.finished("retry")[0]
    assert retry.error is not None
    assert "Boom: boom #1" in retry.error


async def test_retry_is_persisted_as_failed_with_its_run_at_and_error(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.SCHEDULE, Capability.MAX_ATTEMPTS)
    backend = harness.backend(max_attempts=3)
    inspector = harness.inspector(backend)
    task_id = await backend.push({"job": "flaky"})
    worker = harness.worker(
        backend, calls.handler(fail_first(1)), backoff=Backoff(kind="constant", base=0.6, jitter=False)
    )
    await worker.start()
    await harness.wait_until(lambda: worker.finished("retry"), what="the first run to fail")

    stored = await inspector.get(task_id)
    assert stored is not None
    assert stored.ctx.status is Status.FAILED
    assert stored.ctx.attempts == 1
    assert stored.ctx.run_at > time.time(), "the retry's run_at is in the future"
    assert stored.ctx.run_at < time.time() + 5.0
    assert stored.ctx.last_error is not None
    assert "boom #1" in stored.ctx.last_error
    assert stored.ctx.lock_by is None

    await harness.wait_until(lambda: worker.finished("done"), what="the retry to run")
    await worker.stop()
    stored = await inspector.get(task_id)
    assert stored is not None
    assert stored.ctx.status is Status.DONE
    assert stored.ctx.attempts == 2


async def test_exhausted_attempts_kill_the_task(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.MAX_ATTEMPTS)
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"job": "hopeless"})
    worker = await harness.worker(backend, calls.handler(fail_first(99))).start()
    await harness.wait_until(lambda: worker.finished("kill"), what="the task to be killed")
    await asyncio.sleep(0.3)  # a fourth run (a loop) would show within the 50 ms backoff
    await worker.stop()

    assert [c.attempts for c in calls.of(task_id)] == [1, 2, 3]
    assert [e.outcome for e in worker.finished()] == ["retry", "retry", "kill"]
    killed = worker.finished("kill")[0]
    assert killed.error is not None
    assert "giving up" in killed.error

    if harness.store.capabilities.has(Capability.INSPECT):
        stored = await harness.inspector(backend).get(task_id)
        assert stored is not None
        assert stored.ctx.status is Status.KILLED
        assert stored.ctx.attempts == 3
        assert stored.ctx.last_error is not None
        assert "boom #3" in stored.ctx.last_error


async def test_abort_kills_at_once(harness: Harness, calls: Calls) -> None:
    backend = harness.backend(max_attempts=5)

    async def refuse(args: Any, task: Task[bytes]) -> Any:
        raise Abort("the account is closed")

    task_id = await backend.push({"account": 42})
    worker = await harness.worker(backend, calls.handler(refuse)).start()
    await harness.wait_until(lambda: worker.finished(), what="the aborted run to end")
    await asyncio.sleep(0.3)  # a retry would show within the 50 ms backoff
    await worker.stop()

    assert len(calls.of(task_id)) == 1
    assert [(e.outcome, e.error) for e in worker.finished()] == [("kill", "aborted: the account is closed")]
    if harness.store.capabilities.has(Capability.INSPECT):
        stored = await harness.inspector(backend).get(task_id)
        assert stored is not None
        assert stored.ctx.status is Status.KILLED
        assert stored.ctx.last_error == "aborted: the account is closed"


async def test_timeout_counts_as_a_failed_run(harness: Harness, calls: Calls) -> None:
    backend = harness.backend(max_attempts=3)
    first = True

    async def slow_once(args: Any, task: Task[bytes]) -> Any:
        nonlocal first
        if first:
            first = False
            await asyncio.sleep(30)
        return "quick"

    task_id = await backend.push({"job": "slow"})
    worker = harness.worker(backend, calls.handler(slow_once), layers=[TimeoutLayer(0.2)])
    await worker.start()
    await harness.wait_until(lambda: worker.finished("done"), what="the second run to finish")
    await worker.stop()

    assert len(calls.of(task_id)) == 2
    assert [e.outcome for e in worker.finished()] == ["retry", "done"]
    retry = worker.finished("retry")[0]
    assert retry.error == "TaskTimeout: timed out after 200ms"
    assert retry.duration < 5.0


async def test_timeout_on_the_last_attempt_kills(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.MAX_ATTEMPTS)
    backend = harness.backend(max_attempts=1)

    async def hang(args: Any, task: Task[bytes]) -> Any:
        await asyncio.sleep(30)

    task_id = await backend.push({"job": "hangs"})
    worker = await harness.worker(backend, calls.handler(hang), layers=[TimeoutLayer(0.1)]).start()
    await harness.wait_until(lambda: worker.finished(), what="the run to time out")
    await worker.stop()

    assert len(calls.of(task_id)) == 1
    [killed] = worker.finished()
    assert killed.outcome == "kill"
    assert killed.error is not None
    assert killed.error.startswith("TaskTimeout: timed out after 100ms")


async def test_a_pending_retry_survives_a_worker_restart(harness: Harness, calls: Calls) -> None:
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"job": "flaky"})
    first = harness.worker(
        backend, calls.handler(fail_first(1)), backoff=Backoff(kind="constant", base=0.3, jitter=False)
    )
    await first.start()
    await harness.wait_until(lambda: first.finished("retry"), what="the first run to fail")
    await first.stop()

    second = await harness.worker(harness.backend(max_attempts=3), calls.handler(fail_first(0))).start()
    await harness.wait_until(lambda: second.finished("done"), what="the retry to run in the new worker")
    await second.stop()

    assert [e.task_id for e in second.finished()] == [task_id]
    if harness.store.capabilities.has(Capability.MAX_ATTEMPTS):
        assert [c.attempts for c in calls.of(task_id)] == [1, 2]
