"""Inspection and admin on every store that offers them: peeking changes nothing; retry/kill/purge."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.errors import Abort
from apalis_cli.layers.retry import Backoff
from apalis_cli.task import Status, Task

from .conftest import Calls, Harness


async def test_inspect_peeks_without_changing_anything(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT)
    backend = harness.backend(max_attempts=2)
    inspector = harness.inspector(backend)
    values = [{"n": n} for n in range(3)]
    ids = [await backend.push(value) for value in values]

    def snapshot(tasks: list[Task[bytes]]) -> list[tuple[Any, ...]]:
        return sorted((t.id, t.ctx.status, t.ctx.attempts, bytes(t.args), t.ctx.lock_by) for t in tasks)

    listed = await inspector.list_tasks()
    got = [await inspector.get(task_id) for task_id in ids]
    stats = await inspector.stats()
    for _ in range(2):  # asking again shows the same: nothing was claimed or consumed
        assert snapshot(await inspector.list_tasks()) == snapshot(listed)
        assert [await inspector.get(task_id) for task_id in ids] == got
        assert (await inspector.stats()).counts == stats.counts

    assert snapshot(listed) == sorted(
        (i, Status.PENDING, 0, backend.codec.encode(v), None) for i, v in zip(ids, values, strict=True)
    )
    assert all(t is not None and t.ctx.max_attempts == 2 for t in got)
    assert stats.counts[Status.PENDING] == 3
    assert {t.id for t in await inspector.list_tasks(Status.PENDING)} == set(ids)
    assert await inspector.list_tasks(Status.DONE) == []
    assert len(await inspector.list_tasks(limit=2)) == 2
    assert len(await inspector.list_tasks(limit=2, offset=2)) == 1
    assert await inspector.get("no-such-task") is None

    worker = await harness.worker(backend, calls.handler(), concurrency=3).start()
    await harness.wait_until(lambda: len(calls.finished) >= 3, what="the inspected tasks to run")
    await worker.stop()
    assert sorted(calls.ids()) == sorted(ids), "every inspected task was still there to run"
    assert (await inspector.stats()).counts[Status.DONE] == 3
    assert {t.id for t in await inspector.list_tasks(Status.DONE)} == set(ids)


async def test_admin_retry_reruns_a_killed_task(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.ADMIN)
    backend = harness.backend(max_attempts=3)
    inspector = harness.inspector(backend)
    aborted = False

    async def abort_once(args: Any, task: Task[bytes]) -> Any:
        nonlocal aborted
        if not aborted:
            aborted = True
            raise Abort("not yet")
        return "second time lucky"

    task_id = await backend.push({"job": 1})
    worker = await harness.worker(backend, calls.handler(abort_once)).start()
    await harness.wait_until(lambda: worker.finished("kill"), what="the task to be killed")
    killed = await inspector.get(task_id)
    assert killed is not None
    assert killed.ctx.status is Status.KILLED

    assert await inspector.retry(task_id) is True
    await harness.wait_until(lambda: worker.finished("done"), what="the retried task to run")
    await worker.stop()

    rerun = await inspector.get(task_id)
    assert rerun is not None
    assert rerun.ctx.status is Status.DONE
    assert rerun.ctx.attempts == 1, "an operator's retry starts the count afresh"
    assert await inspector.retry(task_id) is False, "a done task is not retried"
    assert await inspector.retry("no-such-task") is False


async def test_admin_kill_stops_a_pending_task(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.ADMIN)
    backend = harness.backend(max_attempts=3)
    inspector = harness.inspector(backend)
    doomed = await backend.push({"job": "doomed"})
    kept = await backend.push({"job": "kept"})

    assert await inspector.kill(doomed, "no longer wanted") is True
    assert await inspector.kill(doomed) is False, "a killed task cannot be killed again"
    assert await inspector.kill("no-such-task") is False
    stored = await inspector.get(doomed)
    assert stored is not None
    assert stored.ctx.status is Status.KILLED
    assert stored.ctx.last_error == "no longer wanted"

    worker = await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: calls.finished, what="the kept task to run")
    await worker.stop()
    assert calls.ids() == [kept]


async def test_admin_purge_deletes_by_status_and_age(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.ADMIN)
    backend = harness.backend()
    inspector = harness.inspector(backend)
    done_ids = await backend.push_bulk(range(3))
    worker = await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: len(calls.finished) >= 3, what="three tasks to finish")
    await worker.stop()
    pending = await backend.push({"job": "waiting"})

    assert await inspector.purge(Status.DONE, older_than=3600) == 0, "nothing finished an hour ago"
    await asyncio.sleep(0.01)  # the purge cut-off is "finished before now"
    assert await inspector.purge(Status.DONE) == 3
    assert await inspector.list_tasks(Status.DONE) == []
    for task_id in done_ids:
        assert await inspector.get(task_id) is None
    remaining = await inspector.get(pending)
    assert remaining is not None
    assert remaining.ctx.status is Status.PENDING


async def test_an_operator_kill_wins_over_the_running_workers_ack(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.ADMIN)
    backend = harness.backend(max_attempts=3)
    inspector = harness.inspector(backend)
    release = asyncio.Event()

    async def held(args: Any, task: Task[bytes]) -> Any:
        await release.wait()
        return "finished anyway"

    task_id = await backend.push({"job": "long"})
    worker = await harness.worker(backend, calls.handler(held)).start()
    await harness.wait_until(lambda: calls.calls, what="the task to start")
    assert await inspector.kill(task_id, "cancelled by support") is True
    release.set()
    await harness.wait_until(lambda: worker.finished(), what="the run to end")
    await worker.stop()

    stored = await inspector.get(task_id)
    assert stored is not None
    assert stored.ctx.status is Status.KILLED, "the lease was lost: the worker's ack is ignored"
    assert stored.ctx.last_error == "cancelled by support"


async def test_finished_tasks_are_purged_after_retention(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT)
    backend = harness.backend()
    inspector = harness.inspector(backend)

    async def refuse_odd(args: Any, task: Task[bytes]) -> Any:
        if args % 2:
            raise Abort("odd")
        return args

    ids = await backend.push_bulk(range(4))
    later = await backend.push(10, delay=3600) if harness.store.capabilities.has(Capability.SCHEDULE) else None
    worker = harness.worker(backend, calls.handler(refuse_odd), keep_alive=0.1, retention=0.3)
    await worker.start()
    await harness.wait_until(lambda: len(worker.finished()) >= 4, what="four tasks to finish")

    async def gone() -> bool:
        return all([await inspector.get(task_id) is None for task_id in ids])

    for _ in range(100):
        if await gone():
            break
        await asyncio.sleep(0.05)
    await worker.stop()
    assert await gone(), "done and killed tasks are deleted once retention has passed"
    if later is not None:
        assert await inspector.get(later) is not None, "unfinished tasks are kept"


async def test_list_tasks_is_oldest_run_at_first_and_counts_by_status(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.SCHEDULE)
    backend = harness.backend()
    inspector = harness.inspector(backend)
    now = time.time()
    newest = await backend.push({"n": 3}, run_at=now + 3600)
    oldest = await backend.push({"n": 1}, run_at=now - 60)
    middle = await backend.push({"n": 2}, run_at=now - 30)

    assert [t.id for t in await inspector.list_tasks()] == [oldest, middle, newest]
    assert [t.id for t in await inspector.list_tasks(limit=1, offset=1)] == [middle]
    stats = await inspector.stats()
    assert stats.queue == harness.queue
    assert stats.counts[Status.PENDING] == 3
    assert all(stats.counts.get(s, 0) in (0, None) for s in Status if s is not Status.PENDING)


async def test_stats_count_what_waits_for_its_time(harness: Harness, calls: Calls) -> None:
    """A delayed push and a retry in its backoff are counted apart from what is due (the live
    view's ready / scheduled depth); a store that cannot tell them apart says None."""
    harness.require(Capability.SCHEDULE)
    backend = harness.backend(max_attempts=3)
    inspector = harness.inspector(backend)
    can_tell = harness.store.capabilities.has(Capability.INSPECT)
    failing = await backend.push({"n": 0})
    await backend.push({"n": 1}, delay=3600)
    await backend.push({"n": 2})
    stats = await inspector.stats()
    assert stats.scheduled == 1 if can_tell else stats.scheduled in (None, 1)
    if not can_tell:
        return

    async def fail_one(args: Any, task: Task[bytes]) -> Any:
        if task.id == failing:
            raise ValueError("later")
        return None

    worker = await harness.worker(
        backend, calls.handler(fail_one), backoff=Backoff(kind="constant", base=3600.0, jitter=False)
    ).start()
    await harness.wait_until(lambda: worker.finished("retry") and worker.finished("done"), what="one retry, one done")
    await worker.stop()
    stats = await inspector.stats()
    assert (stats.counts[Status.FAILED], stats.scheduled) == (1, 2)
