"""The in-memory backend (`kind = "memory"`): the full contract, nothing kept past the process.

It keeps the same semantics as the durable stores (leases by worker heartbeat, orphan recovery,
persisted retries, idempotency, retention, and the control plane: cancel, pause, wait, bulk) so
the unit tests and the conformance suite exercise the core against it; it is the reference a
store's control plane is written against (see `apalis_cli.control`). Ready tasks wait in a heap
per limit key by (priority, run_at), read in that order across keys (`apalis_cli.memory_ready`);
scheduled ones in a heap by run_at, promoted when due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from .backend import (
    Capabilities,
    Capability,
    NewTask,
    QueueStats,
    StoreSpec,
    WorkerContext,
    WorkerInfo,
)
from .browsing import FAILED_FOR_GOOD, MinuteCounts, PageCursor, QueueActivity, TaskSearch, previewed
from .codec import Codec
from .contact import Contact
from .control import DEFAULT_CANCEL_REASON, DEFAULT_KILL_REASON, BulkAction, BulkFilter, CancelResult, bulk_reason
from .errors import ConfigError
from .fleet.claim import KeyedClaims, claim_round
from .fleet.unique import Unique
from .memory_ready import Entry, ReadyTasks
from .polling import Waker, beat_every, poll_batches
from .queue_base import QueueBase
from .redact import redact_url
from .service import Outcome, OutcomeKind
from .storable import encode_result
from .task import Status, Task, TaskContext, TaskId

__all__ = ["MemoryQueue", "MemoryStore"]

_CAPABILITIES = Capabilities(
    {
        Capability.RECONNECT: "memory has no connection: its tasks live in this process",
        Capability.CLAIMS_AHEAD: "memory claims without a round trip: an ack has none to save",
    },
    offers=frozenset({Capability.FLEET_LIMITS, Capability.UNIQUE}),
)


@dataclass(slots=True, kw_only=True)
class _Row:
    id: TaskId
    payload: bytes
    status: Status
    attempts: int
    max_attempts: int
    run_at: float
    priority: int
    idempotency_key: str | None
    meta: dict[str, Any]
    created_at: float
    limit_key: str | None = None
    unique_key: str | None = None
    unique_until: float | None = None
    lock_by: str | None = None
    last_error: str | None = None
    result: str | None = None
    done_at: float | None = None
    cancel_reason: str | None = None  # a cancel requested while it runs
    seq: int = -1  # the push sequence of its one live heap entry (the others are stale)

    def task(self, queue: str) -> Task[bytes]:
        return Task(
            id=self.id,
            args=self.payload,
            ctx=TaskContext(
                queue=queue,
                status=self.status,
                attempts=self.attempts,
                max_attempts=self.max_attempts,
                run_at=self.run_at,
                priority=self.priority,
                idempotency_key=self.idempotency_key,
                meta=self.meta,
                lock_by=self.lock_by,
                last_error=self.last_error,
                result=self.result,
                created_at=self.created_at,
                done_at=self.done_at,
            ),
        )


_WAITING = (Status.PENDING, Status.FAILED)
_FORGET_EVERY = 256
"""Limited claims between two sweeps of the rate states gone by."""


@dataclass(slots=True)
class _QueueState:
    rows: dict[TaskId, _Row] = field(default_factory=dict)
    ready: ReadyTasks[_Row] = field(init=False)
    scheduled: list[tuple[float, int, TaskId]] = field(default_factory=list)
    keys: dict[str, TaskId] = field(default_factory=dict)
    workers: dict[str, WorkerInfo] = field(default_factory=dict)
    waker: Waker = field(default_factory=Waker)
    contact: Contact = field(default_factory=Contact)  # a stall of the process holds the sweep
    contexts: dict[str, WorkerContext] = field(default_factory=dict)  # how to tell a worker of a cancel
    paused: bool = False
    waiting: dict[TaskId, list[asyncio.Future[Task[bytes]]]] = field(default_factory=dict)
    unique: dict[str, list[TaskId]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    running: dict[str | None, int] = field(default_factory=dict)  # running tasks by limit key
    running_rows: dict[TaskId, _Row] = field(default_factory=dict)  # what the orphan sweep reads
    ended: deque[tuple[float, TaskId]] = field(default_factory=deque)  # by done_at: the purge's
    limited_claims: int = 0

    def __post_init__(self) -> None:
        self.ready = ReadyTasks(self.live)

    def live(self, entry: Entry) -> _Row | None:
        """The waiting task `entry` stands for, unless it moved on since it was queued."""
        row = self.rows.get(entry[3])
        return row if row is not None and row.seq == entry[2] and row.status in _WAITING else None


class MemoryStore:
    """Queues in this process's memory; one store per `[backends.NAME]` of kind memory."""

    kind: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = _CAPABILITIES

    def __init__(self) -> None:
        self._queues: dict[str, _QueueState] = {}
        self._seq = itertools.count()

    @classmethod
    def from_spec(cls, spec: StoreSpec) -> MemoryStore:
        """A memory store; it takes no options and any `memory://` URL."""
        if spec.url and not spec.url.startswith("memory://"):
            raise ConfigError(f'expected a "memory://" URL, got "{redact_url(spec.url)}"', key="url")
        if spec.options:
            raise ConfigError("unknown key", key=next(iter(spec.options)))
        return cls()

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release."""

    def backend(self, queue: str, *, codec: Codec, max_attempts: int = 1) -> MemoryQueue:
        """The queue-bound backend."""
        state = self._queues.setdefault(queue, _QueueState())
        return MemoryQueue(self, state, queue, codec=codec, max_attempts=max_attempts)

    def next_seq(self) -> int:
        """A tie-breaker that keeps FIFO order among equal priorities and times."""
        return next(self._seq)


class MemoryQueue(QueueBase):
    """One queue of a `MemoryStore`."""

    capabilities = _CAPABILITIES

    def __init__(self, store: MemoryStore, state: _QueueState, queue: str, *, codec: Codec, max_attempts: int) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self._store = store
        self._state = state

    # -- the store's primitives ------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Insert tasks; a known idempotency key returns the existing task's id."""
        state, now, ids = self._state, time.time(), []
        for new in tasks:
            if new.idempotency_key is not None and new.idempotency_key in state.keys:
                ids.append(state.keys[new.idempotency_key])
                continue
            if new.unique is not None:
                duplicate = self._duplicate(new.unique, now)
                if duplicate is not None:
                    self._on_duplicate(duplicate, new)
                    ids.append(duplicate.id)
                    continue
            row = _Row(
                id=new.id,
                payload=new.payload,
                status=Status.PENDING,
                attempts=0,
                max_attempts=new.max_attempts,
                run_at=new.run_at,
                priority=new.priority,
                idempotency_key=new.idempotency_key,
                meta=dict(new.meta),
                created_at=now,
                limit_key=new.limit_key,
                unique_key=None if new.unique is None else new.unique.key,
                unique_until=None if new.unique is None else new.unique.until,
            )
            state.rows[row.id] = row
            if row.idempotency_key is not None:
                state.keys[row.idempotency_key] = row.id
            if row.unique_key is not None:
                state.unique.setdefault(row.unique_key, []).append(row.id)
            self._schedule(row)
            ids.append(row.id)
        state.waker.notify()
        return ids

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Ready tasks, claimed for `worker` in batches of its free slots."""

        claims = None if worker.limits is None else KeyedClaims(worker.limits)

        async def fetch(limit: int) -> list[Task[bytes]]:
            if claims is not None:
                return [row.task(self.queue) for row in self._claim_limited(worker.id, limit, claims)]
            return [row.task(self.queue) for row in self._claim(worker.id, limit)]

        async def release(tasks: Sequence[Task[bytes]]) -> None:
            await self.ack_batch([(task, Outcome.release()) for task in tasks])

        return poll_batches(worker, fetch, release, self._state.waker)

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Register and refresh `worker`, recover orphans (not after a stall of this process:
        `apalis_cli.contact`) and purge expired tasks."""

        async def beat() -> None:
            now = time.time()
            self._state.workers[worker.id] = WorkerInfo(
                id=worker.id,
                name=worker.name,
                queue=self.queue,
                host=worker.host,
                pid=worker.pid,
                started_at=worker.started_at,
                last_seen=now,
                layers=worker.layers,
                running=len(worker.running()),
            )
            self._state.contexts[worker.id] = worker
            worker.on_paused(self._state.paused)
            for task_id in list(worker.running()):  # cancels requested of its runs, told again
                row = self._state.rows.get(task_id)
                if row is not None and row.cancel_reason is not None and row.lock_by == worker.id:
                    worker.on_cancel(task_id, row.cancel_reason)
            if self._state.contact.may_sweep(worker.id, worker.stale_after):
                self._recover_orphans(now - worker.stale_after)
            self._purge_final(now - worker.retention)

        async def farewell() -> None:
            self._state.workers.pop(worker.id, None)
            self._state.contexts.pop(worker.id, None)

        return beat_every(worker, beat, farewell, self._state.contact)

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Apply outcomes to the tasks still locked by the worker that ran them."""
        now = time.time()
        for task, outcome in items:
            row = self._state.rows.get(task.id)
            if row is None or row.status is not Status.RUNNING or row.lock_by != task.ctx.lock_by:
                continue  # the lease was lost (orphan sweep, operator kill): not ours to write
            self._settle(row, outcome, now)

    # -- Inspector -------------------------------------------------------------------------

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Tasks of the queue, by run_at."""
        rows = sorted(
            (r for r in self._state.rows.values() if status is None or r.status is status),
            key=lambda r: (r.run_at, r.id),
        )
        return [r.task(self.queue) for r in rows[offset : offset + limit]]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id."""
        row = self._state.rows.get(task_id)
        return row.task(self.queue) if row else None

    async def stats(self) -> QueueStats:
        """Counts per status."""
        counts, scheduled, now = dict.fromkeys(Status, 0), 0, time.time()
        for row in self._state.rows.values():
            counts[row.status] += 1
            if row.status in (Status.PENDING, Status.FAILED) and row.run_at > now:
                scheduled += 1
        return QueueStats(queue=self.queue, counts=dict(counts), scheduled=scheduled)

    async def workers(self) -> list[WorkerInfo]:
        """Registered workers of this queue."""
        return sorted(self._state.workers.values(), key=lambda w: w.started_at)

    async def retry(self, task_id: TaskId) -> bool:
        """A failed or killed task runs again now with a fresh count of attempts."""
        row = self._state.rows.get(task_id)
        if row is None or row.status not in (Status.FAILED, Status.KILLED, Status.CANCELLED):
            return False
        self._retry(row)
        self._state.waker.notify()
        return True

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """Kill a task that has not finished."""
        row = self._state.rows.get(task_id)
        if row is None or row.status.is_final:
            return False
        self._end(row, Status.KILLED, reason, time.time())
        return True

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete tasks of `status` older than `older_than` seconds."""
        cutoff = time.time() - (older_than or 0.0)
        doomed = [r for r in self._state.rows.values() if r.status is status and (r.done_at or r.created_at) <= cutoff]
        for row in doomed:
            self._forget(row)
        return len(doomed)

    # -- the control plane (apalis_cli.control) ---------------------------------------------

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """Cancel a task: at once if it waits, by telling its worker if it runs."""
        row = self._state.rows.get(task_id)
        if row is None:
            return CancelResult.not_found()
        if row.status.is_final:
            return CancelResult.already_final(row.status)
        self._cancel(row, reason)
        return CancelResult.requested() if row.status is Status.RUNNING else CancelResult.cancelled()

    async def pause(self) -> None:
        """Claims hand out nothing until `resume`."""
        self._state.paused = True
        self._tell_paused()

    async def resume(self) -> None:
        """Claims hand out tasks again; waiting pollers are woken."""
        self._state.paused = False
        self._tell_paused()
        self._state.waker.notify()

    async def paused(self) -> bool:
        """True while the queue is paused."""
        return self._state.paused

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once it is final; None after `timeout` seconds or for an unknown id."""
        row = self._state.rows.get(task_id)
        if row is None:
            return None
        if row.status.is_final:
            return row.task(self.queue)
        future: asyncio.Future[Task[bytes]] = asyncio.get_running_loop().create_future()
        waiting = self._state.waiting.setdefault(task_id, [])
        waiting.append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._state.waiting.pop(task_id, None)

    async def bulk(
        self, action: BulkAction, where: BulkFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> int:
        """Apply `action` to every task `where` matches (at most `where.limit`, oldest first)."""
        kept = bulk_reason(action, reason)
        rows = [r for r in self._state.rows.values() if where.matches(r.task(self.queue), action)]
        if where.limit is not None:
            rows = sorted(rows, key=lambda r: (r.done_at if r.done_at is not None else r.created_at, r.id))
            rows = rows[: where.limit]
        if dry_run:
            return len(rows)
        now = time.time()
        for row in rows:
            if action is BulkAction.RETRY:
                self._retry(row)
            elif action is BulkAction.CANCEL:
                self._cancel(row, kept)
            elif action is BulkAction.KILL:
                self._end(row, Status.KILLED, kept, now)
            else:
                self._forget(row)
        if rows and action is BulkAction.RETRY:
            self._state.waker.notify()
        return len(rows)

    # -- TaskBrowser and ActivitySource ----------------------------------------------------

    async def browse(
        self,
        where: TaskSearch,
        *,
        after: PageCursor | None = None,
        limit: int = 50,
        newest_first: bool = False,
        preview: int | None = None,
    ) -> list[Task[bytes]]:
        """Tasks matching `where`, by (run_at, id), strictly past `after`."""
        every = [r.task(self.queue) for r in self._state.rows.values()]
        tasks = where.select(every)
        if tasks and where.text and where.exactly(tasks[0]):
            return (
                []
                if after is not None
                else sorted(tasks, key=lambda t: (t.ctx.run_at, t.id), reverse=newest_first)[:limit]
            )
        if after is not None:
            key = (after.run_at, after.id)
            tasks = [t for t in tasks if ((t.ctx.run_at, t.id) < key if newest_first else (t.ctx.run_at, t.id) > key)]
        tasks.sort(key=lambda t: (t.ctx.run_at, t.id), reverse=newest_first)
        page = tasks[:limit]
        return [previewed(t, preview) for t in page]

    async def activity(self, since: float) -> QueueActivity:
        """The oldest ready task's run_at and the tasks finished per minute since `since`."""
        now = time.time()
        waiting = [r.run_at for r in self._state.rows.values() if r.status in (Status.PENDING, Status.FAILED)]
        oldest = min(waiting, default=None)
        per_minute: dict[int, MinuteCounts] = {}
        for row in self._state.rows.values():
            if row.done_at is None or row.done_at < since:
                continue
            minute = int(row.done_at // 60)
            counts = per_minute.get(minute, MinuteCounts())
            if row.status is Status.DONE:
                per_minute[minute] = MinuteCounts(counts.done + 1, counts.failed)
            elif row.status in FAILED_FOR_GOOD:
                per_minute[minute] = MinuteCounts(counts.done, counts.failed + 1)
        return QueueActivity(
            oldest_ready_at=oldest if oldest is not None and oldest <= now else None, per_minute=per_minute
        )

    # -- internals -------------------------------------------------------------------------

    def _schedule(self, row: _Row) -> None:
        seq = row.seq = self._store.next_seq()
        if row.run_at <= time.time():
            self._state.ready.push(row.limit_key, (-row.priority, row.run_at, seq, row.id))
        else:
            heapq.heappush(self._state.scheduled, (row.run_at, seq, row.id))

    def _promote(self, now: float) -> None:
        """The scheduled tasks that fell due join the ready ones."""
        state = self._state
        while state.scheduled and state.scheduled[0][0] <= now:
            run_at, seq, task_id = heapq.heappop(state.scheduled)
            row = state.rows.get(task_id)
            if row is not None and row.seq == seq and row.status in _WAITING:
                state.ready.push(row.limit_key, (-row.priority, run_at, seq, task_id))

    def _start(self, row: _Row, worker_id: str) -> None:
        row.status, row.lock_by = Status.RUNNING, worker_id
        row.attempts += 1
        running = self._state.running
        running[row.limit_key] = running.get(row.limit_key, 0) + 1
        self._state.running_rows[row.id] = row

    def _stopping(self, row: _Row) -> None:
        """`row` leaves the running state (if it is in it): its key's slot comes back."""
        if row.status is Status.RUNNING:
            del self._state.running_rows[row.id]
            running = self._state.running
            left = running.pop(row.limit_key, 0) - 1
            if left > 0:
                running[row.limit_key] = left

    def _take(self, worker_id: str, limit: int, first: Callable[[], _Row | None]) -> list[_Row]:
        """Up to `limit` tasks, each `first()`, started for `worker_id`."""
        taken: list[_Row] = []
        while len(taken) < limit:
            row = first()
            if row is None:
                break
            self._start(row, worker_id)
            taken.append(row)
        return taken

    def _claim(self, worker_id: str, limit: int) -> list[_Row]:
        if self._state.paused:
            return []
        self._promote(time.time())
        return self._take(worker_id, limit, self._state.ready.first)

    def _claim_limited(self, worker_id: str, limit: int, claims: KeyedClaims) -> list[_Row]:
        """Claim within `claims.limits` (`apalis_cli.fleet.claim`): keys take turns, each up to
        its limits, its first task each turn; without a keyed limit, in the queue's order."""
        state, now, limits = self._state, time.time(), claims.limits
        if state.paused:
            return []
        self._promote(now)
        ready, claimed = state.ready, []

        def take_heads(keys: Sequence[str]) -> dict[str, int]:
            got: dict[str, int] = {}
            for key in keys:
                row = ready.first_of(key)
                if row is not None:
                    self._start(row, worker_id)
                    claimed.append(row)
                got[key] = int(row is not None)
            return got

        def take(key: str | None, n: int) -> int:
            # Without a keyed limit, the queue's order; with one, the tasks pushed without a key.
            first: Callable[[], _Row | None] = (
                ready.first if key is None and not limits.keyed else partial(ready.first_of, key)
            )
            rows = self._take(worker_id, n, first)
            claimed.extend(rows)
            return len(rows)

        done = claim_round(
            limits,
            limit,
            now,
            running=dict(state.running),
            rates=state.rates,
            keys_after=ready.keys_after,
            take_heads=take_heads,
            take=take,
            after=claims.after,
        )
        state.rates.update(done.rates)
        claims.claimed(done)
        state.limited_claims += 1
        if state.limited_claims % _FORGET_EVERY == 0:
            # A state gone by is a full burst, the same as none: keys used once leave nothing.
            state.rates = {name: tat for name, tat in state.rates.items() if tat > now}
        return claimed

    def _duplicate(self, unique: Unique, now: float) -> _Row | None:
        """The newest task holding `unique.key` in one of its states, within its window."""
        for task_id in reversed(self._state.unique.get(unique.key, [])):
            row = self._state.rows.get(task_id)
            if row is not None and row.status in unique.states and (row.unique_until is None or row.unique_until > now):
                return row
        return None

    def _on_duplicate(self, row: _Row, new: NewTask) -> None:
        assert new.unique is not None
        if new.unique.on_conflict == "extend":
            row.unique_until = new.unique.until
        elif new.unique.on_conflict == "replace" and row.status is Status.PENDING:
            row.payload, row.priority, row.max_attempts = new.payload, new.priority, new.max_attempts
            row.meta, row.limit_key, row.run_at = dict(new.meta), new.limit_key, new.run_at
            self._schedule(row)

    def _settle(self, row: _Row, outcome: Outcome, now: float) -> None:
        kind = outcome.kind
        if row.cancel_reason is not None and kind in (OutcomeKind.RELEASE, OutcomeKind.RETRY):
            # Cancelled while it ran, and back without its run's end: cancelled, never again.
            self._end(row, Status.CANCELLED, row.cancel_reason, now)
            return
        if kind is OutcomeKind.DONE:
            row.result = encode_result(outcome.result)
            self._end(row, Status.DONE, row.last_error, now)
            return
        if kind is OutcomeKind.KILL:
            self._end(row, Status.KILLED, outcome.error, now)
            return
        if kind is OutcomeKind.CANCEL:
            self._end(row, Status.CANCELLED, outcome.error, now)
            return
        self._stopping(row)
        row.lock_by = None
        if kind is OutcomeKind.RETRY:
            row.status, row.last_error = Status.FAILED, outcome.error
            row.run_at = outcome.run_at if outcome.run_at is not None else now
            self._schedule(row)
        else:
            row.status, row.attempts = Status.PENDING, max(row.attempts - 1, 0)
            row.run_at = min(row.run_at, now)
            self._schedule(row)
            self._state.waker.notify()

    def _end(self, row: _Row, status: Status, error: str | None, now: float) -> None:
        """`row` is final from now on; whoever waits for it is told."""
        self._stopping(row)
        row.status, row.last_error, row.lock_by, row.done_at, row.cancel_reason = status, error, None, now, None
        self._state.ended.append((now, row.id))
        waiting = self._state.waiting.pop(row.id, None)
        if waiting:
            task = row.task(self.queue)
            for future in waiting:
                if not future.done():
                    future.set_result(task)

    def _retry(self, row: _Row) -> None:
        self._stopping(row)
        row.status, row.attempts, row.run_at, row.done_at, row.cancel_reason = (
            Status.PENDING,
            0,
            time.time(),
            None,
            None,
        )
        self._schedule(row)

    def _cancel(self, row: _Row, reason: str) -> None:
        """Cancel a waiting task at once; for a running one, tell its worker."""
        if row.status is not Status.RUNNING:
            self._end(row, Status.CANCELLED, reason, time.time())
            return
        row.cancel_reason = reason
        worker = self._state.contexts.get(row.lock_by or "")
        if worker is not None:
            worker.on_cancel(row.id, reason)

    def _tell_paused(self) -> None:
        for worker in list(self._state.contexts.values()):
            worker.on_paused(self._state.paused)

    def _recover_orphans(self, stale_before: float) -> None:
        state = self._state
        alive = {w.id for w in state.workers.values() if w.last_seen >= stale_before}
        for worker_id in [w for w in state.workers if w not in alive]:
            del state.workers[worker_id]
            state.contexts.pop(worker_id, None)
        now, recovered = time.time(), False
        for row in list(state.running_rows.values()):
            if row.lock_by not in alive:
                error = f"worker {row.lock_by} stopped sending heartbeats while running this task"
                if row.cancel_reason is not None:
                    self._end(row, Status.CANCELLED, row.cancel_reason, now)
                elif row.attempts >= row.max_attempts:
                    self._settle(row, Outcome.kill(error), now)
                else:
                    self._settle(row, Outcome.retry(error, now), now)
                    recovered = True
        if recovered:
            state.waker.notify()

    def _purge_final(self, cutoff: float) -> None:
        """Forget the tasks that ended before `cutoff`, oldest first (not a read of every row at
        every heartbeat: a backlog of waiting tasks made each beat as slow as its size)."""
        state = self._state
        while state.ended and state.ended[0][0] < cutoff:
            done_at, task_id = state.ended.popleft()
            row = state.rows.get(task_id)
            if row is not None and row.status.is_final and row.done_at == done_at:
                self._forget(row)  # else it ran again since, or is gone already

    def _forget(self, row: _Row) -> None:
        self._stopping(row)
        del self._state.rows[row.id]
        if row.idempotency_key is not None and self._state.keys.get(row.idempotency_key) == row.id:
            del self._state.keys[row.idempotency_key]
        if row.unique_key is not None:
            holders = self._state.unique.get(row.unique_key, [])
            if row.id in holders:
                holders.remove(row.id)
            if not holders:
                self._state.unique.pop(row.unique_key, None)
