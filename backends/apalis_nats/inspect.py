"""Reading a JetStream queue without consuming it: messages by sequence (`STREAM.MSG.GET` with
`next_by_subj`), counts from the stream's per-subject state and the consumer's info.

A work message at or below the consumer's last delivered sequence is running (delivered, not
yet acknowledged; a retry waiting out its `nak` delay looks the same); above it, pending.
Acknowledged messages are gone from a WorkQueue stream: done tasks cannot be shown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.errors import Unsupported
from apalis_cli.task import Status, Task, TaskId
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from . import messages as m
from .client import Connection

__all__ = ["NatsInspector"]

_SCAN = 10_000  # messages looked at, at most, to find one task by id


class NatsInspector:
    """The `Inspector` half of a `NatsQueue`."""

    queue: str
    stream: str
    work: str
    sched: str
    dead: str
    durable: str
    max_attempts: int
    capabilities: Any
    _conn: Connection

    async def _walk(self, subject: str, limit: int) -> AsyncIterator[RawStreamMsg]:
        js = await self._conn.js()
        cursor, seen = 1, 0
        while seen < limit:
            try:
                raw = await js.get_msg(self.stream, seq=cursor, subject=subject, next=True)
            except NotFoundError:
                return
            if raw.seq is None:
                return
            seen += 1
            cursor = raw.seq + 1
            yield raw

    async def _delivered_upto(self) -> tuple[int, int]:
        """The consumer's last delivered stream sequence and its unacknowledged count."""
        js = await self._conn.js()
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            return 0, 0
        delivered = info.delivered.stream_seq if info.delivered and info.delivered.stream_seq else 0
        return delivered, info.num_ack_pending or 0

    def _task(self, raw: RawStreamMsg, status: Status) -> Task[bytes]:
        env = m.envelope_of(raw.headers, f"{self.stream}-{raw.seq}", self.max_attempts)
        payload = m.payload_of(raw.data or b"", raw.headers)
        return env.task(self.queue, payload, status=status, attempts=env.attempts, lock_by=None)

    async def _tasks(self, status: Status | None, limit: int) -> list[Task[bytes]]:
        found: list[Task[bytes]] = []
        if status in (None, Status.PENDING, Status.RUNNING):
            delivered, _ = await self._delivered_upto()
            async for raw in self._walk(self.work, limit):
                state = Status.RUNNING if (raw.seq or 0) <= delivered else Status.PENDING
                if status in (None, state):
                    found.append(self._task(raw, state))
        if status in (None, Status.PENDING):
            found.extend([self._task(raw, Status.PENDING) async for raw in self._walk(self.sched, limit)])
        if status in (None, Status.KILLED):
            found.extend([self._task(raw, Status.KILLED) async for raw in self._walk(self.dead, limit)])
        return found

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Pending, running and killed tasks read by sequence, by run_at (done ones are gone)."""
        found = await self._tasks(status, offset + limit)
        found.sort(key=lambda t: (t.ctx.run_at, t.id))
        return found[offset : offset + limit]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id, found by reading up to 10,000 messages of the queue."""
        return next((t for t in await self._tasks(None, _SCAN) if t.id == task_id), None)

    async def stats(self) -> QueueStats:
        """Counts from the stream's per-subject state and the consumer's unacknowledged count."""
        js = await self._conn.js()
        info = await js.stream_info(self.stream, subjects_filter=f"{self.work.split('.')[0]}.*.{self.queue}")
        per_subject = info.state.subjects or {}
        _, running = await self._delivered_upto()
        work = per_subject.get(self.work, 0)
        counts: dict[Status, int | None] = dict.fromkeys(Status)
        counts[Status.PENDING] = max(work - running, 0) + per_subject.get(self.sched, 0)
        counts[Status.RUNNING] = running
        counts[Status.KILLED] = per_subject.get(self.dead, 0)
        return QueueStats(queue=self.queue, counts=counts)

    async def workers(self) -> list[WorkerInfo]:
        """Not offered: see the WORKERS capability."""
        raise Unsupported(self.capabilities.why_not("workers"))

    async def retry(self, task_id: TaskId) -> bool:
        """Not offered: see the ADMIN capability."""
        raise Unsupported(self.capabilities.why_not("admin"))

    async def kill(self, task_id: TaskId, reason: str = "killed by an operator") -> bool:
        """Not offered: see the ADMIN capability."""
        raise Unsupported(self.capabilities.why_not("admin"))

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Not offered: see the ADMIN capability."""
        raise Unsupported(self.capabilities.why_not("admin"))
