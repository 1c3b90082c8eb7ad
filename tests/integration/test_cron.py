"""Cron piped into every durable store: catch-up, and N replicas running each tick once (what needs
no server is in tests/unit/test_cron.py)."""

from __future__ import annotations

import asyncio
import collections
import importlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.backend import Capability, Store, StoreSpec, TaskSink
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Task, iso
from apalis_cli.worker import Worker
from apalis_cron import CronStore
from apalis_cron.config import CronConfig
from apalis_cron.schedule import Schedule
from apalis_cron.ticker import tick_key

from ..conformance.factory import StoreFactory

# Every store in the conformance suite; those without idempotency keys cannot take pipe_to.
DURABLE_KINDS = sorted(p.stem for p in (Path(__file__).parent.parent / "conformance" / "stores").glob("[a-z]*.py"))


def _factory(kind: str) -> StoreFactory:
    module = importlib.import_module(f"tests.conformance.stores.{kind}")
    factory: StoreFactory = module.FACTORY
    return factory


@pytest.fixture(params=DURABLE_KINDS)
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory = _factory(request.param)
    store = await factory.create(tmp_path)
    try:
        for needed in (Capability.IDEMPOTENCY, Capability.INSPECT):
            if not store.capabilities.has(needed):
                pytest.skip(f"pipe_to needs {needed.value}: {store.capabilities.why_not(needed)}")
        yield store
    finally:
        await factory.destroy(store)


async def test_three_replicas_run_each_tick_exactly_once(durable: Store) -> None:
    runs: collections.Counter[str] = collections.Counter()

    async def handler(args: Any, task: Task[bytes]) -> None:
        runs[args["scheduled_at"]] += 1

    cron = CronStore.from_spec(StoreSpec(name="c", kind="cron", url="", options={"schedule": "* * * * * *"}))
    stop = asyncio.Event()
    replicas = [
        Worker(
            name=f"replica-{i}",
            backend=cron.pipe(durable.backend("nightly", codec=JsonCodec())),
            handler=handler,
            concurrency=4,
            keep_alive=0.5,
            poll_interval=0.05,
        )
        for i in range(3)
    ]
    running = [asyncio.create_task(w.run(stop)) for w in replicas]
    await asyncio.sleep(5.2)
    stop.set()
    await asyncio.gather(*running)
    # The replicas start ticking once connected (a busy machine may take a while), and the tick
    # pushed just before the stop may still wait in the queue: what must hold is that the ticks
    # that ran follow each other with none missing, and that none ran twice.
    assert set(runs.values()) == {1}, {tick: n for tick, n in runs.items() if n != 1}
    ran = sorted(runs)
    assert len(ran) >= 3, ran
    schedule = Schedule(cron.config)
    first = datetime.fromisoformat(ran[0].replace("Z", "+00:00")).timestamp()
    assert ran == [iso(t) for t in schedule.ticks_between(first - 0.5, first + len(ran) - 0.5, 100)]


@pytest.mark.parametrize(("mode", "expected_ticks"), [("none", 0), ("latest", 1), ("all", 3)])
async def test_catch_up_recovers_ticks_missed_since_the_last_recorded_one(
    durable: Store, mode: str, expected_ticks: int
) -> None:
    queue = durable.backend("report", codec=JsonCodec())
    assert isinstance(queue, TaskSink)
    schedule = Schedule(CronConfig.parse({"schedule": "* * * * * *"}))
    now = time.time()
    # The last daemon recorded the tick 4 s ago, then nothing ran: 3 ticks were missed since.
    last = schedule.ticks_between(now - 5, now - 3.5, 1)[0]
    await queue.push({"scheduled_at": iso(last)}, run_at=last, idempotency_key=tick_key(last))
    cron = CronStore.from_spec(
        StoreSpec(name="c", kind="cron", url="", options={"schedule": "* * * * * *", "catch_up": mode})
    )
    backend = cron.pipe(queue)
    missed = await backend.ticker._missed(last + 3.5)  # the ticker's own catch-up decision
    assert len(missed) == expected_ticks
    if missed:
        assert missed[-1] == last + 3
    assert all(tick > last for tick in missed)
