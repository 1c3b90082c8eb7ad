"""Redis claims ahead: a busy worker's claims ride on the script that acknowledges its runs.

The cases every store that claims ahead shares are in tests/conformance/test_claims_ahead.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from apalis_cli.codec import JsonCodec
from apalis_cli.task import Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore

STORE_KINDS = ("redis",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


async def test_a_busy_worker_claims_with_its_acknowledgements_not_in_a_round_trip_of_its_own(
    store: RedisStore,
) -> None:
    q = store.backend("q", codec=JsonCodec())
    ids = await q.push_bulk(range(100))
    claim = store.scripts["claim"]
    claims = 0

    async def counted(**kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await claim(**kwargs)

    store.scripts["claim"] = counted
    runs: Counter[str] = Counter()
    claims_when_all_started = -1
    all_started = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal claims_when_all_started
        runs[task.id] += 1
        if len(runs) == len(ids):
            claims_when_all_started = claims
            all_started.set()

    stop = asyncio.Event()
    worker = Worker(name="w", backend=q, handler=handler, concurrency=10, keep_alive=0.2, poll_interval=0.05)
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(all_started.wait(), 20)
    stop.set()
    await running
    assert runs == dict.fromkeys(ids, 1)
    # Ten batches of ten: the first is claimed alone, the nine after it with the acks that
    # freed their slots (a claim of its own costs a round trip per batch).
    assert 1 <= claims_when_all_started <= 3, claims_when_all_started
