"""What can be inspected in an rsmq queue: its waiting, running and failed messages and its dead
letters (done messages are deleted by rsmq, so they cannot be listed or counted)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgpack
from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.control import DEFAULT_KILL_REASON
from apalis_cli.task import Status, Task, TaskContext, TaskId

if TYPE_CHECKING:
    from apalis_redis.connection import Connection

    from .keys import RsmqKeys

__all__ = ["RsmqInspector", "created_at"]

_COUNT_SLICE = 5000  # messages one counting call reads: Redis serves nobody else meanwhile


def created_at(message_id: str) -> float:
    """When an rsmq message was sent: its id starts with base36 of Redis TIME in µs."""
    try:
        return int(message_id[:10], 36) / 1e6
    except ValueError:
        return 0.0


def _text(value: bytes | None) -> str | None:
    return value.decode() if value else None


class RsmqInspector:
    """list/get/stats/retry/kill/purge over one rsmq queue and its dead-letter queue."""

    queue: str
    keys: RsmqKeys
    connection: Connection
    max_attempts: int
    _channel: str

    def _task(self, raw: bytes, score: float, dead: bool, fields: list[Any]) -> Task[bytes]:
        """A task from a message's fields: its body and receive count (the queue's hash), then
        from the side hash max attempts, lock, error, the dead letter's receive count, when it
        died and how it ended (`lua/browse.lua` reads the same)."""
        body, rc, ma, lock, error, dead_rc, at, ended = fields
        if dead:
            status = Status.CANCELLED if ended == b"cancelled" else Status.KILLED
            attempts = int(dead_rc or 0)
        else:
            attempts = int(rc or 0)
            status = Status.RUNNING if lock else Status.FAILED if error else Status.PENDING
        return Task(
            id=raw.decode(),
            args=body,
            ctx=TaskContext(
                queue=self.queue,
                status=status,
                attempts=attempts,
                max_attempts=int(ma) if ma else self.max_attempts,
                run_at=score / 1000 if not dead else time.time(),
                lock_by=_text(lock),
                last_error=_text(error),
                created_at=created_at(raw.decode()),
                done_at=int(at) / 1000 if dead and at else None,
            ),
        )

    async def _fetch(self, ids: list[tuple[bytes, float]], dead: bool) -> list[Task[bytes]]:
        k = self.keys
        qhash, side = (k.dead_hash, k.dead_side) if dead else (k.hash, k.side)
        async with self.connection.client.pipeline(transaction=False) as pipe:
            for raw, _ in ids:
                i = raw.decode()
                pipe.hmget(qhash, [i, f"{i}:rc"])
                pipe.hmget(side, [f"{i}:ma", f"{i}:lk", f"{i}:e", f"{i}:rc", f"{i}:at", f"{i}:st"])
            replies = await pipe.execute()
        return [
            self._task(raw, score, dead, [*replies[2 * n], *replies[2 * n + 1]])
            for n, (raw, score) in enumerate(ids)
            if replies[2 * n][0] is not None
        ]

    async def _all(self) -> list[Task[bytes]]:
        client = self.connection.client
        live = await client.zrange(self.keys.zset, 0, -1, withscores=True)
        dead = await client.zrange(self.keys.dead_zset, 0, -1, withscores=True)
        return await self._fetch(live, False) + await self._fetch(dead, True)

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Messages of the queue and its dead letters (optionally of one status), by run_at."""
        tasks = [t for t in await self._all() if status is None or t.ctx.status is status]
        tasks.sort(key=lambda t: (t.ctx.run_at, t.id))
        return tasks[offset : offset + limit]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One message by id, in the queue or among its dead letters, or done while someone
        waited for it (its end is kept for them: rsmq deleted it)."""
        client, k = self.connection.client, self.keys
        for zset, dead in ((k.zset, False), (k.dead_zset, True)):
            score = await client.zscore(zset, task_id)
            if score is not None:
                found = await self._fetch([(task_id.encode(), score)], dead)
                if found:
                    return found[0]
        end = await client.get(k.end(task_id))
        if end is None:
            return None
        result, done_ms, rc, ma, body = msgpack.unpackb(end, raw=True)
        return Task(
            id=task_id,
            args=body or b"",
            ctx=TaskContext(
                queue=self.queue,
                status=Status.DONE,
                attempts=int(rc or 0),
                max_attempts=int(ma) if ma else self.max_attempts,
                run_at=created_at(task_id),
                result=result.decode() if result else None,
                created_at=created_at(task_id),
                done_at=int(done_ms) / 1000,
            ),
        )

    async def stats(self) -> QueueStats:
        """Counts per status; done is unknown (rsmq deletes done messages). Counted by
        `lua/counts.lua`, `_COUNT_SLICE` messages a call, from our side hash (no bodies read);
        scheduled: pending or failed messages whose visibility time is still to come."""
        k, script = self.keys, self.connection.scripts["counts"]
        seconds, micros = await self.connection.client.time()
        now_ms = seconds * 1000 + micros // 1000
        live = [0, 0, 0, 0]  # pending, running, failed, scheduled
        dead = [0, 0]  # killed, cancelled
        for zset, side, into, tag in ((k.zset, k.side, live, ""), (k.dead_zset, k.dead_side, dead, "dead")):
            first = 0
            while True:
                seen, *found = await script(keys=[zset, side], args=[tag, first, first + _COUNT_SLICE - 1, now_ms])
                for i, n in enumerate(found):
                    into[i] += n
                if seen < _COUNT_SLICE:
                    break
                first += _COUNT_SLICE
        counts: dict[Status, int | None] = {
            Status.PENDING: live[0],
            Status.RUNNING: live[1],
            Status.FAILED: live[2],
            Status.DONE: None,
            Status.KILLED: dead[0],
            Status.CANCELLED: dead[1],
        }
        return QueueStats(queue=self.queue, counts=counts, scheduled=live[3])

    async def workers(self) -> list[WorkerInfo]:
        """rsmq has no worker registry: always empty."""
        return []

    async def retry(self, task_id: TaskId) -> bool:
        """A dead letter goes back to the queue, or a failed message runs now; rc starts afresh."""
        done = await self.connection.scripts["retry"](keys=self.keys.all, args=[task_id, self._channel])
        return bool(done)

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """Move a message to the dead-letter queue with `reason`."""
        k = self.keys
        return bool(await self.connection.scripts["kill"](keys=k.all, args=[task_id, reason, k.control]))

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete messages of `status` killed (or sent) more than `older_than` seconds ago."""
        cutoff = time.time() - (older_than or 0.0)
        k = self.keys
        doomed = [
            t for t in await self._all() if t.ctx.status is status and (t.ctx.done_at or t.ctx.created_at) <= cutoff
        ]
        if not doomed:
            return 0
        async with self.connection.client.pipeline(transaction=True) as pipe:
            for task in doomed:
                i = task.id
                dead = task.ctx.status in (Status.KILLED, Status.CANCELLED)
                pipe.zrem(k.dead_zset if dead else k.zset, i)
                pipe.hdel(k.dead_hash if dead else k.hash, i, f"{i}:rc", f"{i}:fr")
                pipe.hdel(
                    k.dead_side if dead else k.side, *(f"{i}:{f}" for f in ("ma", "lk", "e", "rc", "at", "st", "cr"))
                )
                pipe.zrem(k.claims, i)
            await pipe.execute()
        return len(doomed)
