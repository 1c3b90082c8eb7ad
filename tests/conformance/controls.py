"""What the control-plane cases share: the protocols of a backend, workers with a sync (thread)
or command handler, and reading a task's status where the store can be inspected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apalis_cli.backend import Capability, Inspector
from apalis_cli.config import CommandHandler
from apalis_cli.control import BulkActor, Canceller, Pausable, Waiter
from apalis_cli.handlers import call_shape, command_handler, threaded
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker

from .conftest import FAST_BACKOFF, Backend, Harness, RunningWorker


def canceller(harness: Harness, backend: Backend) -> Canceller:
    """`backend` as a `Canceller` (the test required CANCEL)."""
    assert isinstance(backend, Canceller), f"{harness.kind} claims CANCEL but its backend has no cancel()"
    return backend


def pausable(harness: Harness, backend: Backend) -> Pausable:
    """`backend` as a `Pausable` (the test required PAUSE)."""
    assert isinstance(backend, Pausable), f"{harness.kind} claims PAUSE but its backend has no pause()"
    return backend


def waiter(harness: Harness, backend: Backend) -> Waiter:
    """`backend` as a `Waiter` (the test required WAIT)."""
    assert isinstance(backend, Waiter), f"{harness.kind} claims WAIT but its backend has no wait()"
    return backend


def bulk_actor(harness: Harness, backend: Backend) -> BulkActor:
    """`backend` as a `BulkActor` (the test required BULK)."""
    assert isinstance(backend, BulkActor), f"{harness.kind} claims BULK but its backend has no bulk()"
    return backend


async def task_of(harness: Harness, backend: Backend, task_id: str) -> Task[bytes] | None:
    """The task as the store has it, or None where the store cannot be inspected."""
    if not harness.store.capabilities.has(Capability.INSPECT):
        return None
    assert isinstance(backend, Inspector)
    return await backend.get(task_id)


async def status_of(harness: Harness, backend: Backend, task_id: str) -> Status | None:
    """The task's status, or None where the store cannot be inspected."""
    task = await task_of(harness, backend, task_id)
    return task.ctx.status if task is not None else None


async def assert_cancelled(harness: Harness, backend: Backend, task_id: str, reason: str) -> None:
    """Where the store can be inspected: the task ends cancelled, with `reason` as its error."""
    if not harness.store.capabilities.has(Capability.INSPECT):
        return
    assert isinstance(backend, Inspector)
    found: list[Task[bytes] | None] = [None]

    async def final() -> bool:
        found[0] = await backend.get(task_id)
        return found[0] is not None and found[0].ctx.status.is_final

    await until(harness, final, f"task {task_id} to be final")
    task = found[0]
    assert task is not None
    assert task.ctx.status is Status.CANCELLED, task.ctx
    assert task.ctx.last_error == reason


async def until(harness: Harness, check: Callable[[], Any], what: str, within: float = 10.0) -> None:
    """Wait until the coroutine function `check` answers true (workers checked meanwhile)."""
    import asyncio
    import time

    deadline = time.monotonic() + within
    while not await check():
        for running in harness.workers:
            running.check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def _add(harness: Harness, worker: Worker) -> RunningWorker:
    from .conftest import RunningWorker

    running = RunningWorker(worker, harness.events)
    harness.workers.append(running)
    return running


def thread_worker(harness: Harness, backend: Backend, fn: Callable[..., Any], *, name: str = "w-sync") -> RunningWorker:
    """A worker whose handler is the sync callable `fn`, run in a thread as the daemon does."""
    loaded = threaded(fn, call_shape(fn, name), 1, name)
    worker = Worker(
        name=name,
        backend=backend,
        handler=loaded.handler,
        keep_alive=0.2,
        poll_interval=0.05,
        shutdown_timeout=2.0,
        retention=3600.0,
        backoff=FAST_BACKOFF,
        stoppable=loaded.stoppable,
    )
    return _add(harness, worker)


def command_worker(
    harness: Harness, backend: Backend, command: list[str], *, grace: float = 5.0, name: str = "w-cmd"
) -> RunningWorker:
    """A worker whose handler is `command`, run once per task as the daemon does."""
    handler = command_handler(CommandHandler(command=tuple(command)), harness.queue, grace)
    worker = Worker(
        name=name,
        backend=backend,
        handler=handler,
        keep_alive=0.2,
        poll_interval=0.05,
        shutdown_timeout=2.0,
        retention=3600.0,
        backoff=FAST_BACKOFF,
    )
    return _add(harness, worker)


def pid_alive(pid_file: Path) -> bool:
    """True while the process whose pid `pid_file` holds still exists (and is no zombie)."""
    import os

    pid = int(pid_file.read_text().strip())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state != "Z"
