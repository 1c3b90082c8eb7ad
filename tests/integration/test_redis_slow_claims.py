"""A claim whose reply is slow to reach its worker is not taken for a lost one (Redis, rsmq).

A worker's heartbeat gives back the tasks locked by it that it does not run, claimed more than
`keep_alive` ago: a claim whose reply was lost. A claim still on its way looks the same to the
server: its tasks are locked by the worker, which does not run them yet. Given back, such a task
ran twice: once by the worker that got the reply, once more after (its acknowledgement found the
lock gone and left it waiting). Seen as flaky conformance tests under load (orphan recovery on
Redis ran the spare task twice; an rsmq retry ran before its backoff)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

from apalis_cli.backend import Inspector, Store
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker

STORE_KINDS = ("redis", "rsmq")
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""

CLAIM = {"redis": "claim", "rsmq": "receive"}
"""Each store's claiming script."""


class SlowFirstReply:
    """A script whose first reply reaches its caller `delay` seconds late (a slow network, a
    process starved of CPU): the call itself runs on the server at once."""

    def __init__(self, script: Any, delay: float) -> None:
        self.script, self.delay, self.slowed = script, delay, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.script, name)

    async def __call__(self, keys: Sequence[Any] = (), args: Iterable[Any] = (), client: Any = None) -> Any:
        reply = await self.script(keys=keys, args=args, client=client)
        if not self.slowed:
            self.slowed = True
            await asyncio.sleep(self.delay)
        return reply


async def test_a_claim_whose_reply_is_slow_runs_its_task_once(store: Store) -> None:
    kind = store.kind
    backend: Any = store.backend("slow", codec=JsonCodec(), max_attempts=3)
    task_id = await backend.push({"n": 1})
    scripts = store.connection.scripts  # type: ignore[attr-defined]
    scripts[CLAIM[kind]] = SlowFirstReply(scripts[CLAIM[kind]], delay=0.6)  # several beats meanwhile
    runs: list[tuple[str, int]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        runs.append((task.id, task.ctx.attempts))

    stop = asyncio.Event()
    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.1, stale_after=2.0, poll_interval=0.05)
    running = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 20
    while not runs:
        assert time.monotonic() < deadline, "the task never ran"
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)  # a second run would come now: beats, claims
    stop.set()
    await running

    assert runs == [(task_id, 1)], "it ran once, its first attempt"
    if kind == "redis":  # rsmq deletes a message that is done
        assert isinstance(backend, Inspector)
        done = await backend.get(task_id)
        assert done is not None
        assert (done.ctx.status, done.ctx.attempts) == (Status.DONE, 1)
