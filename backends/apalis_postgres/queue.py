"""`PostgresQueue`: one queue of a PostgreSQL store (worker primitives; the Inspector is `inspector`).

The statement that acknowledges a worker's runs also claims the tasks for the slots they free
(`apalis_cli.ahead`), so a busy worker waits for one round trip per batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from apalis_cli.ahead import ClaimsAhead, Fetch, Held
from apalis_cli.backend import NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.polling import Waker, beat_every
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task, TaskId
from apalis_sql import encode_meta, plan_acks, task_from_row

from .inspector import PostgresInspector

if TYPE_CHECKING:
    from .connection import Conn, Database

__all__ = ["PostgresQueue"]

_NOTIFY = b"SELECT pg_notify(%s, %s)"


class PostgresQueue(QueueBase, PostgresInspector):
    """One queue in a PostgreSQL schema."""

    def __init__(self, database: Database, queue: str, *, codec: Codec, max_attempts: int) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self._db = database
        self._ahead = ClaimsAhead(self.ack_batch, Held)

    # -- the store's primitives ------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Insert tasks in one statement (NOTIFY included); known keys give the existing ids."""
        if not tasks:
            return []
        db = self._db
        params: dict[str, Any] = {
            "queue": self.queue,
            "channel": db.channel,
            "commit": None if db.config.durable_push else "off",
            "ids": [t.id for t in tasks],
            "payloads": [t.payload for t in tasks],
            "run_ats": [t.run_at for t in tasks],
            "priorities": [t.priority for t in tasks],
            "max_attempts": [t.max_attempts for t in tasks],
            "keys": [t.idempotency_key for t in tasks],
            "metas": [encode_meta(t.meta) for t in tasks],
        }
        inserted = {row[0] for row in await db.fetch(db.sql["enqueue"], params)}
        db.waker(self.queue).notify()
        if len(inserted) == len(tasks):
            return [t.id for t in tasks]
        keys = [t.idempotency_key for t in tasks if t.id not in inserted and t.idempotency_key is not None]
        holders: dict[str, str] = {}
        if keys:
            rows = await db.fetch(db.sql["key_holders"], {"queue": self.queue, "keys": keys})
            holders = {key: task_id for key, task_id in rows}
        # A task skipped without a key was stored by an earlier try of this very push.
        return [
            t.id if t.id in inserted or t.idempotency_key is None else holders.get(t.idempotency_key, t.id)
            for t in tasks
        ]

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Ready tasks claimed in batches of free slots; woken by LISTEN/NOTIFY, else polling.

        Tasks claimed ahead by `ack_batch` (for the slots its outcomes free) come first, so a
        busy worker makes one round trip per batch, not two.
        """

        def start() -> tuple[Fetch, Waker]:
            db = self._db
            db.listen()
            claim, queue = db.sql["claim"], self.queue
            params: dict[str, Any] = {"queue": queue, "worker": worker.id, "limit": 1}

            async def fetch(limit: int) -> list[Task[bytes]]:
                params["limit"] = limit
                return _in_claim_order(await db.fetch(claim, params, binary=True))

            return fetch, db.waker(queue)

        return self._ahead.poll(worker, start)

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Register and refresh `worker`; release its lost claims; sweep orphans and purge
        expired tasks under an advisory lock, so one worker of the queue sweeps at a time, and
        only once this process has had the server reachable for `stale_after`
        (`apalis_cli.contact`)."""
        db, st = self._db, self._db.sql
        base = {"queue": self.queue, "channel": db.channel}

        async def beat_in(conn: Conn) -> bool:
            woke = False
            running = [*worker.running(), *self._ahead.held(worker.id)]  # held: not lost claims
            async with conn.transaction():
                await conn.execute(b"SET LOCAL synchronous_commit = off")  # a lost beat is redone
                await conn.execute(
                    st["beat"],
                    {
                        "id": worker.id,
                        "name": worker.name,
                        "queue": self.queue,
                        "host": worker.host,
                        "pid": worker.pid,
                        "started_at": worker.started_at,
                        "layers": json.dumps(list(worker.layers)),
                        "running": len(running),
                    },
                )
                released = await conn.execute(
                    st["release_lost"],
                    {**base, "worker": worker.id, "grace": worker.stale_after, "running": running},
                )
                woke = released.rowcount > 0
                # Asked at each try: a beat retried across an outage does not sweep right after it.
                if db.contact.steady_for(worker.stale_after):
                    locked = await (await conn.execute(st["sweep_lock"], {**base, "scope": db.channel})).fetchone()
                else:
                    locked = None
                if locked and locked[0]:
                    await conn.execute(st["forget_workers"], {**base, "stale_after": worker.stale_after})
                    recovered = await (
                        await conn.execute(st["recover"], {**base, "stale_after": worker.stale_after})
                    ).fetchall()
                    woke = woke or any(status == Status.FAILED.value for (status,) in recovered)
                    await conn.execute(st["purge_expired"], {**base, "retention": worker.retention})
                if woke:
                    await conn.execute(_NOTIFY, (db.channel, self.queue))
            return woke

        async def beat() -> None:
            if await db.run(beat_in):
                db.waker(self.queue).notify()

        async def farewell() -> None:
            await db.execute(st["farewell"], {"id": worker.id})

        return beat_every(worker, beat, farewell, db.contact)

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Apply a batch of outcomes in one statement (the server's clock stamps done_at).

        The same statement claims, for each polling worker whose runs ended here, up to as many
        new tasks as those runs free slots (see `apalis_cli.ahead`).
        """
        if not items:
            return
        db = self._db
        want = self._ahead.wanted(items)
        plan = plan_acks(items, time.time())
        ids: list[str] = []
        lock_bys: list[str | None] = []
        statuses: list[str] = []
        results: list[str | None] = []
        errors: list[str | None] = []
        run_ats: list[float | None] = []
        for status, rows in (("done", plan.done), ("failed", plan.retry), ("killed", plan.kill)):
            for value, at, task_id, lock_by in rows:
                ids.append(task_id)
                lock_bys.append(lock_by)
                statuses.append(status)
                results.append(value if status == "done" else None)
                errors.append(None if status == "done" else value)
                run_ats.append(at if status == "failed" else None)
        for _, task_id, lock_by in plan.release:
            ids.append(task_id)
            lock_bys.append(lock_by)
            statuses.append("pending")
            results.append(None)
            errors.append(None)
            run_ats.append(None)
        params = {
            "ids": ids,
            "lock_bys": lock_bys,
            "statuses": statuses,
            "results": results,
            "errors": errors,
            "run_ats": run_ats,
            "queue": self.queue,
            "slots": [holder.worker_id for holder, count in want for _ in range(count)],
            "wake": plan.wake,
            "channel": db.channel,
        }
        if want:
            claimed = _in_claim_order(await db.fetch(db.sql["ack"], params, binary=True))
        else:
            claimed = []
            await db.execute(db.sql["ack"], params)
        if plan.wake:  # released (or instantly retried) tasks are ready for this process's pollers too
            db.waker(self.queue).notify()
        for holder, _ in want:
            mine = [task for task in claimed if task.ctx.lock_by == holder.worker_id]
            if mine:
                await self._ahead.hand_over(holder, mine)


def _in_claim_order(rows: Sequence[Any]) -> list[Task[bytes]]:
    """Claimed rows as tasks, highest priority and oldest first (RETURNING keeps no order)."""
    tasks = [task_from_row(row) for row in rows]
    if len(tasks) > 1:
        tasks.sort(key=lambda t: (-t.ctx.priority, t.ctx.run_at, t.id))
    return tasks
