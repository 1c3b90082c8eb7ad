"""A claim whose reply is slow to reach its worker is not taken for a lost one (PostgreSQL,
MySQL/MariaDB: the shared SQL queue).

A worker's heartbeat gives back the tasks locked by it that it does not run, claimed more than
`stale_after` ago: a claim whose reply was lost with its connection. A claim still on its way
looks the same to the server: its tasks are locked by the worker, which does not run them yet.
Given back, such a task ran twice: once by the worker that got the reply, once more from the
queue (its acknowledgement found the lock gone). The Redis stores had the same race
(tests/integration/test_redis_slow_claims.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from apalis_cli.backend import Inspector, Store
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker

STORE_KINDS = ("postgres", "mysql")
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


class SlowFirstReply:
    """A database call whose first reply reaches its caller `delay` seconds late (a slow network,
    a process starved of CPU): the statement itself runs on the server at once."""

    def __init__(self, call: Callable[..., Awaitable[Any]], delay: float, claimed: Callable[[Any], bool]) -> None:
        self.call, self.delay, self.claimed, self.slowed = call, delay, claimed, False

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self.call(*args, **kwargs)
        if not self.slowed and self.claimed(reply):  # the first reply that claimed a task
            self.slowed = True
            await asyncio.sleep(self.delay)
        return reply


async def test_a_claim_whose_reply_is_slow_runs_its_task_once(store: Store) -> None:
    backend: Any = store.backend("slow", codec=JsonCodec(), max_attempts=3)
    task_id = await backend.push({"n": 1})
    db = backend._db
    db.claim = SlowFirstReply(db.claim, delay=2.0, claimed=bool)  # beats meanwhile, past stale_after
    assert await ran_once_each(backend, [task_id])


async def test_a_claim_ahead_whose_reply_is_slow_runs_its_task_once(store: Store) -> None:
    # The acknowledgement of the first task claims the second ahead for the worker (its one slot
    # is free again), and that reply is the slow one.
    backend: Any = store.backend("slow", codec=JsonCodec(), max_attempts=3)
    task_ids = [await backend.push({"n": n}) for n in range(2)]
    db = backend._db
    db.ack = SlowFirstReply(db.ack, delay=2.0, claimed=lambda per_slot: any(per_slot))
    assert await ran_once_each(backend, task_ids)
    assert db.ack.slowed, "the second task was claimed ahead"


async def ran_once_each(backend: Any, task_ids: list[str]) -> bool:
    """Run a worker of one slot until `task_ids` ran; True when each ran once, at its first
    attempt, and ended done."""
    runs: list[tuple[str, int]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        runs.append((task.id, task.ctx.attempts))

    stop = asyncio.Event()
    worker = Worker(
        name="w", backend=backend, handler=handler, concurrency=1, keep_alive=0.1, stale_after=0.5, poll_interval=0.05
    )
    running = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 30
    while len(runs) < len(task_ids):
        assert time.monotonic() < deadline, "the tasks never ran"
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.5)  # a second run would come now: beats, claims
    stop.set()
    await running

    assert sorted(runs) == sorted((task_id, 1) for task_id in task_ids), "each ran once, its first attempt"
    assert isinstance(backend, Inspector)
    for task_id in task_ids:
        done = await backend.get(task_id)
        assert done is not None
        assert (done.ctx.status, done.ctx.attempts) == (Status.DONE, 1)
    return True
