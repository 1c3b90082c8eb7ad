"""The Redis store's `Inspector`: reads with pipelined commands, changes through Lua scripts."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import msgpack
from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.control import DEFAULT_KILL_REASON
from apalis_cli.task import Status, Task, TaskContext, TaskId

from .limits import line_sets

if TYPE_CHECKING:
    from .connection import Connection
    from .keys import QueueKeys

__all__ = ["RedisInspector", "task_from_hash"]

_PURGE_BATCH = 5000
_HEADS = 5000  # entries a listing's script reads per call


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


def task_from_hash(task_id: str, queue: str, h: dict[bytes, bytes]) -> Task[bytes]:
    """A task from its stored hash."""
    done_at = h.get(b"d")
    meta = h.get(b"mt")
    return Task(
        id=task_id,
        args=h.get(b"p", b""),
        ctx=TaskContext(
            queue=queue,
            status=Status(h[b"s"].decode()),
            attempts=int(h.get(b"a", 0)),
            max_attempts=int(h.get(b"m", 1)),
            run_at=float(h.get(b"r", 0.0)),
            priority=int(h.get(b"pr", 0)),
            idempotency_key=_text(h.get(b"k")),
            meta=json.loads(meta) if meta else {},
            lock_by=_text(h.get(b"l")),
            last_error=_text(h.get(b"e")),
            result=_text(h.get(b"res")),
            created_at=float(h.get(b"c", 0.0)),
            done_at=float(done_at) if done_at is not None else None,
        ),
    )


class RedisInspector:
    """list/get/stats/workers/retry/kill/purge over one queue's keys."""

    queue: str
    keys: QueueKeys
    connection: Connection
    retention: float

    async def _parked(self) -> list[str]:
        """The limit keys' lines: pending tasks out of the ready set (`limits.line_sets`)."""
        return await line_sets(self.connection.client, self.keys.base)

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Tasks of the queue (optionally of one status), oldest run_at first.

        A script returns the run_at and status of each task, a slice of a collection per call;
        they are sorted here, and only the page's tasks read whole (a page of a queue of
        100,000 took 8 s when every task was read whole, with its payload)."""
        k, script = self.keys, self.connection.scripts["heads"]
        parked = await self._parked() if status in (None, Status.PENDING) else []
        sources = {
            Status.PENDING: [k.ready, k.scheduled, *parked],
            Status.FAILED: [k.failed],
            Status.RUNNING: [k.running],
            Status.DONE: [k.done],
            Status.KILLED: [k.killed],
            Status.CANCELLED: [k.cancelled],
        }
        every = [k.ready, k.scheduled, *parked, k.running, k.done, k.killed, k.cancelled]
        wanted = None if status is None else status.value.encode()
        heads: dict[bytes, float] = {}
        for source in sources[status] if status is not None else every:
            first = 0
            while True:
                last = first + _HEADS - 1
                reply = await script(keys=[source], args=[k.base, first, last, "set" if source == k.failed else ""])
                seen, fields = msgpack.unpackb(reply, raw=True)
                for i in range(0, len(fields), 3):
                    if wanted is None or fields[i + 2] == wanted:
                        heads[fields[i]] = float(fields[i + 1])
                if source == k.failed or seen < _HEADS:
                    break
                first = last + 1
        order = sorted((run_at, raw) for raw, run_at in heads.items())
        page = [raw.decode() for _, raw in order[offset : offset + limit]]
        async with self.connection.client.pipeline(transaction=False) as pipe:
            for task_id in page:
                pipe.hgetall(k.task(task_id))
            hashes = await pipe.execute()
        return [task_from_hash(task_id, self.queue, h) for task_id, h in zip(page, hashes, strict=True) if h]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id."""
        h = await self.connection.client.hgetall(self.keys.task(task_id))
        return task_from_hash(task_id, self.queue, h) if h else None

    async def stats(self) -> QueueStats:
        """Counts per status, from the sizes of the status sets; scheduled: the entries of the
        scheduled set (delayed tasks and retries in their backoff) not yet due."""
        k = self.keys
        parked = await self._parked()
        async with self.connection.client.pipeline(transaction=False) as pipe:
            for key in (k.ready, k.scheduled, k.running, k.done, k.killed, k.cancelled):
                pipe.zcard(key)
            pipe.scard(k.failed)
            pipe.zcount(k.scheduled, f"({time.time()!r}", "+inf")
            for key in parked:
                pipe.zcard(key)
            ready, scheduled, running, done, killed, cancelled, failed, waiting, *held = await pipe.execute()
        counts: dict[Status, int | None] = {
            Status.PENDING: ready + scheduled + sum(held) - failed,
            Status.RUNNING: running,
            Status.DONE: done,
            Status.FAILED: failed,
            Status.KILLED: killed,
            Status.CANCELLED: cancelled,
        }
        return QueueStats(queue=self.queue, counts=counts, scheduled=waiting)

    async def workers(self) -> list[WorkerInfo]:
        """Registered workers of this queue, oldest first."""
        k = self.keys
        async with self.connection.client.pipeline(transaction=False) as pipe:
            pipe.zrange(k.workers, 0, -1, withscores=True)
            pipe.hgetall(k.winfo)
            seen, infos = await pipe.execute()
        found = []
        for raw_id, last_seen in seen:
            raw = infos.get(raw_id)
            if raw is None:
                continue
            info = json.loads(raw)
            found.append(
                WorkerInfo(
                    id=raw_id.decode(),
                    name=info["name"],
                    queue=info["queue"],
                    host=info["host"],
                    pid=info["pid"],
                    started_at=info["started_at"],
                    last_seen=last_seen,
                    layers=tuple(info["layers"]),
                    running=info.get("running"),
                )
            )
        return sorted(found, key=lambda w: w.started_at)

    async def retry(self, task_id: TaskId) -> bool:
        """A failed, killed or cancelled task runs again now with a fresh count of attempts."""
        k = self.keys
        done = await self.connection.scripts["retry"](
            keys=k.statuses, args=[k.base, repr(time.time()), k.wake, task_id]
        )
        return bool(done)

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """Kill a task that has not finished."""
        k = self.keys
        done = await self.connection.scripts["kill"](
            keys=k.statuses,
            args=[k.base, repr(time.time()), int(self.retention * 1000), task_id, reason, k.control],
        )
        return bool(done)

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete tasks of `status` finished (or created) more than `older_than` seconds ago."""
        k = self.keys
        sources = {
            # The lines first: a head deleted from the ready set is followed by its line's next.
            Status.PENDING: [*(await self._parked() if status is Status.PENDING else []), k.ready, k.scheduled],
            Status.FAILED: [k.failed],
            Status.RUNNING: [k.running],
            Status.DONE: [k.done],
            Status.KILLED: [k.killed],
            Status.CANCELLED: [k.cancelled],
        }[status]
        cutoff = repr(time.time() - (older_than or 0.0))
        total = 0
        for source in sources:
            while True:
                deleted = await self.connection.scripts["purge"](
                    keys=[*k.statuses, source],
                    args=[k.base, status.value, cutoff, _PURGE_BATCH],
                )
                total += deleted
                if deleted < _PURGE_BATCH:
                    break
        return total
