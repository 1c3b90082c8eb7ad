"""A process's contact with its store: lost, and since when it has been reachable again.

After an outage every worker's last heartbeat is old, the live workers' too: they could not beat
while the store was down. An orphan sweep that believed those heartbeats the moment the store
answered again would take the tasks of live workers, tasks they may have finished while their
acknowledgements waited for the store, and run them a second time. So a store sweeps only once
its process has had the store reachable for a full `stale_after` (`steady_for`), counted from
`RETRY_WAIT_CAP` after it reached the store again: another process that lost the store too may
be in the middle of a retry's wait when this one gets through, and reaches it up to that much
later; only then has every live worker had `stale_after` to beat. (Counted from the first try
that got through, a MariaDB daemon restarted under load swept a live daemon whose retry waited
2 s, past a `stale_after` of 1.5 s, and ran its running tasks again: 7 of 20 runs of the outage
test.) A store opened just now counts as reached now, so a new process also waits
`stale_after` before it takes anyone's tasks.

The store's connection layer reports each try: `lost()` when one failed for want of the store,
`reached()` when one got its answer. A heartbeat or a retry waiting in `sleep` wakes as soon as
the store is reached again, so a reconnecting worker beats and writes its pending
acknowledgements at once rather than after its backoff.

A stall of the process itself is the same danger from the other side: the store answered all
along, but this process did not ask (its event loop blocked by a handler's `time.sleep`, its CPU
starved, its beats' round trips slow). Every worker of the process then stops beating at once,
and when the loop runs again the first of them to beat sees its neighbours' heartbeats older
than `stale_after`: it would sweep their running tasks, tasks they are still running, and each
would run a second time (`test_two_workers_run_a_thousand_tasks_exactly_once[redis-cluster]`
did so under two CPU hogs; `tests/conformance/test_stalls.py` blocks the loop for 1 s). So each
beat of a worker of this process is noted here before its round trips (`beat`, by
`polling.beat_every`), and a gap between two beats of one worker longer than `stall_gap` counts
as a loss of contact: the whole process's steady time starts over. A worker sweeps (`may_sweep`)
only once the store has been steady for `stale_after` and it has itself beaten for that long (a
worker that starts right after a stall waits too), and only while its beat under way began less
than `stall_gap` ago: a store whose server judges staleness when the sweep runs (PostgreSQL,
MySQL) asks after its round trips, and a stall during them has not been noted by any beat yet.

The gap: a live neighbour beats every `keep_alive` (or its round trips, when longer), and is judged
stale once its last beat is `stale_after` old. After a stall of `d` (or a round trip as slow)
its last beat may be as old as `keep_alive + d` plus its round trip, and the sweeping worker's
own gap across the same stall is at least `d`: a gap past `stale_after - keep_alive` must count,
minus a margin for the neighbour's round trip. `stall_gap` is half of `stale_after`, never less
than one and a half beats: with the default `stale_after` of three beats, a beat that comes half
a `keep_alive` late (a round trip that took 0.1 s at `keep_alive = 0.2`) holds this process's
sweeps for `stale_after`; the orphans of a vanished worker, whose beats stopped for good, are
taken that much later, never lost.

Leaving this process's live workers out of its sweep by id would be exact for them, but a
worker of this process whose heartbeat hangs for good (never closed: it never says goodbye) must
still lose its tasks, and every store's sweep would need the list; the gap needs neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

__all__ = ["RETRY_WAIT_CAP", "Contact", "stall_gap"]

RETRY_WAIT_CAP = 2.0
"""The longest wait between two tries of an operation retried while its store is away
(`apalis_cli.retrying.delays`): a process reaches a restarted store up to this much after another."""


def stall_gap(keep_alive: float, stale_after: float) -> float:
    """The longest gap between two beats of one worker that is not a stall of its process."""
    return max(stale_after / 2, keep_alive * 1.5)


class Contact:
    """Whether the store is reachable from this process now, and since when without a break."""

    __slots__ = ("_beats", "_lost", "_restored", "_since")

    def __init__(self) -> None:
        self._since = time.monotonic()
        self._lost = False
        self._restored: asyncio.Event | None = None
        # Worker id -> when its last beat began, since when it has beaten, its `stall_gap`
        # (monotonic seconds).
        self._beats: dict[str, tuple[float, float, float]] = {}

    def lost(self) -> None:
        """A try failed because the store could not be reached (refused, dropped, timed out)."""
        self._lost = True

    def reached(self) -> None:
        """A try got its answer from the store; after a loss, the steady time starts over."""
        if self._lost:
            self._lost = False
            # The other processes that lost the store too may be in the middle of a retry's wait
            # (`apalis_cli.retrying.delays`, up to RETRY_WAIT_CAP): they reach it up to that much
            # later than this one, and only then can they beat again.
            self._since = time.monotonic() + RETRY_WAIT_CAP
            restored, self._restored = self._restored, None
            if restored is not None:
                restored.set()

    def steady_for(self, seconds: float) -> bool:
        """True when the store has been reachable, without a failed try, for `seconds` (after a
        loss, counted from RETRY_WAIT_CAP after this process reached it again)."""
        return not self._lost and time.monotonic() - self._since >= seconds

    def beat(self, worker_id: str, keep_alive: float, stale_after: float) -> None:
        """A worker of this process begins a beat: after a gap longer than `stall_gap` since its
        last one the process stalled, and the steady time starts over for every worker."""
        now, gap = time.monotonic(), stall_gap(keep_alive, stale_after)
        last = self._beats.get(worker_id)
        if last is None:
            joined = now
        else:
            joined = last[1]
            if now - last[0] > last[2]:
                self._since = max(self._since, now)
        self._beats[worker_id] = (now, joined, gap)

    def forget(self, worker_id: str) -> None:
        """The worker's heartbeat ended (it stopped, or a beat failed): a new one starts anew."""
        self._beats.pop(worker_id, None)

    def may_sweep(self, worker_id: str, stale_after: float) -> bool:
        """True when the worker may take the tasks of workers whose last beat is `stale_after`
        old: the store has been reachable and this process awake for `stale_after`, the worker
        has beaten for as long, and its beat under way began no longer than `stall_gap` ago (a
        stall since then would not have been noticed yet)."""
        beat = self._beats.get(worker_id)
        if beat is None or self._lost:
            return False
        began, joined, gap = beat
        now = time.monotonic()
        return now - began <= gap and now - max(self._since, joined) >= stale_after

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or less: until a lost store is reached again."""
        restored = self._restored
        if restored is None:
            restored = self._restored = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await restored.wait()
