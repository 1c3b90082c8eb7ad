"""Claims ahead: tasks claimed for a polling worker by the write that acknowledges its runs.

A busy worker would otherwise wait for two round trips (and two commits) per batch: one to
acknowledge the runs that ended, one to claim the tasks for the slots they freed. A store whose
acknowledging write can also claim asks `wanted` how many tasks to claim for whom (the slots the
finished runs free, never more: backpressure holds) and gives what it claimed to `hand_over`.
The worker's poll stream (`poll`) serves those tasks before it claims on its own. Tasks held
ahead count as running for the worker's heartbeat (`held`: they are not lost claims) and go
back to the queue when the stream closes; so do the tasks of a claim whose reply is still on its
way (`claiming_since`). The store keeps its own claiming (SQL, Lua); this
module is only the bookkeeping every such store shares.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from .backend import WorkerContext
from .polling import FIRST_IDLE_WAIT, Waker, poll_batches
from .service import Outcome, OutcomeKind
from .task import Task, TaskId

__all__ = ["ClaimsAhead", "Fetch", "Held", "Start"]

Ack = Callable[[Sequence[tuple[Task[Any], Outcome]]], Awaitable[None]]
Fetch = Callable[[int], Awaitable[Sequence[Task[bytes]]]]
Start = Callable[[], tuple[Fetch, Waker]]


class Held:
    """Tasks claimed ahead for one polling worker, not yet handed out (`tasks`), and the last
    batch taken from them for the worker's poll stream (`taken`)."""

    __slots__ = ("claiming", "open", "start", "taken", "tasks", "waker", "worker_id")

    def __init__(self, worker_id: str, waker: Waker) -> None:
        self.worker_id = worker_id
        self.waker = waker
        self.tasks: deque[Task[bytes]] = deque()
        self.taken: list[Task[bytes]] = []
        self.open = True
        self.claiming: list[float] = []
        """When each claim for this worker whose reply has not been read yet was asked (epoch
        seconds): the poll stream's own, and an acknowledgement's claims ahead."""
        self.start: Callable[[Task[bytes]], bool] = _refuse
        """The worker's `WorkerContext.start`, once its stream polls."""

    def take(self, limit: int) -> list[Task[bytes]]:
        """Up to `limit` of the tasks held, in claim order; they are `taken` until the next take."""
        tasks = self.tasks
        self.taken = [tasks.popleft() for _ in range(min(limit, len(tasks)))]
        return self.taken


H = TypeVar("H", bound=Held)


