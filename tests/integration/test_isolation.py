"""Handlers in child processes (`isolation = "process"`), with real children on real stores.

A handler that sleeps for an hour, leaks, segfaults, exits or is SIGKILLed costs its own task
and nothing else: its slot gets a fresh child, the worker goes on, and a stopping worker leaves
no child running a task it handed back to the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.backend import Store
from apalis_cli.codec import JsonCodec
from apalis_cli.events import Event, TaskFinished
from apalis_cli.isolation import ChildKilled, PoolSettings, ProcessPool
from apalis_cli.layers import TimeoutLayer
from apalis_cli.service import Layer
from apalis_cli.task import Status, Task, TaskContext
from apalis_cli.worker import Worker

from ..isolation_children import FAST, HANDLERS, gone
from .running import run_until

MIB = 1024 * 1024


STORE_KINDS = ("sqlite", "postgres")
"""The store kinds the tests taking `store` run on (tests/integration/conftest.py)."""


class Run:
    """A worker whose handler runs in child processes, on a fresh queue of `store`."""

    def __init__(self, store: Store, tmp_path: Path, *, concurrency: int = 1, **pool: Any) -> None:
        (tmp_path / "iso_handlers.py").write_text(HANDLERS)
        self.tmp_path = tmp_path
        self.pool = ProcessPool(PoolSettings(handler="iso_handlers:work", base_dir=tmp_path, size=concurrency, **pool))
        self.queue: Any = store.backend(f"iso-{os.urandom(4).hex()}", codec=JsonCodec(), max_attempts=3)
        self.concurrency = concurrency
        self.finished: dict[str, TaskFinished] = {}
        self.pidfiles: dict[str, Path] = {}

    def worker(self, *, layers: list[Layer] | None = None, shutdown_timeout: float = 5.0) -> Worker:
        return Worker(
            name="iso",
            backend=self.queue,
            handler=self.pool.run,
            concurrency=self.concurrency,
            layers=layers or [],
            poll_interval=0.05,
            keep_alive=1.0,
            shutdown_timeout=shutdown_timeout,
            backoff=FAST,
            on_event=[self._on_event],
        )

    def _on_event(self, event: Event) -> None:
        if isinstance(event, TaskFinished):
            self.finished[event.task_id] = event

    async def push(self, do: str, *, max_attempts: int | None = None, **args: Any) -> str:
        pidfile = self.tmp_path / f"{do}-{os.urandom(3).hex()}.pid"
        task_id: str = await self.queue.push({"do": do, "pidfile": str(pidfile), **args}, max_attempts=max_attempts)
        self.pidfiles[task_id] = pidfile
        return task_id

    def pid(self, task_id: str) -> int:
        return int(self.pidfiles[task_id].read_text())

    async def result(self, task_id: str) -> Any:
        task = await self.queue.get(task_id)
        assert task is not None
        return json.loads(task.ctx.result)  # stored as JSON text


async def test_a_timeout_kills_a_stuck_child_and_frees_its_slot(store: Store, tmp_path: Path) -> None:
    run = Run(store, tmp_path, kill_grace=0.5)
    await run.pool.start()
    try:
        stuck = await run.push("sleep")
        stubborn = await run.push("stubborn")  # ignores SIGTERM: SIGKILL after the grace period
        after = await run.push("slow", seconds=0)
        started = time.monotonic()
        # 3 s, not less: the timeout counts the fresh child's start (a Python's imports, over a
        # second on a loaded machine), and each handler must have written its pidfile by then.
        await run_until(run.worker(layers=[TimeoutLayer(3.0)]), lambda: after in run.finished, within=30)
        # Two hour-long handlers and a quick one through ONE slot: the slot came back each time.
        assert time.monotonic() - started < 25
        for task_id in (stuck, stubborn):
            event = run.finished[task_id]
            assert (event.outcome, event.error) == ("retry", "TaskTimeout: timed out after 3s")
            assert gone(run.pid(task_id))
            task = await run.queue.get(task_id)
            assert task.ctx.status is Status.FAILED
            assert task.ctx.attempts == 1
        assert run.finished[after].outcome == "done"
        assert run.pool.recycled["timeout_or_stop"] == 2
    finally:
        await run.pool.close()


async def test_memory_and_task_limits_recycle_a_child_between_tasks(store: Store, tmp_path: Path) -> None:
    run = Run(store, tmp_path, max_memory_per_child=100 * MIB)
    await run.pool.start()
    try:
        leak = await run.push("leak", bytes=150 * MIB)
        after = await run.push("slow", seconds=0)
        await run_until(run.worker(), lambda: after in run.finished, within=30)
        leaked, fresh = await run.result(leak), await run.result(after)
        assert run.finished[leak].outcome == "done"  # recycling costs no task
        assert leaked["rss_after"] > 100 * MIB
        assert fresh["pid"] != leaked["pid"]
        assert fresh["rss_before"] < 60 * MIB  # the replacement started clean
        assert run.pool.recycled == {"max_memory": 1}
    finally:
        await run.pool.close()

    counted = Run(store, tmp_path, max_tasks_per_child=2)
    await counted.pool.start()
    try:
        ids = [await counted.push("slow", seconds=0) for _ in range(5)]
        await run_until(counted.worker(), lambda: all(i in counted.finished for i in ids), within=30)
        pids = [(await counted.result(i))["pid"] for i in ids]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
        assert counted.pool.recycled["max_tasks"] >= 2
    finally:
        await counted.pool.close()


async def test_a_dying_child_fails_only_its_own_task(store: Store, tmp_path: Path) -> None:
    run = Run(store, tmp_path, concurrency=2)
    await run.pool.start()
    try:
        # Runs beside every crash below, in the other child: long enough for the crashes' fresh
        # children to start on a loaded machine (1.5 s was not, beside a parallel test run).
        slow = await run.push("slow", seconds=8)
        deaths = {
            await run.push("segfault", max_attempts=1): "was killed by SIGSEGV (signal 11)",
            await run.push("exit", max_attempts=1): "exited with code 3",
            await run.push("oom", max_attempts=1): "was killed by SIGKILL (signal 9)",
            await run.push("sys.exit", max_attempts=1): "SystemExit: 4",
        }
        after = await run.push("slow", seconds=0)
        await run_until(run.worker(), lambda: {slow, after, *deaths} <= set(run.finished), within=30)
        for task_id, error in deaths.items():
            task = await run.queue.get(task_id)
            assert task.ctx.status is Status.KILLED
            assert error in (task.ctx.last_error or "")
        assert run.finished[slow].outcome == "done"
        # Only the children that died: the one whose handler called sys.exit lives on and may
        # take the slow task after its own (seen under load).
        died = {run.pid(task_id) for task_id, error in deaths.items() if not error.startswith("SystemExit")}
        assert (await run.result(slow))["pid"] not in died
        assert run.finished[after].outcome == "done"
        assert run.pool.recycled["died"] == 3  # sys.exit fails its task, the child lives on
    finally:
        await run.pool.close()


async def test_a_worker_stopping_past_its_timeout_kills_the_child_before_releasing(
    store: Store, tmp_path: Path
) -> None:
    run = Run(store, tmp_path)
    await run.pool.start()
    try:
        stuck = await run.push("sleep")
        pidfile = run.pidfiles[stuck]
        await run_until(run.worker(shutdown_timeout=0.3), pidfile.exists, within=30)
        # The worker returned: the task went back to the queue, and no child runs it any more.
        assert gone(run.pid(stuck))
        task = await run.queue.get(stuck)
        assert task.ctx.status is Status.PENDING
        assert run.finished[stuck].outcome == "release"
    finally:
        await run.pool.close()
    assert run.pool.stats().children == ()


async def test_kill_task_stops_the_child_running_that_task(tmp_path: Path) -> None:
    (tmp_path / "iso_handlers.py").write_text(HANDLERS)
    pool = ProcessPool(PoolSettings(handler="iso_handlers:work", base_dir=tmp_path, size=1, kill_grace=0.5))
    await pool.start()
    try:
        task = Task(id="t1", args=b"", ctx=TaskContext(queue="q", attempts=1))
        pidfile = tmp_path / "t1.pid"
        running = asyncio.ensure_future(pool.run({"do": "sleep", "pidfile": str(pidfile)}, task))
        while not pidfile.exists():  # noqa: ASYNC110 - the child writes it, no event to wait on
            await asyncio.sleep(0.01)
        assert await pool.kill_task("t1", "cancelled by a person") is True
        with pytest.raises(ChildKilled, match="cancelled by a person"):
            await running
        assert gone(int(pidfile.read_text()))
        assert await pool.kill_task("t1") is False
        done = await pool.run({"do": "slow", "seconds": 0, "pidfile": str(tmp_path / "t2.pid")}, task)
        assert done["pid"] != int(pidfile.read_text())  # a fresh child took the slot
    finally:
        await pool.close()


async def test_what_a_killed_handler_started_is_killed_with_it(tmp_path: Path) -> None:
    (tmp_path / "iso_handlers.py").write_text(HANDLERS)
    pool = ProcessPool(PoolSettings(handler="iso_handlers:work", base_dir=tmp_path, size=1, kill_grace=0.5))
    await pool.start()
    try:
        task = Task(id="t1", args=b"", ctx=TaskContext(queue="q", attempts=1))
        program = tmp_path / "spawn.pid.program"
        running = asyncio.ensure_future(pool.run({"do": "spawn", "pidfile": str(tmp_path / "spawn.pid")}, task))
        while not program.exists() or not program.read_text():  # noqa: ASYNC110 - written by the child
            await asyncio.sleep(0.01)
        running.cancel()  # as a timeout or a stop does
        with pytest.raises(asyncio.CancelledError):
            await running
        assert gone(int((tmp_path / "spawn.pid").read_text()))
        # The program the handler started was in its child's process group: killed too.
        pid = int(program.read_text())
        deadline = time.monotonic() + 10
        while not gone(pid) and not _zombie(pid):
            assert time.monotonic() < deadline, "the handler's program outlived its child"
            await asyncio.sleep(0.02)
    finally:
        await pool.close()


def _zombie(pid: int) -> bool:
    """Killed, waiting for its (re)parent to reap it."""
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
