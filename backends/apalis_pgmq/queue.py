"""`PgmqQueue`: one pgmq queue as an apalis backend (claim, lease, acknowledge, push)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from apalis_cli.backend import Capabilities, Capability, NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.control import tell_cancel
from apalis_cli.fleet import FleetLimits, KeyedClaims
from apalis_cli.polling import beat_every, poll_batches
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task, TaskId
from apalis_sql.housekeeping import Housekeeping
from apalis_sql.limits import LimitedClaims

from .control import PgmqControl
from .inspector import PgmqInspector
from .limits import PgmqLimits
from .messages import encode_headers, encode_message, task_of
from .statements import statements_for
from .unique import PgmqUnique

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from .connection import Connection

__all__ = ["CAPABILITIES", "PgmqQueue"]

CAPABILITIES = Capabilities(
    {
        Capability.PRIORITY: "pgmq has no priorities: the claim, as pgmq.read, reads messages oldest first",
        Capability.OWNED_LEASES: (
            "a pgmq lease is the message's vt, with no owner: a claim whose reply was lost comes back "
            "when its vt ends and counts as a read, like a dead worker's"
        ),
        Capability.CLAIMS_AHEAD: "pgmq.delete/archive (the ack) and the read (the claim) are called apart",
    },
    offers=frozenset({Capability.FLEET_LIMITS, Capability.UNIQUE}),
)

EXHAUSTED = "its worker stopped extending its lease while running this task, and its attempts are exhausted"

Statement = tuple[str, dict[str, Any]]

MARK_ALL_EVERY = 600.0
"""Seconds between a process's sweeps of every lost message of a queue (limits.sql's `mark_lost`,
its first sweep too) among the sweeps since the last one (`limit_sweep`): `_tidy_beside`."""
T = TypeVar("T")


class PgmqQueue(QueueBase, PgmqInspector, PgmqControl, PgmqUnique):
    """One pgmq queue of a `PgmqStore`, on the store's connection."""

    capabilities = CAPABILITIES

    def __init__(self, connection: Connection, queue: str, *, codec: Codec, max_attempts: int) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self._connection = connection
        self._sql = statements_for(queue)
        self._as_json = codec.name == "json"
        self._waker = connection.waker(queue)
        self._limited = LimitedClaims(PgmqLimits(connection, self._sql, self._checked), queue, decode=self._claimed)
        self._tidying = Housekeeping("pgmq: purging after a heartbeat")  # `_tidy_beside`
        self._marked_all_at: float | None = None  # when the last sweep of every lost message began

    async def prepare(self) -> None:
        """`pgmq.create` the queue unless it exists (`apalis check`); a queue pgmq's own client
        made (logged or unlogged) is used as it is."""
        await self._connection.ensure_queue(self.queue)

    # -- running statements ----------------------------------------------------------------

    async def _rows(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        await self._connection.ensure_queue(self.queue)
        query = self._sql[name]
        params = {"queue": self.queue, **params}

        async def op(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []

        return await self._checked(op)

    async def _checked(self, op: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`op` through the connection; a queue dropped meanwhile (pgmq.drop_queue) is created again."""
        from psycopg.errors import UndefinedTable

        try:
            return await self._connection.run(op)
        except UndefinedTable:
            self._connection.forget_queue(self.queue)
            await self._connection.ensure_queue(self.queue)
            return await self._connection.run(op)

    async def _execute(self, statements: Sequence[Statement], *, atomic: bool = True) -> list[list[tuple[Any, ...]]]:
        """Run `statements` in one round trip (a pipeline), in one transaction when `atomic`;
        returns each statement's rows."""
        if not statements:
            return []
        await self._connection.ensure_queue(self.queue)
        sql = self._sql
        base = {"queue": self.queue}

        async def op(conn: AsyncConnection[Any]) -> list[list[tuple[Any, ...]]]:
            if len(statements) == 1:
                name, params = statements[0]
                cur = await conn.execute(sql[name], {**base, **params})
                return [await cur.fetchall() if cur.description else []]
            cursors = []
            async with conn.pipeline():
                if atomic:
                    async with conn.transaction():
                        for name, params in statements:
                            cursors.append(await conn.execute(sql[name], {**base, **params}))
                else:
                    for name, params in statements:
                        cursors.append(await conn.execute(sql[name], {**base, **params}))
            return [await cur.fetchall() if cur.description else [] for cur in cursors]

        return await self._checked(op)

    # -- push ------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Send the tasks as messages (`pgmq.send_batch`); a known idempotency key gives the id
        of the message first sent with it."""
        if not tasks:
            return []
        await self._connection.ensure_queue(self.queue)
        if any(task.unique is not None for task in tasks):
            return await self._enqueue_unique(tasks)
        if any(task.idempotency_key is not None for task in tasks):
            ids = await self._checked(lambda conn: self._send_keyed(conn, tasks))
        else:
            ids = await self._checked(lambda conn: self._send(conn, tasks))
        self._waker.notify()
        return [str(i) for i in ids]

    async def _enqueue_unique(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Tasks one at a time, in order: two of one unique key in a batch see each other."""
        ids: list[TaskId] = []
        for task in tasks:
            if task.unique is None:
                ids += await self.enqueue([task])
            else:
                ids.append((await self._push_unique(task))[0])
        self._waker.notify()
        return ids

    async def _send(self, conn: AsyncConnection[Any], tasks: Sequence[NewTask]) -> list[int]:
        now = time.time()
        groups: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            groups.setdefault("now" if task.run_at <= now else "later", []).append(index)
        encoded = [encode_message(task.payload, self._as_json) for task in tasks]
        headers = [encode_headers(task, enc, text) for task, (text, enc) in zip(tasks, encoded, strict=True)]
        plans: list[tuple[list[int], str, dict[str, Any]]] = []
        for group, indexes in groups.items():
            params: dict[str, Any] = {
                "queue": self.queue,
                "messages": "[" + ",".join([encoded[i][0] for i in indexes]) + "]",
                "headers": "[" + ",".join([headers[i] for i in indexes]) + "]",
            }
            if group == "now":
                plans.append((indexes, "send_now", params))
            elif len({tasks[i].run_at for i in indexes}) == 1:
                plans.append((indexes, "send_at", {**params, "at": tasks[indexes[0]].run_at}))
            else:
                plans.append((indexes, "send_each", {**params, "ats": [tasks[i].run_at for i in indexes]}))
        ids = [0] * len(tasks)
        cursors = []
        if len(plans) == 1:
            cursors.append(await conn.execute(self._sql[plans[0][1]], plans[0][2]))
        else:
            async with conn.pipeline():
                for _, name, params in plans:
                    cursors.append(await conn.execute(self._sql[name], params))
        for (indexes, name, _), cur in zip(plans, cursors, strict=True):
            got = [row[0] for row in await cur.fetchall()]
            if name != "send_each":
                got.sort()  # identities are drawn in insertion order
            for index, msg_id in zip(indexes, got, strict=True):
                ids[index] = msg_id
        return ids

    async def _send_keyed(self, conn: AsyncConnection[Any], tasks: Sequence[NewTask]) -> list[int]:
        sql = self._sql
        keys = list(dict.fromkeys(t.idempotency_key for t in tasks if t.idempotency_key is not None))
        async with conn.transaction():
            # A concurrent push of the same key waits here until ours commits, then sees it.
            cur = await conn.execute(sql["claim_keys"], {"queue": self.queue, "keys": keys})
            fresh = {row[0] for row in await cur.fetchall()}
            first: dict[str, int] = {}
            to_send: list[int] = []
            for index, task in enumerate(tasks):
                key = task.idempotency_key
                if key is None:
                    to_send.append(index)
                elif key in fresh and key not in first:
                    first[key] = index
                    to_send.append(index)
            sent = await self._send(conn, [tasks[i] for i in to_send]) if to_send else []
            by_index = dict(zip(to_send, sent, strict=True))
            by_key = {key: by_index[index] for key, index in first.items()}
            if by_key:
                await conn.execute(
                    sql["bind_keys"],
                    {"queue": self.queue, "keys": list(by_key), "ids": list(by_key.values())},
                )
            old = [key for key in keys if key not in fresh]
            if old:
                cur = await conn.execute(sql["known_keys"], {"queue": self.queue, "keys": old})
                by_key.update({row[0]: row[1] for row in await cur.fetchall()})
        return [by_index[i] if i in by_index else by_key[t.idempotency_key or ""] for i, t in enumerate(tasks)]

    # -- the worker's side -----------------------------------------------------------------

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Messages read as `pgmq.read` reads them (`read`) in batches of the worker's free slots,
        leased for `stale_after` (rounded up to whole seconds, as pgmq.read takes); a worker with global
        limits claims within them instead (`apalis_pgmq.limits`)."""
        lease = max(1, math.ceil(worker.stale_after))
        self._connection.listen(self.queue)
        limits = worker.limits
        claim_params = {"lease": lease}

        async def fetch(limit: int) -> list[Task[bytes]]:
            while True:
                if limits is None:
                    rows = await self._rows("read", {"lease": lease, "qty": limit, "worker": worker.id})
                    claimed = [self._claimed(row) for row in rows]
                else:
                    await self._connection.ensure_limits(self.queue, keyed=limits.keyed)
                    claimed = await self._limited.claim(worker.id, limit, claim_params)
                tasks: list[Task[bytes]] = []
                doomed: list[tuple[Task[bytes], Outcome]] = []
                for task in claimed:
                    if task.ctx.cancel_reason is not None:
                        # Cancelled while a worker ran it, and that run was lost: it never runs again.
                        doomed.append((task, Outcome.cancel(task.ctx.cancel_reason)))
                    elif task.ctx.attempts > task.ctx.max_attempts:
                        # Read once more than allowed: the previous reader died on its last attempt.
                        doomed.append((task, Outcome.kill(EXHAUSTED)))
                    else:
                        tasks.append(task)
                if doomed:
                    await self.ack_batch(doomed)
                if tasks or not claimed:
                    return tasks

        async def release(tasks: Sequence[Task[bytes]]) -> None:
            await self.ack_batch([(task, Outcome.release()) for task in tasks])

        stream = poll_batches(worker, fetch, release, self._waker)
        return stream if limits is None else self._limited_stream(worker.id, limits, stream)

    async def _limited_stream(
        self, worker_id: str, limits: FleetLimits, stream: AsyncIterator[Task[bytes] | None]
    ) -> AsyncIterator[Task[bytes] | None]:
        """`stream`, with the worker's limited claiming kept while it is read (its claims are
        made as it is read), and forgotten when it closes."""
        self._limited.workers[worker_id] = KeyedClaims(limits)
        try:
            async for task in stream:
                yield task
        finally:
            self._limited.forget(worker_id)
            await stream.aclose()  # type: ignore[attr-defined]

    def _claimed(self, row: Sequence[Any]) -> Task[bytes]:
        """The task of a message just read (`read` and the limited claim's statements:
        msg_id, read_ct, enqueued_at, message, its "apalis" headers, the reader's id); one whose
        cancel was requested in a run since lost is marked cancelled (it never runs again)."""
        msg_id, read_ct, enqueued_at, message, apalis, worker_id = row
        task = task_of(
            self.queue,
            msg_id,
            read_ct,
            message,
            apalis,
            status=Status.RUNNING,
            default_max_attempts=self.max_attempts,
            created_at=enqueued_at,
            run_at=enqueued_at,
            lock_by=worker_id,
        )
        cancel = apalis.get("cancel") if isinstance(apalis, dict) else None
        if isinstance(cancel, str):
            task.ctx.mark_cancelled(cancel)
        return task

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Extend the lease of every running task in one `pgmq.set_vt` (telling the worker again
        of the cancels requested of them), say whether the queue is paused, keep the worker row,
        and purge archived tasks older than `retention`."""
        lease = max(worker.stale_after, 1.0)
        layers = json.dumps(list(worker.layers))
        hub = self._connection.hub

        async def beat() -> None:
            hub.register(worker)
            self._connection.listen(self.queue)
            running = [int(task_id) for task_id in worker.running() if task_id.isdigit()]
            statements: list[Statement] = [("is_paused", {})]
            if running:
                statements.append(("extend", {"ids": running, "lease": lease}))
            worker_row = {
                "id": worker.id,
                "name": worker.name,
                "host": worker.host,
                "pid": worker.pid,
                "started_at": worker.started_at,
                "layers": layers,
                "running": len(running),
            }
            statements.append(("upsert_worker", worker_row))
            results = await self._execute(statements, atomic=False)
            worker.on_paused(bool(results[0] and results[0][0][0]))
            for msg_id, reason in results[1] if running else ():
                tell_cancel(worker, str(msg_id), reason)
            self._tidy_beside(worker)

        async def farewell() -> None:
            hub.unregister(worker)
            await self._execute([("delete_worker", {"id": worker.id})])

        return beat_every(worker, beat, farewell, self._connection.contact)

    def _tidy_beside(self, worker: WorkerContext) -> None:
        """Forget silent workers and purge what outlived `retention` (archived messages, keys,
        unique holders, waits), and for a worker with a keyed limit analyze the queue table when
        it outgrew its statistics (`stats_behind`: the claim's plans made for a near-empty queue
        are made again), and mark the messages lost since
        the last sweep (`limit_sweep`: claimable again from the key index), or every lost message
        (`mark_lost`) at this queue's first sweep and `MARK_ALL_EVERY` after the last one that
        succeeded: a write that moved a vt behind where the sweeps had got to without marking it
        (another client's `pgmq.set_vt`, an earlier version's `release`) is met by no sweep since
        (tests/integration/test_pgmq.py). All without the beat waiting for it, and no second
        time while it runs. The beat's `set_vt` is the running tasks' lease: a beat that waited
        for a purge of a large archive (retention shortened) extended them that much later, and
        past the lease another worker read them and ran them a second time
        (tests/integration/test_pgmq.py). A failure is logged: tried again at a later beat."""
        statements: list[Statement] = [
            ("forget_stale_workers", {"stale_after": worker.stale_after}),
            ("purge_archive", {"retention": worker.retention}),
            ("purge_keys", {"retention": worker.retention}),
            ("unique_forget", {}),
            ("forget_waits", {}),
        ]
        began = time.monotonic()
        marks_all = keyed = False
        if worker.limits is not None and worker.limits.keyed:
            keyed = True
            marks_all = self._marked_all_at is None or began - self._marked_all_at >= MARK_ALL_EVERY
            statements.append(("mark_lost" if marks_all else "limit_sweep", {}))
            statements.append(("stats_behind", {}))

        async def tidy() -> None:
            results = await self._execute(statements, atomic=False)
            if marks_all:
                self._marked_all_at = began
            if keyed and results[-1] and results[-1][0][0]:
                # The keyed claim's plans were made for a far smaller queue: new ones, for this one.
                await self._execute([("analyze_queue", {})])

        self._tidying.start(tidy)

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Write outcomes of runs whose message nobody has read since (same read_ct): done and
        killed are archived, retries `set_vt` to their time, releases made visible at once."""
        archive: tuple[list[int], list[int]] = ([], [])
        notes: tuple[list[int], list[int], list[str]] = ([], [], [])
        retry: tuple[list[int], list[int], list[float]] = ([], [], [])
        release: tuple[list[int], list[int]] = ([], [])
        for task, outcome in items:
            if not task.id.isdigit():
                continue
            msg_id, read_ct, kind = int(task.id), task.ctx.attempts, outcome.kind
            if kind is OutcomeKind.DONE:
                archive[0].append(msg_id)
                archive[1].append(read_ct)
                result = encode_result(outcome.result)
                if result is not None:
                    _note(notes, msg_id, read_ct, {"result": result})
            elif kind is OutcomeKind.KILL:
                archive[0].append(msg_id)
                archive[1].append(read_ct)
                _note(notes, msg_id, read_ct, {"status": "killed", "error": outcome.error})
            elif kind is OutcomeKind.CANCEL:
                archive[0].append(msg_id)
                archive[1].append(read_ct)
                _note(notes, msg_id, read_ct, {"status": "cancelled", "error": outcome.error})
            elif kind is OutcomeKind.RETRY:
                retry[0].append(msg_id)
                retry[1].append(read_ct)
                retry[2].append(outcome.run_at if outcome.run_at is not None else time.time())
                _note(notes, msg_id, read_ct, {"error": outcome.error, "failed_ct": read_ct})
            else:
                release[0].append(msg_id)
                release[1].append(read_ct)
        statements: list[Statement] = []
        if notes[0]:
            patches = "[" + ",".join(notes[2]) + "]"
            statements.append(("annotate", {"ids": notes[0], "cts": notes[1], "patches": patches}))
        if archive[0]:
            statements.append(("archive", {"ids": archive[0], "cts": archive[1]}))
        again = (retry[0] + release[0], retry[1] + release[1])
        if again[0]:
            # A run that would run again whose cancel was requested meanwhile ends cancelled.
            statements.append(("cancel_instead", {"ids": again[0], "cts": again[1]}))
            statements.append(("archive_marked", {"ids": again[0]}))
        if retry[0]:
            statements.append(("set_vt", {"ids": retry[0], "cts": retry[1], "ats": retry[2]}))
        if release[0]:
            statements.append(("release", {"ids": release[0], "cts": release[1]}))
        await self._execute(statements)
        if release[0] or (archive[0] and self._limited.workers):
            # Released tasks are ready again; an end frees a slot a limited worker here may wait for.
            self._waker.notify()


def _note(notes: tuple[list[int], list[int], list[str]], msg_id: int, read_ct: int, patch: dict[str, Any]) -> None:
    notes[0].append(msg_id)
    notes[1].append(read_ct)
    notes[2].append(json.dumps(patch, ensure_ascii=False, separators=(",", ":")))
