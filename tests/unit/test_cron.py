"""Cron without a server: schedules, settings, tick keys, a refused tick, the decoded stream
(the replicas piped into a durable store are in tests/integration/test_cron.py)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import ConfigError
from apalis_cli.events import BackendUnavailable, Event
from apalis_cli.memory import MemoryQueue, MemoryStore
from apalis_cli.task import Task, TaskId
from apalis_cli.worker import Worker
from apalis_cron import CronStore
from apalis_cron.config import CronConfig
from apalis_cron.schedule import Schedule
from apalis_cron.ticker import tick_key


def settings(**options: Any) -> CronConfig:
    return CronConfig.parse(options)


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_six_fields_are_seconds_first_and_five_fields_minutes_first() -> None:
    every_ten_seconds = Schedule(settings(schedule="*/10 * * * * *"))
    every_ten_minutes = Schedule(settings(schedule="*/10 * * * *"))
    start = at("2026-11-29T03:00:01+00:00")
    assert every_ten_seconds.next_after(start) == at("2026-11-29T03:00:10+00:00")
    assert every_ten_minutes.next_after(start) == at("2026-11-29T03:10:00+00:00")


def test_alias_and_timezone_follow_daylight_saving_time() -> None:
    daily_at_three = Schedule(settings(schedule="0 0 3 * * *", timezone="Europe/Paris"))
    # 2026-03-29 is the spring-forward day in Paris: 03:00 local is 01:00 UTC (UTC+2 from 02:00).
    before = at("2026-03-28T12:00:00+00:00")
    assert daily_at_three.next_after(before) == at("2026-03-29T01:00:00+00:00")
    assert Schedule(settings(schedule="@hourly")).next_after(at("2026-11-29T03:00:00+00:00")) == at(
        "2026-11-29T04:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({"schedule": "61 * * * * *"}, "schedule", "not a valid cron expression"),
        ({"schedule": "* * *"}, "schedule", "expected 5 fields"),
        ({"schedule": "@sometimes"}, "schedule", "unknown alias"),
        ({"schedule": "* * * * *", "timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
        ({"schedule": "* * * * *", "catch_up": "some"}, "catch_up", '"none", "latest" or "all"'),
        ({"schedule": "* * * * *", "every": 3}, "every", "unknown key"),
    ],
)
def test_bad_settings_name_the_key(options: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CronConfig.parse(options)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_catch_up_needs_a_durable_record() -> None:
    store = CronStore.from_spec(
        StoreSpec(name="c", kind="cron", url="", options={"schedule": "* * * * *", "catch_up": "all"})
    )
    with pytest.raises(ConfigError, match="needs pipe_to"):
        store.backend("ticks", codec=JsonCodec())


def test_tick_key_is_the_same_in_every_replica() -> None:
    tick = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
    assert tick_key(tick) == "cron:2026-11-29T03:00:00.000Z"


class RefusingQueue(MemoryQueue):
    """The memory store behind a link that refuses pushes until `until` (time.monotonic())."""

    until = 0.0

    async def push(self, args: Any, **options: Any) -> TaskId:
        if time.monotonic() < self.until:
            raise ConnectionError("connection refused")
        return await super().push(args, **options)


async def test_a_tick_the_store_refuses_is_reported_and_pushed_once_it_is_back() -> None:
    store = MemoryStore()
    plain = store.backend("ticks", codec=JsonCodec())
    sink = RefusingQueue(store, plain._state, "ticks", codec=JsonCodec(), max_attempts=1)
    cron = CronStore.from_spec(StoreSpec(name="c", kind="cron", url="", options={"schedule": "* * * * * *"}))
    backend = cron.pipe(sink)
    backend.ticker.budget = 0.3  # a store away for longer than this is reported
    ran: list[str] = []
    events: list[Event] = []
    back_a_while = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append(args["scheduled_at"])
        if time.monotonic() > sink.until + 1.2:
            back_a_while.set()

    worker = Worker(name="nightly", backend=backend, handler=handler, poll_interval=0.05, on_event=[events.append])
    sink.until = time.monotonic() + 2.5  # the store refuses the first tick or two
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    async with asyncio.timeout(20):
        await back_a_while.wait()
    stop.set()
    await running

    outages = [e.error for e in events if isinstance(e, BackendUnavailable)]
    assert outages, "the refused pushes were said, not retried in silence"
    assert re.fullmatch(
        r"ConnectionLost: cron tick \S+Z: ConnectionError: connection refused \(failing for 0\.\d s, gave up\)",
        outages[0],
    )
    first_refused = outages[0].split()[3].rstrip(":")
    assert ran[0] == first_refused, "the refused tick was kept and ran once the store took it"
    assert len(ran) == len(set(ran))


async def test_the_decoded_poll_stream_gets_the_ticks_too() -> None:
    """`poll`, the seed's decoded stream, runs the ticker as `poll_compact` does."""
    cron = CronStore.from_spec(StoreSpec(name="c", kind="cron", url="", options={"schedule": "* * * * * *"}))
    backend = cron.backend("ticks", codec=JsonCodec())
    stream = backend.poll(WorkerContext(id="w1", name="w", queue="ticks", poll_interval=0.05))
    tick: Task[Any] | None = None
    try:
        async with asyncio.timeout(5):  # a tick a second: it did not hang
            async for tick in stream:
                if tick is not None:
                    break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert tick is not None, "a tick arrived"
    assert set(tick.args) == {"scheduled_at"}, "decoded"
