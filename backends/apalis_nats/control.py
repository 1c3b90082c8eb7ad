"""The control plane on NATS: cancel, pause and wait, with records kept on the same server.

A WorkQueue stream forgets a message once it is acknowledged and cannot edit one, so the store
keeps a small control record beside it, in two JetStream key-value buckets of the store's own
(`<stream>_CTL` and `<stream>_FIN`), and talks to workers on a core subject:

- **Pause**: key `paused.<queue>` of `<stream>_CTL` (no expiry: it outlives every restart). A
  worker reads it before it fetches (at most once per `poll_interval`, from a cache), and the
  pause or resume is also published on the queue's control subject, so workers obey within
  milliseconds and a resume wakes them.
- **Wait**: every final outcome (done with its result, killed, cancelled) is written as key
  `<queue>.<id>` of `<stream>_FIN` (kept 7 days, the oldest dropped past a million records, or
  100,000 in memory; the bucket reserves no storage) by a plain
  publish on the key's subject, beside the acknowledgement. A waiter subscribes to that subject
  and then reads the key: it is woken by the write itself.
- **Cancel**: the cancel deletes the task's message by sequence, which is atomic against a
  delivery: a message deleted before the consumer delivered it is never delivered. Whether it
  had been delivered is the consumer's `delivered.stream_seq` read after the delete (deliveries
  go in sequence order). Never delivered: cancelled. Delivered: the cancel is asked on the
  queue's control subject (`_apalis.<stream>.ctl.<queue>`, request/reply); the worker holding it
  answers and stops the run; with no answer the task was waiting for a retry (or its delivery
  is on its way to a worker, which remembers the cancel and skips it): cancelled. A scheduled
  task waits on the schedule subject; its cancel first publishes a tombstone carrying the
  deduplication id the mover would give its copy (`<stream>:moved:<seq>`), so a mover that is
  moving it at that moment either made its copy already (then the tombstone is a duplicate and
  the copy is cancelled as above) or will find its copy dropped.
  Cancelled tasks wait on subject `<prefix>.cancelled.<queue>` for `inspect`, like killed ones on
  the dead subject; both writers of that copy use one deduplication id.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from apalis_cli.control import DEFAULT_CANCEL_REASON, CancelResult
from apalis_cli.envelope import final_record, task_of_final
from apalis_cli.task import Status, Task, TaskId
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from . import messages as m

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "NatsControl",
    "PushedLately",
    "Recent",
    "cancelled_copy",
    "final_key",
    "record",
    "task_of_record",
]

_ASK_HOLDER = 1.0
"""How long a cancel waits for the worker that holds a delivered task to answer."""
_KEY = re.compile(r"^[-_=A-Za-z0-9]+$")


def final_key(queue: str, task_id: TaskId) -> str:
    """The `<stream>_FIN` key of a task (an id with characters a key cannot hold is hex-coded)."""
    return f"{queue}.{task_id if _KEY.match(task_id) else '=' + task_id.encode().hex()}"


def record(
    status: Status,
    *,
    envelope: m.Envelope | None = None,
    attempts: int = 0,
    error: str | None = None,
    result: str | None = None,
) -> bytes:
    """A final record (`apalis_cli.envelope.final_record`), as the `<stream>_FIN` bucket keeps it."""
    body = final_record(status, envelope, attempts=attempts, error=error, result=result)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def task_of_record(queue: str, task_id: TaskId, data: bytes) -> Task[bytes] | None:
    """The final task a record describes (its payload is not kept: empty), None if unreadable."""
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return task_of_final(queue, task_id, body)


class Recent(OrderedDict[TaskId, str]):
    """The cancels this process heard of lately, by task id (bounded, oldest forgotten): a
    delivery of one of them that arrives after its cancel is skipped, never started."""

    def __init__(self, size: int = 10_000) -> None:
        super().__init__()
        self._size = size

    def add(self, task_id: TaskId, reason: str) -> None:
        """Remember that `task_id` was cancelled with `reason`."""
        self[task_id] = reason
        self.move_to_end(task_id)
        while len(self) > self._size:
            self.popitem(last=False)


class PushedLately:
    """Where this object's recent pushes went (subject, sequence, bytes), for a cancel soon
    after: at most 1,000 tasks of at most 4 KiB, for 60 s. Sequences are never reused while the
    stream lives; the queue forgets them all when it makes the stream again."""

    _SIZE, _BYTES, _AGE = 1000, 4096, 60.0

    def __init__(self) -> None:
        self._by_id: OrderedDict[TaskId, tuple[str, RawStreamMsg, float]] = OrderedDict()

    def add(self, task_id: TaskId, subject: str, seq: int, data: bytes, headers: dict[str, str]) -> None:
        """Remember where `task_id` was published."""
        if len(data) > self._BYTES:
            return
        raw = RawStreamMsg(subject=subject, seq=seq, data=data, headers=headers)
        self._by_id[task_id] = (subject, raw, time.monotonic())
        while len(self._by_id) > self._SIZE:
            self._by_id.popitem(last=False)

    def take(self, task_id: TaskId) -> tuple[str, RawStreamMsg] | None:
        """Where `task_id` was published, if remembered and recent (forgotten by this call)."""
        found = self._by_id.pop(task_id, None)
        if found is None or time.monotonic() - found[2] > self._AGE:
            return None
        return found[0], found[1]

    def clear(self) -> None:
        """Forget every push (the stream was made again: sequences start over)."""
        self._by_id.clear()


class NatsControl:
    """The control half of a `NatsQueue`: `Canceller`, `Pausable`, `Waiter`."""

    queue: str
    stream: str
    work: str
    sched: str
    dead: str
    cancelled: str
    control: str
    _conn: Connection
    _pushed: PushedLately

    if TYPE_CHECKING:

        async def _find(self, task_id: TaskId, *subjects: str) -> tuple[str, RawStreamMsg] | None:
            """The inspector half's."""

        async def _delivered_upto(self) -> tuple[int, int]:
            """The inspector half's."""

    # -- cancel ----------------------------------------------------------------------------

    async def cancel(self, task_id: TaskId, reason: str = DEFAULT_CANCEL_REASON) -> CancelResult:
        """Cancel a task: a waiting one at once (its message deleted), a running one by asking
        the worker that holds it."""
        return await self._conn.retrying(lambda: self._cancel(task_id, reason))

    async def _cancel(self, task_id: TaskId, reason: str) -> CancelResult:
        js = await self._conn.js()
        # A task this object pushed lately is deleted by the sequence its publish was given, with
        # no search first (a cancel soon after a push beats a worker's fetch); any other is found
        # on the work subject first (deleted soonest), then the schedule subject, then the work
        # subject again (the mover may have moved it between the two looks).
        located = self._pushed.take(task_id)
        if located is not None:
            result = await self._cancel_at(js, *located, task_id, reason, cached=True)
            if result is not None:
                return result
        found = await self._find(task_id, self.work, self.sched, self.work)
        if found is None:
            return await self._ended(task_id)
        return await self._cancel_at(js, *found, task_id, reason) or CancelResult.not_found()

    async def _cancel_at(
        self, js: Any, subject: str, raw: RawStreamMsg, task_id: TaskId, reason: str, *, cached: bool = False
    ) -> CancelResult | None:
        """Cancel the task whose message is `raw` on `subject`; None when a `cached` location
        was stale (the message gone): search then."""
        seq = raw.seq or 0
        if subject == self.sched:
            tombstone = {m.MSG_ID: f"{self.stream}:moved:{seq}", m.ID: task_id, m.TOMBSTONE: "1"}
            ack = await js.publish(self.work, b"", headers=tombstone)
            await _delete(js, self.stream, seq)
            if not ack.duplicate:
                await self._write_cancelled(raw, task_id, reason, seq)
                return CancelResult.cancelled()
            # The mover had moved it: its copy on the work subject is the task now.
            try:
                raw = await js.get_msg(self.stream, ack.seq)
            except NotFoundError:
                return await self._ended(task_id)
            seq = ack.seq
        if not await _delete(js, self.stream, seq):
            # Gone: acknowledged meanwhile (or, from where it was pushed, released as a copy).
            return None if cached else await self._ended(task_id)
        delivered, _ = await self._delivered_upto()
        answer = await self._ask_holder(task_id, reason) if seq <= delivered else None
        if answer == "held":
            return CancelResult.requested()
        if answer is not None and answer.startswith("final "):
            return CancelResult.already_final(Status(answer.split(" ", 1)[1]))
        await self._write_cancelled(raw, task_id, reason, seq)
        return CancelResult.cancelled()

    async def _ask_holder(self, task_id: TaskId, reason: str) -> str | None:
        """Ask the workers of the queue about delivered `task_id`: "held" (its holder stops the
        run), "final <status>" (its run had just ended) or None (nobody holds it)."""
        client = await self._conn.client()
        try:
            reply = await client.request(self.control, f"c {task_id} {reason}".encode(), timeout=_ASK_HOLDER)
        except (NoRespondersError, NatsTimeoutError, TimeoutError):
            return None
        return reply.data.decode(errors="replace")

    async def _write_cancelled(self, raw: RawStreamMsg, task_id: TaskId, reason: str, seq: int) -> None:
        """The cancelled copy (for inspect) and the final record (for waiters)."""
        env = m.envelope_of(raw.headers, task_id, 1)
        await self._conn.publish_many([cancelled_copy(self, raw.data or b"", raw.headers, task_id, reason, seq)])
        await self._conn.put_final(
            final_key(self.queue, task_id), record(Status.CANCELLED, envelope=env, attempts=env.attempts, error=reason)
        )

    async def _ended(self, task_id: TaskId) -> CancelResult:
        """Not waiting nor running: final (its record says how), or unknown."""
        task = await self._final(task_id)
        if task is not None:
            return CancelResult.already_final(task.ctx.status)
        if await self._find(task_id, self.dead):
            return CancelResult.already_final(Status.KILLED)
        return CancelResult.not_found()

    async def _final(self, task_id: TaskId) -> Task[bytes] | None:
        data = await self._conn.get_final(final_key(self.queue, task_id))
        return None if data is None else task_of_record(self.queue, task_id, data)

    # -- pause -----------------------------------------------------------------------------

    async def pause(self) -> None:
        """Workers fetch nothing from now on (the flag in `<stream>_CTL`, told on the control
        subject)."""
        await self._conn.retrying(lambda: self._set_paused(True))

    async def resume(self) -> None:
        """Workers fetch again; waiting ones are woken through the control subject."""
        await self._conn.retrying(lambda: self._set_paused(False))

    async def _set_paused(self, paused: bool) -> None:
        await self._conn.put_paused(self.queue, paused)
        client = await self._conn.client()
        await client.publish(self.control, b"p 1" if paused else b"p 0")
        await client.flush(timeout=5)

    async def paused(self) -> bool:
        """True while the queue is paused."""
        return await self._conn.retrying(lambda: self._conn.get_paused(self.queue))

    # -- wait ------------------------------------------------------------------------------

    async def wait(self, task_id: TaskId, timeout: float | None = None) -> Task[bytes] | None:  # noqa: ASYNC109
        """The task once its final record is written (done, killed or cancelled), woken by that
        write; None after `timeout`. An unknown id waits for the whole timeout: a WorkQueue
        stream cannot tell it from a task still to come without reading the whole queue. The
        record is read again each time the client reconnects: a write while it was away
        reached no subscription."""
        key = final_key(self.queue, task_id)
        client = await self._conn.retrying(self._conn.client)
        written: list[bytes] = []
        stirred = self._conn.reconnected.subscribe()  # set by a write heard, too

        async def on_write(msg: Any) -> None:
            if msg.data:
                written.append(msg.data)
                stirred.set()

        sub = await client.subscribe(self._conn.final_subject(key), cb=on_write)
        try:
            await client.flush(timeout=5)  # subscribed before the key is read: no write missed
            stirred.clear()
            data = await self._conn.retrying(lambda: self._conn.get_final(key))
            try:
                async with asyncio.timeout(timeout):
                    while data is None and not written:
                        await stirred.wait()
                        stirred.clear()
                        if not written:  # reconnected
                            data = await self._conn.retrying(lambda: self._conn.get_final(key))
            except TimeoutError:
                return None
            return task_of_record(self.queue, task_id, written[0] if data is None else data)
        finally:
            self._conn.reconnected.unsubscribe(stirred)
            await sub.unsubscribe()


def cancelled_copy(
    queue: NatsControl, data: bytes, headers: dict[str, str] | None, task_id: TaskId, reason: str, seq: int
) -> tuple[str, bytes, dict[str, str]]:
    """The copy of a cancelled task on the cancelled subject; the canceller and the worker that
    stopped the run write it with one deduplication id, so it is kept once."""
    copied = m.copy_headers(headers, id=task_id, error=m.one_line(reason), done_at=repr(time.time()))
    return queue.cancelled, data, {**copied, m.MSG_ID: f"{queue.stream}:cancel:{seq}"}


async def _delete(js: Any, stream: str, seq: int) -> bool:
    """Delete message `seq`; False when it was gone already (acknowledged)."""
    try:
        await js.delete_msg(stream, seq)
    except NotFoundError:
        return False
    except Exception as exc:  # nats-py raises APIError 10057 "no message found" on 2.9
        if "no message found" in str(exc).lower():
            return False
        raise
    return True