class ClaimsAhead(Generic[H]):
    """The tasks claimed ahead for the polling workers of one queue in this process.

    `holder` makes each stream's `Held` (a store may keep more per worker in a subclass);
    `ack` is the queue's `ack_batch`, through which tasks are given back.
    """

    __slots__ = ("_ack", "_holder", "_holders")

    def __init__(self, ack: Ack, holder: Callable[[str, Waker], H]) -> None:
        self._ack = ack
        self._holder = holder
        self._holders: dict[str, H] = {}

    async def release(self, tasks: Sequence[Task[bytes]]) -> None:
        """Give `tasks` back to the queue, their attempts not counted."""
        await self._ack([(task, Outcome.release()) for task in tasks])

    async def poll(
        self, worker: WorkerContext, start: Start, first_wait: float = FIRST_IDLE_WAIT
    ) -> AsyncIterator[Task[bytes] | None]:
        """`poll_batches` over the store's claims, serving the tasks claimed ahead for `worker`
        first; those left when the stream closes are released.

        `start()` gives the store's claim, `fetch(limit)`, and the queue's `Waker`. It is called
        once the stream is first iterated, as the body of a store's own generator would be (an
        unopened store raises there, a store may start listening there). `first_wait`: see
        `poll_batches`.
        """
        # Registered only once iterated: a stream closed before its first item leaves nothing.
        fetch, waker = start()
        worker_id = worker.id
        holder = self._holder(worker_id, waker)
        holder.start = worker.start
        self._holders[worker_id] = holder

        async def fetch_held_first(limit: int) -> Sequence[Task[bytes]]:
            # Asked only once the stream handed all it had to the worker: the tasks taken last
            # time are its own now, and leave `taken` here.
            taken = holder.take(limit)
            if taken:
                return taken
            asked, claiming = time.time(), holder.claiming
            claiming.append(asked)
            try:
                claimed = await fetch(limit)
            finally:
                claiming.remove(asked)
            if claimed:
                # On their way to the worker through the stream's buffer, not started yet: its
                # heartbeat counts them as it counts the tasks taken, until the next take.
                holder.taken = list(claimed)
                return claimed
            # An ack may have claimed ahead for this worker while the store's claim was in
            # flight, taking the very tasks that claim then found gone: serve them rather than
            # answer idle (a burst run would stop on that None and give them back unrun).
            return holder.take(limit)

        inner = poll_batches(worker, fetch_held_first, self.release, waker, first_wait, holder.take)
        try:
            async for task in inner:
                yield task
        finally:
            holder.open = False  # an ack claiming for it meanwhile gives its tasks back
            if self._holders.get(worker_id) is holder:
                del self._holders[worker_id]
            await inner.aclose()  # type: ignore[attr-defined]
            if holder.tasks:
                leftover = list(holder.tasks)
                holder.tasks.clear()
                await self.release(leftover)

    def holder(self, worker_id: str) -> H | None:
        """The open stream's `Held` of `worker_id`, if it polls here."""
        return self._holders.get(worker_id)

    def held(self, worker_id: str) -> list[TaskId]:
        """The tasks claimed ahead for `worker_id` and about to start: running, for its heartbeat.

        Those on their way to the worker count too (taken from the holder, or claimed by its
        stream's own claim, and not yet started): a
        beat that read the worker's tasks just then would see a held task in neither place, and
        give back as a lost claim (claimed long ago, after an outage) a task the worker runs.
        """
        holder = self._holders.get(worker_id)
        if holder is None:
            return []
        return [task.id for task in holder.tasks] + [task.id for task in holder.taken]

    def claiming_since(self, worker_id: str) -> float | None:
        """When the oldest claim for `worker_id` still in flight was asked (None: none is).

        The server locked its tasks for the worker, which does not run them yet: a heartbeat
        that gave back as lost claims the tasks claimed since then would have them run twice
        (once by the worker when the reply comes, once more from the queue). A store's beat
        leaves alone what was claimed since."""
        holder = self._holders.get(worker_id)
        return min(holder.claiming) if holder is not None and holder.claiming else None

    def wanted(self, items: Sequence[tuple[Task[Any], Outcome]]) -> list[tuple[H, int]]:
        """How many tasks to claim ahead per polling worker: the slots its finished runs free,
        less what it already holds."""
        holders = self._holders
        if not holders:
            return []
        freed: dict[str, int] = {}
        for task, outcome in items:
            lock = task.ctx.lock_by
            if lock is not None and outcome.kind is not OutcomeKind.RELEASE:  # a release: it is stopping
                freed[lock] = freed.get(lock, 0) + 1
        out = []
        for lock, count in freed.items():
            holder = holders.get(lock)
            if holder is not None and holder.open and count > len(holder.tasks):
                out.append((holder, count - len(holder.tasks)))
        return out

    async def hand_over(self, holder: H, tasks: Sequence[Task[bytes]]) -> None:
        """Give `tasks`, claimed for `holder`, to its stream; released if it closed meanwhile."""
        if not self.give(holder, tasks):  # the worker stopped polling while we claimed
            await self.release(tasks)

    def start(self, holder: H | None, tasks: Sequence[Task[bytes]]) -> int | None:
        """Start `tasks`, claimed for `holder`'s worker, at once as far as it has free slots
        (`WorkerContext.start`), and give the rest to its stream as `give` does: how many went to
        the stream (0: every one started, and the stream was not woken), or None when it has
        closed (nothing started: the caller releases them).

        For a task handed over as its message is read: its run starts in that callback, without
        the poll stream's wake-up and the async generators between the stream and the worker
        (a loop turn; on Redis a fifth of a lone task's instructions in its worker, bench/README.md,
        "Redis, session 12"). Tasks already held for the worker stay ahead of it: then it waits
        behind them in the stream.
        """
        if holder is None or not holder.open:
            return None
        started = 0
        if not holder.tasks:
            start = holder.start
            for task in tasks:
                if not start(task):
                    break
                started += 1
        if started < len(tasks):
            self.give(holder, tasks[started:])
        return len(tasks) - started

    def give(self, holder: H | None, tasks: Sequence[Task[bytes]]) -> bool:
        """Give `tasks`, claimed for `holder`, to its stream, at once; False (nothing given) when
        it has closed: then they are the caller's to release."""
        if holder is None or not holder.open:
            return False
        holder.tasks.extend(tasks)
        holder.waker.notify()  # a poller idling with free slots takes them at once
        return True


def _refuse(task: Task[bytes]) -> bool:
    """No worker starts tasks here (a stream not polling yet): they go through the stream."""
    return False
