"""Reading a JetStream queue without consuming it: messages by sequence (`STREAM.MSG.GET` with
`next_by_subj`), counts from the stream's per-subject state and the consumer's info.

A work message at or below the consumer's last delivered sequence is running (delivered, not
yet acknowledged; a retry waiting out its `nak` delay looks the same); above it, pending.
Acknowledged messages are gone from a WorkQueue stream: done tasks cannot be listed, but one is
found by id through its final record (see `apalis_nats.control`).
Admin moves a message by publishing a copy and deleting the original by sequence.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from apalis_cli.backend import QueueStats, WorkerInfo
from apalis_cli.control import DEFAULT_KILL_REASON
from apalis_cli.errors import Unsupported
from apalis_cli.task import Status, Task, TaskId
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from . import messages as m
from .connection import Connection
from .control import final_key, record, task_of_record

__all__ = ["NatsInspector"]

_SCAN = 10_000  # messages looked at, at most, to find one task by id


class NatsInspector:
    """The `Inspector` half of a `NatsQueue`."""

    queue: str
    stream: str
    work: str
    sched: str
    dead: str
    cancelled: str
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
                if (raw.headers or {}).get(m.TOMBSTONE):
                    continue  # where a cancelled scheduled task's copy would have gone: no task
                state = Status.RUNNING if (raw.seq or 0) <= delivered else Status.PENDING
                if status in (None, state):
                    found.append(self._task(raw, state))
        if status in (None, Status.PENDING):
            found.extend([self._task(raw, Status.PENDING) async for raw in self._walk(self.sched, limit)])
        if status in (None, Status.KILLED):
            found.extend([self._task(raw, Status.KILLED) async for raw in self._walk(self.dead, limit)])
        if status in (None, Status.CANCELLED):
            found.extend([self._task(raw, Status.CANCELLED) async for raw in self._walk(self.cancelled, limit)])
        return found

    async def list_tasks(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[Task[bytes]]:
        """Pending, running and killed tasks read by sequence, by run_at (done ones are gone)."""
        found = await self._tasks(status, offset + limit)
        found.sort(key=lambda t: (t.ctx.run_at, t.id))
        return found[offset : offset + limit]

    async def get(self, task_id: TaskId) -> Task[bytes] | None:
        """One task by id, found by reading up to 10,000 messages of the queue; a task that
        ended and left the stream (done) by its final record (7 days; its payload not kept)."""
        found = next((t for t in await self._tasks(None, _SCAN) if t.id == task_id), None)
        if found is None and (data := await self._conn.get_final(final_key(self.queue, task_id))) is not None:
            found = task_of_record(self.queue, task_id, data)
        return found

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
        counts[Status.CANCELLED] = per_subject.get(self.cancelled, 0)
        # Pushed for later: on the schedule subject until the mover finds them due. A retry in its
        # backoff waits on the work subject (a delayed redelivery) and counts as pending.
        return QueueStats(queue=self.queue, counts=counts, scheduled=per_subject.get(self.sched, 0))

    async def workers(self) -> list[WorkerInfo]:
        """Not offered: see the WORKERS capability."""
        raise Unsupported(self.capabilities.why_not("workers"))

    async def _find(self, task_id: TaskId, *subjects: str) -> tuple[str, RawStreamMsg] | None:
        for subject in subjects:
            async for raw in self._walk(subject, _SCAN):
                if (raw.headers or {}).get(m.ID) == task_id:
                    return subject, raw
        return None

    async def _move(self, raw: RawStreamMsg, subject: str, headers: dict[str, str]) -> None:
        """Publish `raw` as a new message on `subject`, then delete the original."""
        js = await self._conn.js()
        await js.publish(subject, raw.data or b"", headers=headers)
        await js.delete_msg(self.stream, raw.seq or 0)

    async def retry(self, task_id: TaskId) -> bool:
        """A killed or cancelled task goes back to work now, its attempts counted afresh (and its
        final record forgotten, so a waiter waits for its new end)."""
        found = await self._find(task_id, self.dead, self.cancelled)
        if found is None:
            return False
        _, raw = found
        run_at = repr(time.time())
        headers = m.copy_headers(raw.headers, id=task_id, attempts="0", error=None, done_at=None, run_at=run_at)
        await self._conn.forget_final(final_key(self.queue, task_id))
        await self._move(raw, self.work, headers)
        return True

    async def kill(self, task_id: TaskId, reason: str = DEFAULT_KILL_REASON) -> bool:
        """A pending or running task moves to the dead subject (a running one's ack is then
        ignored by the server: its message is gone)."""
        found = await self._find(task_id, self.work, self.sched)
        if found is None:
            return False
        _, raw = found
        headers = m.copy_headers(raw.headers, id=task_id, error=m.one_line(reason), done_at=repr(time.time()))
        await self._move(raw, self.dead, headers)
        env = m.envelope_of(raw.headers, task_id, self.max_attempts)
        await self._conn.put_final(
            final_key(self.queue, task_id), record(Status.KILLED, envelope=env, attempts=env.attempts, error=reason)
        )
        return True

    async def purge(self, status: Status, older_than: float | None = None) -> int:
        """Delete killed tasks finished (or pending ones created) more than `older_than` ago;
        done tasks are already gone."""
        if status is Status.KILLED:
            subjects, stamp = [self.dead], m.DONE_AT
        elif status is Status.CANCELLED:
            subjects, stamp = [self.cancelled], m.DONE_AT
        elif status is Status.PENDING:
            subjects, stamp = [self.work, self.sched], m.CREATED
        else:
            return 0
        cutoff = time.time() - (older_than or 0.0)
        js = await self._conn.js()
        doomed = [
            raw
            for subject in subjects
            async for raw in self._walk(subject, _SCAN)
            if raw.seq is not None and float((raw.headers or {}).get(stamp, 0.0)) <= cutoff
        ]
        for raw in doomed:
            await js.delete_msg(self.stream, raw.seq or 0)
            if status.is_final:  # its final record goes with it
                task_id = m.envelope_of(raw.headers, f"{self.stream}-{raw.seq}", 1).id
                await self._conn.forget_final(final_key(self.queue, task_id))
        return len(doomed)
