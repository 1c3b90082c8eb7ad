"""`MysqlQueue`: one queue of a MySQL/MariaDB store (worker primitives; the Inspector is `inspector`).

MariaDB has no `UPDATE ... RETURNING`, so a claim is one short transaction: `SELECT ... FOR
UPDATE SKIP LOCKED` then `UPDATE` of those ids; the tasks handed out are the selected rows with
the claim applied. A batch of acknowledgements claims, in its own transaction, the tasks for the
slots it frees (`claims`), so a busy worker waits for one commit per batch. Wake-ups: a push in
this process wakes its pollers at once; pushes from other processes are found by polling with
backoff capped at `poll_interval`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from apalis_cli.ahead import ClaimsAhead, Fetch
from apalis_cli.backend import NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.polling import Waker, beat_every
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome
from apalis_cli.task import Task, TaskId
from apalis_sql import encode_meta, plan_acks

from .acks import ack_statements
from .claims import Backlog, transact
from .connection import NOW
from .inspector import MysqlInspector

if TYPE_CHECKING:
    from .connection import Conn, Database

__all__ = ["MysqlQueue"]

_INSERT_ROW = f"(%s, %s, %s, 'pending', 0, %s, %s, %s, %s, %s, {NOW})"
_CHUNK_BYTES = 4 * 1024 * 1024  # stay well under the server's default max_allowed_packet (16 MiB)


def _marks(n: int) -> str:
    return ", ".join(["%s"] * n)


class MysqlQueue(QueueBase, MysqlInspector):
    """One queue in a MySQL/MariaDB database."""

    def __init__(self, database: Database, queue: str, *, codec: Codec, max_attempts: int) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self._db = database
        self._ahead = ClaimsAhead(self.ack_batch, Backlog)

    # -- the store's primitives ------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Insert tasks, many rows per statement; known keys give the existing ids."""
        db, queue = self._db, self.queue
        inserted = 0
        for chunk in _chunks(tasks):
            args: list[Any] = []
            for t in chunk:
                args += (t.id, queue, t.payload, t.max_attempts, t.run_at, t.priority, t.idempotency_key)
                args.append(encode_meta(t.meta))
            query = db.sql["insert"].replace("{rows}", ", ".join([_INSERT_ROW] * len(chunk)))
            # Affected rows count inserts only (asyncmy sets no CLIENT_FOUND_ROWS): a skipped
            # duplicate counts 0, so a shortfall means some id or key was already there.
            inserted += await db.execute(query, args)
        if tasks:
            db.waker(queue).notify()
        keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
        if inserted == len(tasks) or not keys:
            return [t.id for t in tasks]  # a task skipped without a key was stored by an earlier try
        rows = await db.fetch(db.sql["key_holders"].replace("{keys}", _marks(len(keys))), [queue, *keys])
        holders = {key: task_id for key, task_id in rows}
        return [holders.get(t.idempotency_key, t.id) if t.idempotency_key is not None else t.id for t in tasks]

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Ready tasks claimed in batches of free slots, one short transaction per batch.

        Tasks claimed ahead by `ack_batch` (for the slots its outcomes free) come first, so a
        busy worker commits once per batch, not twice.
        """

        def start() -> tuple[Fetch, Waker]:
            db, queue, worker_id = self._db, self.queue, worker.id

            async def fetch(limit: int) -> list[Task[bytes]]:
                _, (claimed,) = await db.run(lambda conn: transact(conn, db.sql, queue, (), [(worker_id, limit)]))
                holder = self._ahead.holder(worker_id)
                if holder is not None:
                    holder.backlog = len(claimed) == limit
                return claimed

            return fetch, db.waker(queue)

        return self._ahead.poll(worker, start)

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Register and refresh `worker`; release its lost claims; sweep orphans and purge
        expired tasks under a named lock (GET_LOCK), so one worker of the queue sweeps at a time,
        and only once this process has had the server reachable for `stale_after`
        (`apalis_cli.contact`)."""
        db, st, queue = self._db, self._db.sql, self.queue
        lock = (
            "apalis-sweep:"
            + hashlib.sha1(f"{db.config.database}:{db.config.table_prefix}:{queue}".encode()).hexdigest()
        )

        async def beat_in(conn: Conn) -> bool:
            running = [*worker.running(), *self._ahead.held(worker.id)]  # held: not lost claims
            cursor = conn.cursor()
            await cursor.execute(
                st["beat"],
                {
                    "id": worker.id,
                    "name": worker.name,
                    "queue": queue,
                    "host": worker.host,
                    "pid": worker.pid,
                    "started_at": worker.started_at,
                    "layers": json.dumps(list(worker.layers)),
                    "running": len(running),
                },
            )
            release = st["release_lost"].replace("{running}", _marks(len(running)) if running else "''")
            woke = bool(await cursor.execute(release, [queue, worker.id, worker.stale_after, *running]))
            # Asked at each try: a beat retried across an outage does not sweep right after it.
            if not db.contact.steady_for(worker.stale_after):
                return woke
            await cursor.execute(st["sweep_lock"], {"lock": lock})
            locked = await cursor.fetchone()
            if not (locked and locked[0] == 1):
                return woke
            # On an error the pool closes this connection, and the server frees the lock with it.
            await cursor.execute(st["forget_workers"], {"queue": queue, "stale_after": worker.stale_after})
            recovered = await cursor.execute(st["recover"], {"queue": queue, "stale_after": worker.stale_after})
            await cursor.execute(st["purge_expired"], {"queue": queue, "retention": worker.retention})
            await cursor.execute(st["sweep_unlock"], {"lock": lock})
            return woke or bool(recovered)

        async def beat() -> None:
            if await db.run(beat_in):
                db.waker(queue).notify()

        async def farewell() -> None:
            await db.execute(st["farewell"], {"id": worker.id})

        return beat_every(worker, beat, farewell, db.contact)

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Apply a batch of outcomes in one transaction (the server's clock stamps done_at).

        In the same transaction, each polling worker whose runs ended here gets up to as many
        new tasks claimed as those runs free slots (see `claims`).
        """
        if not items:
            return
        db, queue = self._db, self.queue
        plan = plan_acks(items, time.time())
        statements = ack_statements(db.sql, plan)
        want = [(holder, count) for holder, count in self._ahead.wanted(items) if holder.backlog]

        async def ack_in(conn: Conn) -> list[list[Task[bytes]]]:
            cursor = conn.cursor()
            if len(statements) == 1 and not want:
                await cursor.execute(*statements[0])
                return []
            bound = [cursor.mogrify(query, args) for query, args in statements]
            _, claimed = await transact(conn, db.sql, queue, bound, [(h.worker_id, n) for h, n in want])
            return claimed

        claimed = await db.run(ack_in)
        if plan.wake:
            db.waker(queue).notify()
        for (holder, count), tasks in zip(want, claimed, strict=True):
            holder.backlog = len(tasks) == count
            if tasks:
                await self._ahead.hand_over(holder, tasks)


def _chunks(tasks: Sequence[NewTask]) -> list[Sequence[NewTask]]:
    """Tasks cut into statements of at most about `_CHUNK_BYTES` of payload (usually one)."""
    out: list[Sequence[NewTask]] = []
    start, size = 0, 0
    for i, task in enumerate(tasks):
        size += len(task.payload) + 256
        if size > _CHUNK_BYTES and i > start:
            out.append(tasks[start:i])
            start, size = i, len(task.payload) + 256
    if start < len(tasks):
        out.append(tasks[start:])
    return out
