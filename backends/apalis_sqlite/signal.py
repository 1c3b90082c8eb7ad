"""In-process wake-ups for one queue: at once on push, and on time for tasks due later.

Every queue object of a store for the same queue shares one `QueueSignal`, so a push from any
of them wakes an idle worker of this process at once. Tasks pushed (or retried) for later are
remembered by due time and one timer wakes the pollers when the earliest comes. Pushes from
other processes are seen by polling within `poll_interval`.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Iterable

from apalis_cli.polling import Waker

__all__ = ["QueueSignal"]

_MAX_REMEMBERED = 4096  # beyond this many future times, polling finds the latest ones


class QueueSignal:
    """A `Waker` plus a timer for the earliest known future run_at."""

    __slots__ = ("_due", "_loop", "_timer", "waker")

    def __init__(self) -> None:
        self.waker = Waker()
        self._due: list[float] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self) -> None:
        """Wake every idle poller of the queue in this process."""
        self.waker.notify()

    def notify_at(self, times: Iterable[float]) -> None:
        """Wake pollers when each of `times` (epoch seconds) comes; at once for those past."""
        now = time.time()
        due = self._due
        woke = False
        for when in times:
            if when <= now:
                woke = True
            elif len(due) < _MAX_REMEMBERED:
                heapq.heappush(due, when)
        if woke:
            self.waker.notify()
        if due:
            self._arm(now)

    def _arm(self, now: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pushed from outside an event loop: polling will find it
            self._due.clear()
            return
        timer = self._timer
        if timer is not None:
            if not timer.cancelled() and self._loop is loop and timer.when() <= loop.time() + self._due[0] - now:
                return  # armed already, for this time or an earlier one
            timer.cancel()
        self._loop = loop
        self._timer = loop.call_later(max(self._due[0] - now, 0.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.time()
        due = self._due
        while due and due[0] <= now + 0.001:
            heapq.heappop(due)
        self.waker.notify()
        if due:
            self._arm(now)
