"""`--control`: how fast the control plane answers, per backend (issue 12's figures).

For each backend, as far as its capabilities go (a missing one is reported with its reason):

- wait: `lat_n` tasks pushed one at a time to a running worker, each awaited with `wait()`; the
  figure is the time from the handler's start (a no-op: its start is its return) to the waiter
  waking with the task done, p50/p99. The worker runs in its own process (memory: this one), so
  the waiter is woken through the store's push path, as `apalis push --wait` is;
- cancel: `cancel_n` tasks whose handler sleeps a minute, each cancelled once it runs; the figure
  is the time from the call of `cancel()` until the store has it `cancelled` (the worker told,
  the run stopped, its acknowledgement written), as `wait()` or, without WAIT, `get()` sees it;
- bulk: `tasks` tasks pushed for later, killed in one bulk request, then retried in another
  (`BulkFilter(statuses={killed})`); the figure is tasks retried per second.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.backend import Capability, Inspector, Store
from apalis_cli.control import BulkAction, BulkFilter, Waiter
from apalis_cli.task import Status
from rich.console import Console
from rich.table import Table

from .measure import InProcessWorker, ProcessWorker, Settings, WorkerHandle, pct
from .stores import CODEC, Target
from .workerproc import holding, make_worker

__all__ = ["measure_control", "print_control"]

CANCEL_N = 50


def _worker(store: Store, target: Target, queue: str, s: Settings) -> WorkerHandle:
    if s.in_process:
        handle = InProcessWorker(store, queue, 1)
        # The same worker, with the handler that holds a run until it is cancelled.
        backend = store.backend(queue, codec=CODEC, max_attempts=3)
        handle.worker = make_worker(backend, handle.recorder, 1, [lambda event: None], holding(handle.recorder))
        return handle
    return ProcessWorker(target, queue, 1, handler="hold", settings={"keep_alive": 1.0})


async def measure_control(store: Store, target: Target, s: Settings, log: Any) -> dict[str, Any]:
    """The wait, cancel and bulk figures of one opened store."""
    capabilities = store.capabilities
    result: dict[str, Any] = {"kind": target.kind}
    missing = {c.value: capabilities.why_not(c) for c in (Capability.WAIT, Capability.CANCEL, Capability.BULK)}
    result["lacking"] = {name: why for name, why in missing.items() if why is not None}
    if capabilities.has(Capability.WAIT):
        log(f"{target.kind}: wait, {s.lat_n} tasks one at a time")
        result["wait"] = await _wait(store, target, s)
    if capabilities.has(Capability.CANCEL):
        log(f"{target.kind}: cancel, {CANCEL_N} running tasks")
        result["cancel"] = await _cancel(store, target, s)
    if capabilities.has(Capability.BULK):
        log(f"{target.kind}: bulk kill and retry of {s.tasks} tasks")
        result["bulk"] = await _bulk(store, target, s)
    return result


async def _wait(store: Store, target: Target, s: Settings) -> dict[str, Any]:
    queue_name = target.queue("wait")
    queue: Any = store.backend(queue_name, codec=CODEC, max_attempts=1)  # a TaskSink and a Waiter
    worker = _worker(store, target, queue_name, s)
    await worker.start()
    woke: dict[float, float] = {}
    try:
        for i in range(s.lat_n + 10):  # the first 10 warm up
            enq = time.time()
            task_id = await queue.push({"enq_ts": enq})
            task = await queue.wait(task_id, timeout=10)
            if task is None or task.ctx.status is not Status.DONE:
                return {"error": f"task {i} not done within 10 s"}
            if i >= 10:
                woke[enq] = time.time()
        starts = {enq: enq + seconds for enq, seconds in await worker.latencies()}
    finally:
        await worker.stop()
    waits = [(woke[enq] - starts[enq]) * 1000 for enq in woke if enq in starts]
    return {"n": len(waits), "p50_ms": round(pct(waits, 50), 3), "p99_ms": round(pct(waits, 99), 3)}


async def _cancel(store: Store, target: Target, s: Settings) -> dict[str, Any]:
    queue_name = target.queue("cancel")
    queue: Any = store.backend(queue_name, codec=CODEC, max_attempts=3)  # a TaskSink and a Canceller
    worker = _worker(store, target, queue_name, s)
    await worker.start()
    took: list[float] = []
    try:
        for i in range(CANCEL_N):
            task_id = await queue.push({"hold": 60, "enq_ts": time.time()})
            if (await worker.wait(i + 1, 10))["count"] < i + 1:
                return {"error": f"task {i} did not start within 10 s"}
            begun = time.perf_counter()
            await queue.cancel(task_id, "bench")
            if not await _cancelled(queue, task_id):
                return {"error": f"task {i} not cancelled within 10 s"}
            took.append((time.perf_counter() - begun) * 1000)
    finally:
        await worker.stop()
    return {"n": len(took), "p50_ms": round(pct(took, 50), 3), "p99_ms": round(pct(took, 99), 3)}


async def _cancelled(queue: Any, task_id: str) -> bool:
    if isinstance(queue, Waiter):
        task = await queue.wait(task_id, timeout=10)
        return task is not None and task.ctx.status is Status.CANCELLED
    assert isinstance(queue, Inspector)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = await queue.get(task_id)
        if got is not None and got.ctx.status is Status.CANCELLED:
            return True
        await asyncio.sleep(0.001)
    return False


async def _bulk(store: Store, target: Target, s: Settings) -> dict[str, Any]:
    queue: Any = store.backend(target.queue("bulk"), codec=CODEC, max_attempts=1)  # a TaskSink and a BulkActor
    later = time.time() + 3600
    for start in range(0, s.tasks, s.bulk_chunk):
        await queue.push_bulk([{"n": 0}] * min(s.bulk_chunk, s.tasks - start), run_at=later)
    begun = time.perf_counter()
    killed = await queue.bulk(BulkAction.KILL, BulkFilter())
    kill_s = time.perf_counter() - begun
    begun = time.perf_counter()
    retried = await queue.bulk(BulkAction.RETRY, BulkFilter(statuses=frozenset({Status.KILLED})))
    retry_s = time.perf_counter() - begun
    await queue.bulk(BulkAction.CANCEL, BulkFilter())  # nothing of it runs later
    return {
        "n": s.tasks,
        "killed": killed,
        "kill_rate": round(killed / kill_s, 1),
        "retried": retried,
        "retry_secs": round(retry_s, 3),
        "retry_rate": round(retried / retry_s, 1),
    }


def print_control(results: list[dict[str, Any]]) -> None:
    """One table: each backend's wait and cancel latencies and bulk rates."""
    table = Table(title="control plane: wait (handler start -> waiter woken), cancel (call -> stored cancelled), bulk")
    for column in ("backend", "wait p50 ms", "wait p99 ms", "cancel p50 ms", "cancel p99 ms", "kill/s", "retry/s"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for result in results:
        if "error" in result:
            table.add_row(result["kind"], result["error"])
            continue
        wait, cancel, bulk = result.get("wait", {}), result.get("cancel", {}), result.get("bulk", {})
        table.add_row(
            result["kind"],
            *(_show(part, key) for part, key in ((wait, "p50_ms"), (wait, "p99_ms"))),
            *(_show(part, key) for part, key in ((cancel, "p50_ms"), (cancel, "p99_ms"))),
            _show(bulk, "kill_rate", 0),
            _show(bulk, "retry_rate", 0),
        )
    console = Console()
    console.print(table)
    for result in results:
        for name, why in result.get("lacking", {}).items():
            console.print(f"{result['kind']}: no {name}: {why}")
        for part in ("wait", "cancel", "bulk"):
            if "error" in result.get(part, {}):
                console.print(f"{result['kind']}: {part}: {result[part]['error']}")


def _show(part: dict[str, Any], key: str, digits: int = 2) -> str:
    value = part.get(key)
    return "-" if value is None else f"{value:,.{digits}f}"
