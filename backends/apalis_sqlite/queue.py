"""One queue of the SQLite store (`kind = "sqlite"`): push, claim, acknowledge, heartbeat.

One aiosqlite connection per store and process (`connection.Database`), WAL, STRICT tables, the
SQL in `sql/*.sql`. Every operation is one hop to the connection's thread and one short
transaction: a claim is a single `UPDATE ... RETURNING` of up to free-slots tasks, the outcomes
of one event-loop turn are one transaction of `executemany` per outcome kind, a bulk push is one
`executemany`. Several processes may share the file (daemons, `apalis push`): writers take turns
on SQLite's lock, waiting up to `busy_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from apalis_cli.ahead import ClaimsAhead, Fetch, Held
from apalis_cli.backend import Capabilities, Capability, NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.polling import Waker, beat_every
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome
from apalis_cli.task import Task, TaskId
from apalis_sql import Queries, insert_params, plan_acks, task_from_row, worker_params

from .bells import Bells
from .connection import Database
from .control import SqliteControl
from .inspector import SqliteInspector
from .limits import KeyedClaims, claim_limited, enqueue_keyed
from .signal import QueueSignal

__all__ = ["CAPABILITIES", "SqliteQueue"]

_PURGE_PER_BEAT = 10_000
_WRITE_NOW_MAX = 10  # tasks a push writes on the event loop itself (Database.write_now)
_YIELD_EVERY = 8  # such pushes between two turns of the loop (each takes about 30-60 µs)

CAPABILITIES = Capabilities(offers=frozenset({Capability.FLEET_LIMITS, Capability.UNIQUE}))


def _sort_key(task: Task[bytes]) -> tuple[int, float, str]:
    return (-task.ctx.priority, task.ctx.run_at, task.id)


def _tasks(rows: list[Any]) -> list[Task[bytes]]:
    tasks = [task_from_row(row) for row in rows]
    if len(tasks) > 1:
        tasks.sort(key=_sort_key)  # RETURNING order is not the claim order
    return tasks


class SqliteQueue(SqliteInspector, SqliteControl, QueueBase):
    """One queue of a `SqliteStore`, built from its connection (not the store): push, claim,
    acknowledge, heartbeat, inspect, and the control plane (cancel, pause, wait, bulk)."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        db: Database,
        queries: Queries,
        signal: QueueSignal,
        bells: Bells,
        watch: Callable[[], None],
        queue: str,
        *,
        codec: Codec,
        max_attempts: int,
    ) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self._db = db
        self._q = queries
        self._signal = signal
        self._bells = bells
        self._watch = watch  # the store's: starts waking this process on other processes' writes
        self._ahead = ClaimsAhead(self.ack_batch, Held)
        self._limited: dict[str, KeyedClaims] = {}  # by worker id: those with global limits
        self._written_now = 0

    # -- push --------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Insert `tasks` in one transaction; a known idempotency key gives the existing id."""
        if not tasks:
            return []
        now = time.time()
        keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
        q, queue = self._q, self.queue
        # Tasks with a limit key or a unique key take their own path (`limits.py`).
        keyed = any(t.limit_key is not None or t.unique is not None for t in tasks)
        params = None if keyed else insert_params(queue, tasks, now)

        def work(conn: sqlite3.Connection) -> tuple[list[TaskId] | None, dict[str, str]]:
            ids = enqueue_keyed(conn, q, queue, tasks, now) if params is None else None
            if params is not None:
                conn.executemany(q.insert, params)
            if not keys:
                return ids, {}
            return ids, dict(conn.execute(q.ids_by_key, {"queue": queue, "keys": json.dumps(keys)}).fetchall())

        small = len(tasks) <= _WRITE_NOW_MAX
        if small and self._db.holding:
            await self._db.held()  # a checkpoint starts the WAL afresh: written right after it
        done, result = self._db.write_now(work) if small else (False, None)
        if done and result is not None:
            ids, owners = result
            self._written_now += 1
            if self._written_now % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a loop of pushes lets the loop run now and then
        else:
            ids, owners = await self._db.write(work)
        self._signal.notify_at([min(t.run_at for t in tasks)] if len(tasks) > 1 else [tasks[0].run_at])
        answered = ids if ids is not None else [t.id for t in tasks]
        if not owners:
            return answered
        return [
            owners.get(t.idempotency_key, i) if t.idempotency_key is not None else i
            for t, i in zip(tasks, answered, strict=True)
        ]

    # -- poll --------------------------------------------------------------------------------

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Ready tasks, claimed for `worker` in batches of its free slots (one statement each).

        Tasks claimed ahead by `ack_batch` (for the slots its outcomes free) come first, so a
        busy worker makes one round trip per batch, not two.
        """

        def start() -> tuple[Fetch, Waker]:
            self._watch()
            claim, worker_id, any_ready, queue = self._claim, worker.id, self._q.any_ready, self.queue

            def ready(conn: sqlite3.Connection) -> bool:
                rows = conn.execute(any_ready, {"queue": queue, "now": time.time()}).fetchall()
                return bool(rows[0][0])

            if worker.limits is not None:
                self._limited[worker_id] = KeyedClaims(worker.limits)

            async def fetch(limit: int) -> list[Task[bytes]]:
                # Most claims of a lone task's worker find nothing (its own acknowledgement's
                # write wakes it, so does its idle timer): asked on the loop first, they cost
                # neither the hop to the connection's thread nor the write lock, which a push
                # arriving then would wait for (a millisecond at least: SQLite's busy handler
                # sleeps in whole milliseconds). A limited worker's claim reads more than that.
                if worker_id not in self._limited:
                    asked, anything = self._db.read_now(ready)
                    if asked and not anything:
                        return []
                rows = await self._db.write(lambda conn: claim(conn, worker_id, limit, time.time()))
                self._wake_for_limits(worker_id)
                return _tasks(rows)

            return fetch, self._signal.waker

        return self._ahead.poll(worker, start)

    def _claim(self, conn: sqlite3.Connection, worker_id: str, limit: int, now: float) -> list[Any]:
        limited = self._limited.get(worker_id)
        if limited is not None:
            return claim_limited(conn, self._q, self.queue, worker_id, limit, now, limited)
        params = {"queue": self.queue, "worker": worker_id, "now": now, "limit": limit}
        return conn.execute(self._q.claim, params).fetchall()

    def _wake_for_limits(self, worker_id: str) -> None:
        """Poll again when a rate lets the next start through, not a whole idle wait later."""
        limited = self._limited.get(worker_id)
        if limited is not None and limited.wake_at is not None:
            self._signal.notify_at([limited.wake_at])
            limited.wake_at = None

    # -- acknowledge -------------------------------------------------------------------------

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Apply outcomes in one transaction, only to tasks still running under the same lock.

        In the same transaction, each polling worker whose runs ended here gets up to as many
        new tasks claimed as those runs free slots (never more: backpressure holds).
        """
        now = time.time()
        plan = plan_acks(items, now)
        if not plan:
            return
        q, claim = self._q, self._claim
        wanted = self._ahead.wanted(items)

        def work(conn: sqlite3.Connection) -> list[list[Any]]:
            if plan.done:
                conn.executemany(q.ack_done, plan.done)
            if plan.retry:
                conn.executemany(q.ack_retry, plan.retry)
            if plan.kill:
                conn.executemany(q.ack_kill, plan.kill)
            if plan.cancel:
                conn.executemany(q.ack_cancel, plan.cancel)
            if plan.release:
                conn.executemany(q.ack_release, plan.release)
            return [claim(conn, ahead.worker_id, count, now) for ahead, count in wanted]

        claimed = await self._db.write(work)
        if plan.done or plan.kill or plan.cancel or plan.retry or plan.release:
            # A retry or a release ends a run whose cancel was requested as cancelled.
            self._bells.ended()
        if plan.retry:
            self._signal.notify_at([min(row[1] for row in plan.retry)])
        if plan.wake:
            self._signal.notify()
        for (ahead, _), rows in zip(wanted, claimed, strict=True):
            self._wake_for_limits(ahead.worker_id)
            if rows:
                await self._ahead.hand_over(ahead, _tasks(rows))

    # -- heartbeat ---------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Register `worker`, recover orphans (once this process has had the database steady,
        and been awake itself, for `stale_after`: `apalis_cli.contact`), release lost claims, purge expired tasks, and
        tell the worker again of the cancels requested of its runs and whether the queue is
        paused (the doorbell tells it of a cancel sooner; this is the floor)."""
        q, queue, contact = self._q, self.queue, self._db.contact
        row = worker_params(worker, queue)
        self._bells.register(worker)

        def beat_work(conn: sqlite3.Connection, now: float, running: list[str]) -> tuple[int, list[Any], bool]:
            conn.execute(q.beat, {**row, "now": now, "running": len(running)})
            moved = 0
            # Asked at each try: a beat that waited out a busy or broken database does not sweep
            # right after it (every other worker was held up as long).
            if contact.may_sweep(worker.id, worker.stale_after):
                stale_before = now - worker.stale_after
                conn.execute(q.forget_stale_workers, {"queue": queue, "stale_before": stale_before})
                moved = conn.execute(
                    q.recover_orphans, {"queue": queue, "now": now, "stale_before": stale_before}
                ).rowcount
            moved += conn.execute(
                q.release_unowned,
                {
                    "queue": queue,
                    "id": worker.id,
                    "now": now,
                    "locked_before": now - worker.keep_alive,
                    "running": json.dumps(running),
                },
            ).rowcount
            conn.execute(q.purge_expired, {"queue": queue, "cutoff": now - worker.retention, "limit": _PURGE_PER_BEAT})
            cancels = conn.execute(q.cancels_of_worker, {"queue": queue, "id": worker.id}).fetchall()
            paused = conn.execute(q.is_paused, {"queue": queue}).fetchone()
            return moved, cancels, bool(paused and paused[0])

        async def beat() -> None:
            now = time.time()
            running = [*worker.running(), *self._ahead.held(worker.id)]  # held: not lost claims
            moved, cancels, paused = await self._db.write(lambda conn: beat_work(conn, now, running))
            if moved:
                self._signal.notify()
                self._bells.ended()  # a recovered run whose cancel was requested ended cancelled
            for task_id, reason in cancels:
                worker.on_cancel(task_id, reason)
            worker.on_paused(paused)

        async def farewell() -> None:
            self._bells.forget(worker.id)
            await self._db.write(lambda conn: conn.execute(q.farewell, {"id": worker.id}).rowcount)

        return beat_every(worker, beat, farewell, contact)
