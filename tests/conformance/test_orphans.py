"""Orphans on every store: a worker that claimed tasks and vanished gives them back, never a loop.

The vanished worker is played by hand: one heartbeat (it registers), then its poll stream claims
tasks that are never acknowledged, and it never beats again. Its heartbeat stream is closed only
after the test, as a process that died would never close it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

from apalis_cli.backend import Capability, WorkerContext
from apalis_cli.task import Status, Task

from .conftest import Backend, Calls, Harness


async def claim_and_vanish(backend: Backend, count: int) -> tuple[AsyncIterator[None], list[Task[bytes]]]:
    """Register a worker, claim `count` tasks through its poll stream, and leave them running."""
    ghost = WorkerContext(
        id=f"ghost-{time.monotonic_ns()}",
        name="ghost",
        queue=backend.get_queue(),
        concurrency=count,
        keep_alive=0.1,
        stale_after=0.3,
        poll_interval=0.05,
        free_slots=lambda: count,
    )
    heartbeat = backend.heartbeat(ghost)
    await anext(heartbeat)
    stream = backend.poll_compact(ghost)
    claimed: list[Task[bytes]] = []
    try:
        async with asyncio.timeout(10):
            while len(claimed) < count:
                task = await anext(stream)
                if task is not None:
                    claimed.append(task)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return heartbeat, claimed


async def test_orphaned_tasks_come_back_after_stale_after(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.ORPHANS)
    backend = harness.backend(max_attempts=3)
    ids = await backend.push_bulk(range(3))
    last_beat = time.time()  # the ghost's only heartbeat is no earlier than this
    heartbeat, claimed = await claim_and_vanish(backend, 3)
    try:
        assert sorted(t.id for t in claimed) == sorted(ids)
        rescuer = harness.worker(backend, calls.handler(), name="rescuer", keep_alive=0.1, stale_after=0.5)
        await rescuer.start()
        await harness.wait_until(lambda: len(calls.finished) >= 3, what="the orphans to be recovered and run")
        await asyncio.sleep(0.3)  # a second recovery of the same task would show now
        await rescuer.stop()
    finally:
        await heartbeat.aclose()  # type: ignore[attr-defined]

    assert Counter(calls.ids()) == Counter(ids), "each orphan runs once more, exactly once"
    assert min(c.at for c in calls.calls) >= last_beat + 0.5 - 0.05, "recovered only after stale_after"


async def test_orphan_recovery_counts_the_attempt_and_kills_when_exhausted(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.ORPHANS, Capability.MAX_ATTEMPTS)
    backend = harness.backend()
    last_chance = await backend.push({"kind": "last chance"}, max_attempts=1)
    spare = await backend.push({"kind": "spare"}, max_attempts=3)
    heartbeat, claimed = await claim_and_vanish(backend, 2)
    try:
        assert {t.id: t.ctx.attempts for t in claimed} == {last_chance: 1, spare: 1}
        rescuer = harness.worker(backend, calls.handler(), name="rescuer", keep_alive=0.1, stale_after=0.3)
        await rescuer.start()
        await harness.wait_until(lambda: calls.finished, what="the spare orphan to run")
        await asyncio.sleep(0.5)  # several sweeps: an exhausted orphan must not come back
        await rescuer.stop()
    finally:
        await heartbeat.aclose()  # type: ignore[attr-defined]

    assert [(c.id, c.attempts) for c in calls.calls] == [(spare, 2)]
    if harness.store.capabilities.has(Capability.INSPECT):
        inspector = harness.inspector(backend)
        dead = await inspector.get(last_chance)
        assert dead is not None
        assert dead.ctx.status is Status.KILLED
        assert "worker" in (dead.ctx.last_error or ""), "the error says its worker went away"
        done = await inspector.get(spare)
        assert done is not None
        assert done.ctx.status is Status.DONE
        assert done.ctx.attempts == 2


async def test_a_live_workers_tasks_are_not_taken(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.ORPHANS)
    backend = harness.backend(max_attempts=3)
    release = asyncio.Event()

    async def held(args: object, task: Task[bytes]) -> object:
        await release.wait()
        return args

    # stale_after is six beats, not three: on a loaded 2-core machine an event loop can stall for
    # a few beats, and a lease that lapses then is a real (and correct) redelivery, not this test.
    task_id = await backend.push({"kind": "long"})
    holder = await harness.worker(
        backend, calls.handler(held, worker="holder"), name="holder", keep_alive=0.1, stale_after=0.6
    ).start()
    await harness.wait_until(lambda: calls.calls, what="the long task to start")
    sweeper = await harness.worker(
        backend, calls.handler(worker="sweeper"), name="sweeper", keep_alive=0.1, stale_after=0.6
    ).start()
    await asyncio.sleep(1.5)  # many sweeps, each past stale_after of a worker that does beat
    release.set()
    await harness.wait_until(lambda: calls.finished, what="the long task to finish")
    await sweeper.stop()
    await holder.stop()

    assert [c.worker for c in calls.calls] == ["holder"], "only the holder ran the task"
    assert [(e.task_id, e.outcome) for e in holder.finished()] == [(task_id, "done")]


async def test_a_claim_whose_reply_was_lost_is_released_by_the_next_heartbeat(harness: Harness, calls: Calls) -> None:
    # A claim can commit on the server while its reply is lost with the connection: the task is
    # then locked by a live worker that is not running it. Its own heartbeat gives it back.
    harness.require(Capability.RECONNECT, Capability.ORPHANS, Capability.OWNED_LEASES)
    backend = harness.backend(max_attempts=3)
    task_id = await backend.push({"job": "lost reply"})
    # The worker beats all along, so the orphan sweep never takes its tasks: only the release
    # of claims it is not running (after keep_alive, or stale_after, as the store decides) can.
    worker = harness.worker(backend, calls.handler(), keep_alive=0.1, stale_after=0.3)
    stream = backend.poll_compact(worker.worker.context)
    try:
        async with asyncio.timeout(10):
            claimed = await anext(stream)
            while claimed is None:
                claimed = await anext(stream)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert claimed.id == task_id

    await worker.start()
    await harness.wait_until(lambda: calls.finished, what="the lost claim to be released and run")
    await worker.stop()
    if harness.store.capabilities.has(Capability.MAX_ATTEMPTS):
        assert [c.attempts for c in calls.of(task_id)] == [1], "a released claim is not an attempt"


async def test_tasks_a_claim_took_that_its_worker_has_not_started_are_not_lost_claims(harness: Harness) -> None:
    # A claim takes two tasks (two free slots) and the worker starts the first; the second is on
    # its way to it through the poll stream. So is a whole batch when the claim's reply reached a
    # starved process late: the worker's beat may run before the stream hands any of it out. A
    # lost claim is one its worker will never run; this one it will, however old the claim.
    harness.require(Capability.ORPHANS, Capability.OWNED_LEASES)
    backend = harness.backend(max_attempts=3)
    _, second = await backend.push_bulk(["a", "b"])
    started: list[str] = []
    worker = WorkerContext(
        id=f"w1-{time.monotonic_ns()}",
        name="w1",
        queue=backend.get_queue(),
        concurrency=2,
        keep_alive=0.3,
        stale_after=0.9,
        free_slots=lambda: 2 - len(started),
        running=lambda: started,
    )
    rival = WorkerContext(id=f"w2-{time.monotonic_ns()}", name="w2", queue=backend.get_queue(), free_slots=lambda: 1)
    heartbeat = backend.heartbeat(worker)
    stream = backend.poll_compact(worker)
    rivals = backend.poll_compact(rival)
    try:
        await anext(heartbeat)
        async with asyncio.timeout(10):
            while (task := await anext(stream)) is None:
                pass
        started.append(task.id)
        for _ in range(4):  # beats a keep_alive apart: the claim is older than stale_after now
            await anext(heartbeat)
        assert await anext(rivals) is None, "the task on its way was given back to the queue"
        async with asyncio.timeout(10):
            coming = await anext(stream)
        assert coming is not None
        assert coming.id == second
    finally:
        for closing in (rivals, stream, heartbeat):
            await closing.aclose()  # type: ignore[attr-defined]
