"""What the overview shows of each queue, counted in the background and served from memory.

Counting a queue of a million tasks takes the store a good part of a second; a board that counted
on every request would be as slow, and ten open tabs would load the store tenfold. So a page
reads the last snapshot, and a request that finds it stale starts one refresh of all queues in
the background (never two at once): the store is asked at most once per `fresh_for` however many
people look, and never for more than a tenth of its time (a refresh that took 0.8 s is not
started again within 8 s). The first request waits for the first refresh.

Tasks finished per minute are gathered incrementally: a minute that ended is kept, and each
refresh asks only for the last two minutes (a commit may land just after its minute ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from ..backend import Capability, QueueStats, WorkerInfo
from ..browsing import ActivitySource, MinuteCounts
from .board import Board, QueueView
from .control import paused_state
from .present import problem

__all__ = ["QueueSnapshot", "Snapshots"]

_HOUR_MINUTES = 60
_PER_QUEUE_TIMEOUT = 10.0


@dataclass(slots=True)
class QueueSnapshot:
    """One queue's figures as of `taken_at`; a figure the store cannot give is None."""

    view: QueueView
    stats: QueueStats | None = None
    oldest_ready_at: float | None = None
    workers: list[WorkerInfo] | None = None
    paused: bool | None = None
    error: str | None = None
    taken_at: float = 0.0
    per_minute: dict[int, MinuteCounts] = field(default_factory=dict)
    settled_before: int | None = None  # minutes before this one are final in `per_minute`
    activity_known: bool = False  # the store told the oldest ready task (None there: nothing)
    finished_known: bool = False  # the store keeps finished tasks: `per_minute` counts them

    def minutes(self, now: float) -> list[tuple[int, MinuteCounts]]:
        """The last hour, minute by minute, oldest first (missing minutes count zero)."""
        current = int(now // 60)
        return [(m, self.per_minute.get(m, MinuteCounts())) for m in range(current - _HOUR_MINUTES + 1, current + 1)]


class Snapshots:
    """The latest `QueueSnapshot` of every queue of a board, refreshed on demand."""

    def __init__(self, board: Board, *, fresh_for: float = 2.0) -> None:
        self.board = board
        self.fresh_for = fresh_for
        self._latest = {view.key: QueueSnapshot(view) for view in board.queues}
        self._refreshed_at = float("-inf")
        self._took = 0.0  # how long the last refresh took
        self._refreshing: asyncio.Task[None] | None = None

    async def all(self) -> list[QueueSnapshot]:
        """Every queue's latest snapshot; starts a refresh when they are stale (and waits for
        it only when there has never been one)."""
        if self.fresh_for <= 0:  # count on every request (the tests ask for this)
            await self.refresh()
        elif time.monotonic() - self._refreshed_at > max(self.fresh_for, 10 * self._took):
            refresh = self._start_refresh()
            if self._refreshed_at == float("-inf"):
                await asyncio.shield(refresh)
        return [self._latest[view.key] for view in self.board.queues]

    def of(self, view: QueueView) -> QueueSnapshot:
        """The latest snapshot of one queue (possibly not taken yet)."""
        return self._latest[view.key]

    async def refresh(self) -> None:
        """Refresh every queue now and wait for it (the benchmark and tests call this)."""
        await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_all(), name="apalis-web-refresh")
        return self._refreshing

    async def close(self) -> None:
        """Stop a refresh in flight."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing

    async def _refresh_all(self) -> None:
        started = time.monotonic()
        await self.board.reopen_failed()
        # Queues of one store are asked one after another (they share its connections); stores
        # are asked side by side.
        by_store: dict[str, list[QueueView]] = {}
        for view in self.board.queues:
            by_store.setdefault(view.backend_name, []).append(view)

        async def one_store(views: list[QueueView]) -> None:
            for view in views:
                await self._refresh_one(self._latest[view.key])

        await asyncio.gather(*(one_store(views) for views in by_store.values()))
        self._refreshed_at = time.monotonic()
        self._took = self._refreshed_at - started

    async def _refresh_one(self, snap: QueueSnapshot) -> None:
        view = snap.view
        now = time.time()
        snap.taken_at = now
        if view.error is not None:
            snap.error = view.error
            return
        inspector = view.inspector
        try:
            async with asyncio.timeout(_PER_QUEUE_TIMEOUT):
                if inspector is not None:
                    snap.stats = await inspector.stats()
                    if view.why_not(Capability.WORKERS) is None:
                        snap.workers = await inspector.workers()
                snap.paused = await paused_state(view)
                source = view.activity_source
                if source is not None:
                    await _gather_activity(snap, source, now)
        except Exception as exc:  # a store that fails keeps its last figures, with the reason
            snap.error = problem(exc, self.board.config.secrets)
        else:
            snap.error = None


async def _gather_activity(snap: QueueSnapshot, source: ActivitySource, now: float) -> None:
    current = int(now // 60)
    first = current - _HOUR_MINUTES + 1
    since_minute = first if snap.settled_before is None else max(first, snap.settled_before - 1)
    activity = await source.activity(since_minute * 60.0)
    snap.oldest_ready_at = activity.oldest_ready_at
    snap.activity_known, snap.finished_known = True, activity.finished_kept
    kept = {m: c for m, c in snap.per_minute.items() if first <= m < since_minute}
    kept.update({m: c for m, c in activity.per_minute.items() if m >= since_minute})
    snap.per_minute = kept
    snap.settled_before = current
