"""The ticker: a cron schedule's ticks pushed into a queue, each at its time, once per tick.

Each tick is the task `{"scheduled_at": ISO8601}` with the idempotency key `cron:<tick time>`:
the same in every replica, so a durable store keeps one task per tick however many daemons push
it. `catch_up` recovers ticks missed while no daemon ran, counted from the newest tick recorded
in that queue.

A tick the store does not take is pushed again with the core's backoff (`apalis_cli.retrying`);
past its budget the ticker fails the worker's poll stream, so the worker reports the store as
unavailable and polls again, which starts the ticker again: the tick is kept and pushed first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from apalis_cli.backend import Inspector, TaskSink
from apalis_cli.retrying import RECONNECT_BUDGET, retrying
from apalis_cli.task import Task, iso

from .config import CronConfig
from .schedule import Schedule

__all__ = ["Ticker", "tick_key"]

_KEY_PREFIX = "cron:"


def tick_key(tick: float) -> str:
    """The idempotency key of the tick at `tick`: the same in every replica."""
    return f"{_KEY_PREFIX}{iso(tick)}"


class Ticker:
    """Pushes the schedule's ticks into `sink`, each at its time, with its idempotency key."""

    def __init__(self, config: CronConfig, sink: TaskSink, *, inspector: Inspector | None) -> None:
        self.config = config
        self.schedule = Schedule(config)
        self._sink = sink
        self._inspector = inspector
        self.budget = RECONNECT_BUDGET
        """How long one tick's push is retried before this run of the ticker fails."""
        self._unpushed: float | None = None  # a tick a failed or cancelled run could not push

    async def run(self) -> None:
        """Push the tick a previous run could not, catch up as configured, then push every
        tick as it comes, until cancelled."""
        if self._unpushed is not None:
            await self._push(self._unpushed)
        now = time.time()
        for tick in await self._missed(now):
            await self._push(tick)
        tick = self.schedule.next_after(now)
        while True:
            await asyncio.sleep(max(tick - time.time(), 0.0))
            await self._push(tick)
            tick = self.schedule.next_after(tick)

    async def _push(self, tick: float) -> None:
        """Push `tick`, again while the store fails (any error: its key makes a second push of
        one that got through a no-op); kept for the next run if this one ends first."""
        args: Mapping[str, Any] = {"scheduled_at": iso(tick)}
        self._unpushed = tick
        await retrying(
            lambda: self._sink.push(args, run_at=tick, idempotency_key=tick_key(tick)),
            transient=lambda _: True,
            budget=self.budget,
            what=f"cron tick {iso(tick)}",
        )
        self._unpushed = None

    async def _missed(self, now: float) -> list[float]:
        s = self.config
        if s.catch_up == "none" or self._inspector is None:
            return []
        last = await self._last_recorded_tick()
        if last is None:
            return []  # never ran before: there is nothing to catch up
        missed = self.schedule.ticks_between(last, now, s.catch_up_limit)
        return missed[-1:] if s.catch_up == "latest" else missed

    async def _last_recorded_tick(self) -> float | None:
        """The newest tick recorded in the queue (tasks are listed by run_at, oldest first)."""
        assert self._inspector is not None
        stats = await self._inspector.stats()
        total = sum(count or 0 for count in stats.counts.values())
        if total == 0:
            return None
        window = 50
        tasks = await self._inspector.list_tasks(None, limit=window, offset=max(total - window, 0))
        ticks = [_tick_of(task) for task in tasks]
        known = [tick for tick in ticks if tick is not None]
        return max(known) if known else None


def _tick_of(task: Task[bytes]) -> float | None:
    key = task.ctx.idempotency_key
    if not key or not key.startswith(_KEY_PREFIX):
        return None
    try:
        return datetime.fromisoformat(key[len(_KEY_PREFIX) :].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
