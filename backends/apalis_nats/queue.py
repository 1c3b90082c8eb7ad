"""An apalis queue on NATS JetStream (`kind = "nats"`), on what server 2.9 offers.

One WorkQueue stream (option `stream`, default APALIS) holds every queue of the table, on
subjects under `prefix` (default apalis). For queue `q`:

- `apalis.q.q`: ready work, read by the durable pull consumer of `q` (filter_subject), with
  `ack_wait` = the workers' `stale_after`. A worker fetches up to its free slots per request.
- `apalis.sched.q`: tasks pushed for later. JetStream 2.9 has no delayed publish, so a mover
  in every polling worker reads them through a second consumer, `nak(delay)`s each until it is
  due, then publishes it to `apalis.q.q` (deduplicated by its sequence) and acks it.
- `apalis.dead.q`: killed tasks, with the error in a header. No consumer reads it, so a
  WorkQueue stream keeps them. `apalis.cancelled.q`: cancelled tasks, the same way.
- The control plane (cancel, pause, wait) keeps its records in two key-value buckets beside the
  stream and talks to workers on core subject `_apalis.<stream>.ctl.q`: see `apalis_nats.control`.

Outcomes: done = ack; retry = `nak(delay=backoff)` (JetStream redelivers it then, its
`num_delivered` counting the attempt; a message cannot be edited, so the error of a retry is
reported by the worker, not kept with the task); kill = publish to the dead subject, then `term`;
release = publish a copy whose count leaves this run out, then ack. Running tasks get
`in_progress()` at every heartbeat, so a long task is not redelivered; a worker that stops
beating loses its tasks to another worker after `ack_wait`, the lost run counted, and a task
whose lost runs exhaust its attempts is killed, never looped. Consumers have `max_deliver = -1`:
the store counts and kills by itself, because a message whose `max_deliver` ran out stays
stuck in a WorkQueue stream. A stream or consumer deleted while in use is made again (at the
next heartbeat, or by the push that found no stream). An idempotency key is the `Nats-Msg-Id`, so the server drops a
duplicate within the stream's `duplicate_window` (later, the key is forgotten).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from apalis_cli.backend import Capabilities, Capability, NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.control import tell_cancel
from apalis_cli.errors import ConnectionLost
from apalis_cli.polling import IdleWait, beat_every
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task, TaskId
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, NotFoundError

from . import messages as m
from .browse import NatsBrowser
from .connection import FAILURES, Connection, Puller, flush, unsubscribe, wakes
from .control import NatsControl, PushedLately, Recent, cancelled_copy, final_key, record, task_of_record
from .mover import move_due

__all__ = ["CAPABILITIES", "NatsQueue"]

CAPABILITIES = Capabilities(
    {
        Capability.BULK: (
            "JetStream deletes a message by its sequence alone and filters no header: a bulk action by "
            "status, time or error would be a round trip per task"
        ),
        Capability.PRIORITY: "a JetStream stream is delivered in sequence order: it has no priorities",
        Capability.RESULTS: (
            "an acknowledged message leaves a WorkQueue stream: a result is kept only in the task's final record "
            "(for wait and inspect --id), up to 512 KiB and for 7 days"
        ),
        Capability.INSPECT: (
            "an acknowledged message leaves a WorkQueue stream, so done tasks cannot be listed or counted (one is "
            "found by id for 7 days); pending, running, killed and cancelled tasks are read by sequence"
        ),
        Capability.WORKERS: "JetStream knows consumers shared by all workers of a queue, not apalis workers",
        Capability.CLAIMS_AHEAD: "a JetStream ack is its own message and a claim a fetch: neither carries the other",
    }
)

_FINAL = {OutcomeKind.DONE: Status.DONE, OutcomeKind.KILL: Status.KILLED, OutcomeKind.CANCEL: Status.CANCELLED}
_RECORD_MAX = 512 * 1024
"""A final record larger than this (a result of nearly 1 MiB, NATS's default max_payload) is
kept without its result: the store does not offer RESULTS, a waiter learns the task is done."""
_DEFAULT_ACK_WAIT = 30.0  # the default stale_after; a worker sets its own when it starts
_LOST = "a worker stopped sending heartbeats while running this task (ack_wait passed without an ack)"
_LEASE_KEPT = 0.9
"""The share of `ack_wait` a worker counts as its lease: JetStream starts the timer when it sends
the message (or receives an `in_progress`), a little before the worker's clock does."""


@dataclass(slots=True)
class _Held:
    """A message this process fetched and has not settled.

    `lease_ends` (monotonic) is when JetStream may hand the message to another worker: it accepts
    an ack, nak or term from any past delivery, so a worker whose lease ran out (a long pause)
    must not settle it. Past that time the message is forgotten and never renewed again.
    """

    msg: Msg
    worker: str
    attempts: int
    since: float
    lease_ends: float


class NatsQueue(QueueBase, NatsBrowser, NatsControl):
    """One apalis queue on a JetStream stream."""

    capabilities = CAPABILITIES

    def __init__(self, connection: Connection, queue: str, *, codec: Codec, max_attempts: int) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        s = connection.config
        self._conn = connection
        self.stream = s.stream
        self.work = f"{s.prefix}.q.{queue}"
        self.sched = f"{s.prefix}.sched.{queue}"
        self.dead = f"{s.prefix}.dead.{queue}"
        self.cancelled = f"{s.prefix}.cancelled.{queue}"
        self.control = f"_apalis.{s.stream}.ctl.{queue}"
        digest = hashlib.sha1(queue.encode()).hexdigest()[:8]
        self.durable = f"{re.sub(r'[^A-Za-z0-9_-]', '_', queue)[:40]}-{digest}"
        self._held: dict[TaskId, _Held] = {}
        self._ack_wait: float | None = None
        self._pushed = PushedLately()
        self._heard = Recent()  # cancels told on the control subject: never start these
        self._stopping: dict[TaskId, str] = {}  # held tasks whose cancel was asked of us: the reason
        self._settled = Recent()  # tasks this object settled lately, with their final status
        self._workers: dict[str, WorkerContext] = {}  # the live workers of this object
        self._control_sub: Subscription | None = None
        self._paused: tuple[bool, float] = (False, -math.inf)  # the flag, and when it was read
        self._told = 0  # how many pauses and resumes the control subject told of
        self._woken: set[asyncio.Event] = set()
        # Polling worker id -> the tasks its stream fetched and has not handed to it yet: they
        # run soon, so its beat keeps their leases and gives none back as idle (a beat can run
        # between a fetch whose reply came late and the stream handing the batch out).
        self._coming: dict[str, deque[Task[bytes]]] = {}

    # -- pushing ---------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Publish tasks (due ones as work, later ones for the mover), each acked by the stream."""
        now = time.time()
        client = await self._conn.retrying(self._conn.client)
        outgoing = []
        for task in tasks:
            headers = m.headers_for(task, self.queue)
            payload = m.shrink(task.payload, headers, client.max_payload)
            outgoing.append((self.sched if task.run_at > now + 0.001 else self.work, payload, headers))

        async def publish() -> list[Any]:
            js = await self._conn.js()
            try:
                return await asyncio.gather(*(js.publish(subject, data, headers=h) for subject, data, h in outgoing))
            except (NoStreamResponseError, NatsTimeoutError):
                # No stream takes the subject (or, with a worker's core subscription on it, nobody
                # answers): the stream was deleted. Make it again; `retrying` publishes again.
                if not await self._conn.stream_exists():
                    await self._recreate()
                raise

        acks = await self._conn.retrying(publish)
        ids = [task.id for task in tasks]
        for index, ack in enumerate(acks):
            if ack.duplicate:
                ids[index] = await self._existing_id(ack.seq, ids[index])
            else:
                subject, data, headers = outgoing[index]
                self._pushed.add(ids[index], subject, ack.seq, data, headers)
        return ids

    async def _existing_id(self, seq: int, fallback: TaskId) -> TaskId:
        """The id of the task a duplicate key points at (gone once consumed: then `fallback`)."""
        js = await self._conn.js()
        try:
            stored = await js.get_msg(self.stream, seq)
        except FAILURES:
            return fallback
        return (stored.headers or {}).get(m.ID) or fallback

    # -- polling ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Create the stream and this queue's consumers unless they exist (`apalis check`), so a
        plain client may publish before any worker ran; a consumer that exists is left as it is."""
        await self._conn.retrying(self._conn.client)
        js = await self._conn.js()
        for durable, subject in ((self.durable, self.work), (f"{self.durable}-s", self.sched)):
            try:
                await js.consumer_info(self.stream, durable)
            except NotFoundError:
                await self._conn.add_consumer(durable, subject, _DEFAULT_ACK_WAIT)

    async def _recreate(self) -> None:
        """The stream (or this queue's consumer) was deleted while in use: make both again."""
        await self._conn.ensure_stream()
        self._pushed.clear()
        ack_wait, self._ack_wait = self._ack_wait, None
        await self._ensure_consumers(ack_wait or _DEFAULT_ACK_WAIT)

    async def _ensure_consumers(self, ack_wait: float) -> None:
        """Create (or update) the work and schedule consumers; `ack_wait` follows the workers'
        `stale_after`, so a silent worker's tasks come back after that long."""
        if self._ack_wait == ack_wait:
            return
        await self._conn.add_consumer(self.durable, self.work, ack_wait)
        await self._conn.add_consumer(f"{self.durable}-s", self.sched, 30.0)
        self._ack_wait = ack_wait

    async def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Tasks fetched in batches of the worker's free slots (`no_wait` pulls), none while the
        queue is paused. While idle, a core subscription to the work subject wakes the worker on
        the next publish; redelivered retries are found by polling with a backoff capped at
        `poll_interval`. The queue's control subject tells of cancels and pauses meanwhile."""
        await self._ensure_consumers(worker.stale_after)
        client = await self._conn.client()
        puller = Puller(client, self.stream, self.durable)
        mover = asyncio.create_task(
            move_due(self._conn, consumer=f"{self.durable}-s", sched=self.sched, work=self.work),
            name=f"apalis-nats-mover-{self.queue}",
        )
        ready: deque[Task[bytes]] = deque()
        self._coming[worker.id] = ready
        wake = asyncio.Event()
        self._woken.add(wake)
        await self._listen(worker)
        watch: Subscription | None = None
        idle = IdleWait(worker.poll_interval)
        try:
            while True:
                if ready:
                    task = ready.popleft()
                    if task.id in self._stopping:  # cancelled before it started: never starts
                        await self.ack_batch([(task, Outcome.cancel(self._stopping[task.id]))])
                        continue
                    yield task
                    continue
                if mover.done():
                    mover.result()  # the mover's failure is the stream's
                wake.clear()
                if await self._is_paused(worker):
                    yield None
                    await idle.wait(wake)
                    continue
                msgs = await puller.fetch(max(worker.free_slots(), 1))
                if msgs:
                    idle.reset()
                    if watch is not None:  # busy: stop receiving a copy of every publish
                        await unsubscribe(watch)
                        watch = None
                    admitted = await self._admit(msgs, worker)
                    if self._paused[0]:
                        # A pull request sent before the pause may be answered after it (the
                        # server keeps a no_wait request that found a message taken meanwhile).
                        await self.ack_batch([(task, Outcome.release()) for task in admitted])
                        continue
                    ready.extend(admitted)
                    continue
                if watch is None:
                    # Subscribe, then fetch once more: a publish after that fetch wakes us.
                    watch = await client.subscribe(self.work, cb=wakes(wake))
                    continue
                yield None
                await idle.wait(wake)
        finally:
            self._woken.discard(wake)
            if self._coming.get(worker.id) is ready:
                del self._coming[worker.id]
            mover.cancel()
            with contextlib.suppress(asyncio.CancelledError, *FAILURES):
                await mover
            if watch is not None:
                await unsubscribe(watch)
            await puller.close()
            if ready:
                await self.ack_batch([(task, Outcome.release()) for task in ready])

    async def _listen(self, worker: WorkerContext) -> None:
        """Hear the queue's control subject while `worker` lives (from its first beat or poll to
        its farewell): it holds tasks between its polls too."""
        self._workers[worker.id] = worker
        if self._control_sub is None:
            client = await self._conn.client()
            self._control_sub = await client.subscribe(self.control, cb=self._on_control)

    async def _unlisten(self, worker: WorkerContext) -> None:
        self._workers.pop(worker.id, None)
        sub, self._control_sub = self._control_sub, None
        if sub is not None and not self._workers:
            await unsubscribe(sub)
        else:
            self._control_sub = sub

    async def _is_paused(self, worker: WorkerContext) -> bool:
        """The paused flag, read from its bucket at most once per `poll_interval` (the control
        subject tells of a change sooner)."""
        paused, read_at = self._paused
        now = time.monotonic()
        if now - read_at >= worker.poll_interval:
            told = self._told
            paused = await self._conn.get_paused(self.queue)
            if told == self._told:  # not told otherwise meanwhile (this read may predate that)
                self._paused = (paused, now)
            else:
                paused = self._paused[0]
        return paused

    async def _on_control(self, msg: Msg) -> None:
        """A control message: `c <id> <reason>` (a cancel; answered by the holder of the task) or
        `p 1` / `p 0` (paused, resumed)."""
        kind, _, rest = msg.data.decode(errors="replace").partition(" ")
        if kind == "c":
            task_id, _, reason = rest.partition(" ")
            self._heard.add(task_id, reason)
            held = self._held.get(task_id)
            if held is None:
                if (status := self._settled.get(task_id)) is not None and msg.reply:
                    # Its run ended just before the cancel deleted it: that outcome stands.
                    with contextlib.suppress(*FAILURES):
                        await msg.respond(f"final {status}".encode())
                return
            self._stopping[task_id] = reason
            if msg.reply:
                with contextlib.suppress(*FAILURES):
                    await msg.respond(b"held")
            if (worker := self._workers.get(held.worker)) is not None:
                tell_cancel(worker, task_id, reason)
        elif kind == "p":
            paused = rest == "1"
            self._paused = (paused, time.monotonic())
            self._told += 1
            for worker in list(self._workers.values()):
                worker.on_paused(paused)
            if not paused:
                for event in self._woken:
                    event.set()

    async def _admit(self, msgs: Sequence[Msg], worker: WorkerContext) -> list[Task[bytes]]:
        """Tasks for the delivered messages; lost runs that exhausted a task kill it instead."""
        tasks: list[Task[bytes]] = []
        dead: list[tuple[Msg, dict[str, str]]] = []
        now, lease_ends = time.time(), time.monotonic() + worker.stale_after * _LEASE_KEPT
        skipped: list[Msg] = []
        for msg in msgs:
            meta = msg.metadata
            env = m.envelope_of(msg.headers, f"{self.stream}-{meta.sequence.stream}", self.max_attempts)
            if (msg.headers or {}).get(m.TOMBSTONE) or env.id in self._heard:
                skipped.append(msg)  # a cancel's tombstone, or a task cancelled as it was delivered
                continue
            attempts = env.attempts + meta.num_delivered
            if attempts > env.max_attempts:
                lost = {"attempts": str(attempts - 1), "error": m.one_line(_LOST), "done_at": repr(now)}
                dead.append((msg, m.copy_headers(msg.headers, id=env.id, **lost)))
                continue
            self._held[env.id] = _Held(msg, worker.id, attempts, now, lease_ends)
            payload = m.payload_of(msg.data, msg.headers)
            tasks.append(env.task(self.queue, payload, status=Status.RUNNING, attempts=attempts, lock_by=worker.id))
        if dead:
            await self._conn.publish_many([(self.dead, msg.data, headers) for msg, headers in dead])
            client = await self._conn.client()
            for msg, headers in dead:
                env = m.envelope_of(headers, "", self.max_attempts)
                data = record(Status.KILLED, envelope=env, attempts=env.attempts, error=env.error)
                await client.publish(self._conn.final_subject(final_key(self.queue, env.id)), data)
                await msg.term()
        for msg in skipped:
            await msg.term()
        return tasks

    # -- acknowledging ---------------------------------------------------------------------

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Settle outcomes; every ack of the batch goes out together, then one flush.

        A message stays held until it is settled: after a failure the heartbeat still sees it
        (and puts it back once its run is over); a lost connection is raised as `ConnectionLost`
        (JetStream then redelivers what was not acknowledged), a refusal as it came."""
        now, clock = time.time(), time.monotonic()
        copies: list[tuple[str, bytes, dict[str, str]]] = []
        records: list[tuple[str, bytes]] = []
        after: list[tuple[TaskId, Msg, Outcome]] = []
        for task, outcome in items:
            held = self._held.get(task.id)
            if held is None or held.worker != task.ctx.lock_by:
                continue  # the lease was lost: JetStream redelivers it
            if held.lease_ends < clock:
                del self._held[task.id]
                continue  # the lease ran out: the message may be another worker's run by now
            msg, kind = held.msg, outcome.kind
            reason = self._stopping.get(task.id)
            if reason is not None and kind in (OutcomeKind.RETRY, OutcomeKind.RELEASE):
                outcome, kind = Outcome.cancel(reason), OutcomeKind.CANCEL  # cancelled: never again
            env = m.envelope_of(msg.headers, task.id, self.max_attempts)
            key = final_key(self.queue, task.id)
            if kind is OutcomeKind.KILL:
                killed = {"attempts": str(held.attempts), "error": m.one_line(outcome.error), "done_at": repr(now)}
                headers = m.copy_headers(msg.headers, id=task.id, **killed)
                copies.append((self.dead, msg.data, headers))
                records.append((key, record(Status.KILLED, envelope=env, attempts=held.attempts, error=outcome.error)))
            elif kind is OutcomeKind.CANCEL:
                copies.append(cancelled_copy(self, msg.data, msg.headers, task.id, outcome.error or "", _seq(msg)))
                error = outcome.error
                records.append((key, record(Status.CANCELLED, envelope=env, attempts=held.attempts, error=error)))
            elif kind is OutcomeKind.RELEASE:
                headers = m.copy_headers(msg.headers, id=task.id, attempts=str(held.attempts - 1))
                copies.append((self.work, msg.data, headers))
            elif kind is OutcomeKind.DONE:
                result = encode_result(outcome.result)
                data = record(Status.DONE, envelope=env, attempts=held.attempts, result=result)
                if len(data) > _RECORD_MAX:  # a result of about the server's max_payload: not kept
                    data = record(Status.DONE, envelope=env, attempts=held.attempts)
                records.append((key, data))
            after.append((task.id, msg, outcome))
        try:
            await self._conn.publish_many(copies)
            client = await self._conn.retrying(self._conn.client)
            for key, data in records:
                # A plain publish on the key's subject is a put into the bucket: no round trip
                # of its own, written before the ack that follows it on this connection.
                await client.publish(self._conn.final_subject(key), data)
            for task_id, msg, outcome in after:
                if outcome.kind is OutcomeKind.RETRY:
                    delay = (outcome.run_at if outcome.run_at is not None else now) - now
                    await msg.nak(delay=max(delay, 0.0))
                elif outcome.kind in (OutcomeKind.KILL, OutcomeKind.CANCEL):
                    await msg.term()
                else:
                    await msg.ack()
                self._held.pop(task_id, None)
                self._stopping.pop(task_id, None)
                if (final := _FINAL.get(outcome.kind)) is not None:
                    self._settled.add(task_id, final.value)
            await flush(client)
        except FAILURES as exc:
            current = self._conn.current
            if current is not None and current.is_connected:
                raise  # NATS refused what it was given (a message too large, ...), not the link
            raise ConnectionLost(f"NATS: {exc!r}") from exc

    # -- heartbeat -------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Keep the running tasks' messages from redelivery (`in_progress`), release held ones
        that are not running, tell the worker again of cancels (and of one it missed: a run of
        more than `keep_alive` whose task has a cancelled record), say whether the queue is
        paused, and prove the connection with a flush."""

        async def beat() -> None:
            client = await self._conn.client()
            await self._listen(worker)
            running, now, clock = worker.running(), time.time(), time.monotonic()
            coming = self._coming.get(worker.id)
            if coming:
                running = {*running, *(task.id for task in coming)}
            idle: list[tuple[Task[Any], Outcome]] = []
            long_runs: list[TaskId] = []
            for task_id, held in list(self._held.items()):
                if held.worker != worker.id:
                    continue
                if held.lease_ends < clock:
                    del self._held[task_id]  # lost: renewing now would not make it ours again
                elif task_id in running:
                    held.lease_ends = clock + worker.stale_after * _LEASE_KEPT
                    await held.msg.in_progress()
                    if task_id in self._stopping:
                        tell_cancel(worker, task_id, self._stopping[task_id])
                    elif held.since < now - worker.keep_alive:
                        long_runs.append(task_id)
                elif held.since < now - worker.keep_alive:
                    idle.append((self._stub(task_id, held), Outcome.release()))
            if idle:
                await self.ack_batch(idle)
            await flush(client)
            worker.on_paused(await self._is_paused(worker))
            finals = await asyncio.gather(*(self._conn.get_final(final_key(self.queue, t)) for t in long_runs))
            for task_id, data in zip(long_runs, finals, strict=True):
                found = None if data is None else task_of_record(self.queue, task_id, data)
                if found is not None and found.ctx.status is Status.CANCELLED and task_id in self._held:
                    reason = found.ctx.last_error or ""
                    self._stopping[task_id] = reason
                    tell_cancel(worker, task_id, reason)

        async def farewell() -> None:
            await self._unlisten(worker)

        return beat_every(worker, beat, farewell)

    def _stub(self, task_id: TaskId, held: _Held) -> Task[bytes]:
        env = m.envelope_of(held.msg.headers, task_id, self.max_attempts)
        return env.task(self.queue, b"", status=Status.RUNNING, attempts=held.attempts, lock_by=held.worker)


def _seq(msg: Msg) -> int:
    """The stream sequence of a delivered message."""
    return msg.metadata.sequence.stream
