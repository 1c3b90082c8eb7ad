"""An apalis queue on RabbitMQ (`kind = "amqp"`): one durable RabbitMQ queue per apalis queue, no plugins.

Queues, for apalis queue `q` under prefix `p`:

- `p.q`: the work queue (durable, `x-max-priority`); persistent messages, published with
  confirms, consumed with manual acks and prefetch = the worker's concurrency.
- `p.q.delay.<ms>`: one delay queue per delay (rounded up to two significant digits). It has no
  consumer: its `x-message-ttl` expires messages, which dead-letter back into `p.q`. One queue
  per delay because a TTL only expires at the head of a queue: mixed delays would block each
  other. `x-expires` deletes a delay queue unused for a minute past its TTL. Scheduled pushes
  and retry backoff both go through them.
- `p.q.dead`: killed tasks, with the error in the `x-apalis-error` header.

A work or dead-letter queue someone else declared first with other arguments (a producer that
followed the RabbitMQ tutorial: durable, no `x-max-priority`) is used as it is, said once in the
log; a delay queue with other arguments is refused in one line (its TTL is what makes it work).
A queue deleted while in use is declared again: a message the broker returns unroutable is
published again, and a consumer the broker cancelled consumes again.

Outcomes: done = ack. Retry = publish a copy (attempts counted, error attached) into the delay
queue, wait for the confirm, then ack the original; kill = the same into `p.q.dead`; release =
the same into `p.q` with the attempt not counted. Nothing is lost between publish and ack: a
crash there leaves a duplicate (at-least-once), never a gap.

Counting attempts: RabbitMQ cannot edit a queued message, so the count travels in the
`x-apalis-attempts` header and every counted hop is a new copy. A delivery flagged
`redelivered` was held by a consumer whose channel closed without settling it (a dead worker, a
lost connection): that run was lost and counts. The store persists the count before running it
again (a copy with attempts + 1 replaces it, or it goes to `.dead` when exhausted), so a task
that kills its worker every time is killed after `max_attempts`, never looped. Releases never
use `nack(requeue)`, which would set the same flag.

Orphans: the broker requeues a dead connection's unacknowledged messages by itself. Inside one
process, a worker whose heartbeats stopped for `stale_after` has its channel closed by a live
worker's sweep, which gives the same result.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from apalis_cli.backend import Capabilities, Capability, NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.errors import ConnectionLost
from apalis_cli.polling import beat_every, woken
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task, TaskId

from .connection import FAILURES, Connection, delay_bucket
from .consumer import Consumer, Consumers
from .control import PAUSE_KEY, AmqpControl, final_record, records_message
from .inspector import AmqpInspector
from .messages import copy_message, new_message, read_envelope

__all__ = ["CAPABILITIES", "AmqpQueue"]

CAPABILITIES = Capabilities(
    {
        Capability.CANCEL: (
            "a RabbitMQ queue cannot be searched by id: a cancel could not tell a task that waits from one that "
            "ended long ago or never existed, nor take it out of the queue"
        ),
        Capability.BULK: "a RabbitMQ queue cannot be filtered: a bulk action would have to consume the whole queue",
        Capability.PRIORITY: (
            "RabbitMQ orders a queue by message priority (0..max_priority, negatives as 0) and then by arrival, "
            "not by run_at; priorities are honoured that far"
        ),
        Capability.RESULTS: "a broker forgets a message once it is acknowledged: there is nowhere to keep a result",
        Capability.IDEMPOTENCY: "RabbitMQ has no message deduplication: the same key twice makes two messages",
        Capability.INSPECT: (
            "a RabbitMQ queue cannot be browsed: a peek (basic.get + requeue) marks messages redelivered, which "
            "this store reads as a lost run; stats count ready and dead messages, and only the dead-letter queue "
            "is listed"
        ),
        Capability.WORKERS: "RabbitMQ knows connections and consumers, not apalis workers: there is no registry",
        Capability.ADMIN: "a queue has no random access: a task cannot be found by id without consuming the queue",
        Capability.CLAIMS_AHEAD: "RabbitMQ pushes deliveries up to the consumer's prefetch: no claim rides on an ack",
    }
)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a shielded call nobody awaits any more (a stopped poll's)."""
    if not future.cancelled():
        future.exception()


_LOST = "worker {worker} stopped sending heartbeats (its channel closed) while running this task"


class AmqpQueue(QueueBase, AmqpInspector, AmqpControl):
    """One apalis queue on RabbitMQ."""

    capabilities = CAPABILITIES

    def __init__(
        self, connection: Connection, consumers: Consumers, queue: str, *, codec: Codec, max_attempts: int
    ) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self._conn = connection
        self._consumers = consumers
        self.work = f"{connection.config.prefix}.{queue}"
        self.dead = f"{self.work}.dead"
        self._max_priority = connection.config.max_priority
        self._work_args: dict[str, Any] | None = {"x-max-priority": self._max_priority} if self._max_priority else None
        self._paused = False  # as the control exchange or the paused queue last said
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._workers: dict[str, WorkerContext] = {}  # the workers polling through this object

    # -- pushing ---------------------------------------------------------------------------

    def _amqp_priority(self, priority: int) -> int:
        return min(max(priority, 0), self._max_priority)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Publish tasks (due ones to the work queue, later ones to delay queues), confirmed."""

        async def publish() -> None:
            await self._ensure_queues()
            now = time.time()
            batch = []
            for task in tasks:
                message = new_message(task, self._amqp_priority(task.priority))
                batch.append((await self._route(task.run_at - now), message))
            await self._conn.publish_many(batch)

        await self._conn.retrying(publish)
        return [task.id for task in tasks]

    async def prepare(self) -> None:
        """Declare the work queue and the dead-letter queue (`apalis check` does this)."""
        await self._conn.retrying(self._ensure_queues)

    async def _ensure_queues(self) -> None:
        await self._conn.declare(self.work, self._work_args)
        await self._conn.declare(self.dead)
        await self._ensure_control()

    async def _route(self, delay: float, routes: dict[int, str] | None = None) -> str:
        """The queue for a message due in `delay` seconds (delay queues declared once per batch)."""
        if delay <= 0.0005:
            return self.work
        ms = delay_bucket(delay)
        if routes is not None and ms in routes:
            return routes[ms]
        name = await self._conn.declare_delay(self.work, ms)
        if routes is not None:
            routes[ms] = name
        return name

    # -- polling ---------------------------------------------------------------------------

    async def _consumer(self, worker: WorkerContext, *, start: bool = True) -> Consumer:
        key = (self.queue, worker.id)
        consumer = self._consumers.by_worker.get(key)
        if consumer is None or consumer.closed:
            self._conn.forget(self.work)  # a channel closes on a deleted queue, too
            await self._ensure_queues()
            channel = await self._conn.channel()
            queue = await channel.declare_queue(self.work, passive=True)  # as declared: ours or not
            consumer = self._consumers.by_worker[key] = Consumer(worker.id, channel, queue)
        elif consumer.cancelled:  # its queue was deleted: declare it again, consume on the same channel
            self._conn.forget(self.work)
            await self._ensure_queues()
            await consumer.start(worker.concurrency, await consumer.channel.declare_queue(self.work, passive=True))
        if start:
            await consumer.start(worker.concurrency)
        return consumer

    async def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Tasks as the broker pushes them (at most the worker's concurrency unacknowledged).

        Idle (None) only once the broker says no message is ready: a burst run must not end
        while the broker is about to push what the queue holds. While the queue is paused the
        worker does not consume at all (what it had been pushed goes back first)."""
        await self._conn.retrying(self._ensure_queues)
        self._apply_paused(await self._read_paused())
        consumer = await self._consumer(worker, start=not self._paused)
        self._workers[worker.id] = worker
        control = await self._listen_control(consumer)
        try:
            while True:
                if self._paused:
                    unclaimed = await consumer.stop()
                    if unclaimed and not consumer.closed:
                        await self._requeue(unclaimed)
                    yield None
                    await woken(self._resumed, worker.poll_interval)
                    continue
                if not consumer.consuming and not consumer.closed and not consumer.cancelled:
                    await consumer.start(worker.concurrency)
                if consumer.buffer:
                    task = await self._admit(consumer, consumer.buffer.popleft(), worker)
                    if task is not None:
                        yield task
                    continue
                if consumer.closed:
                    raise ConnectionLost("the RabbitMQ channel closed")
                if consumer.cancelled:
                    raise ConnectionLost(f'RabbitMQ cancelled the consumer of "{self.work}" (the queue was deleted?)')
                consumer.arrived.clear()
                # Shielded: aiormq closes a channel whose RPC is cancelled (a stopping worker
                # cancels its poll), and that channel still has to acknowledge the running tasks.
                asking = asyncio.ensure_future(consumer.ready())
                asking.add_done_callback(_retrieved)
                if await asyncio.shield(asking) and not consumer.buffer:
                    # Ready messages the broker has not pushed yet: wait for them (another
                    # consumer may take them first, so not for ever).
                    await woken(consumer.arrived, worker.poll_interval)
                    if consumer.buffer or consumer.closed or consumer.cancelled or self._paused:
                        continue
                if consumer.buffer:
                    continue
                yield None
                if not consumer.buffer and not consumer.closed:
                    await woken(consumer.arrived, worker.poll_interval)
        finally:
            self._workers.pop(worker.id, None)
            if control is not None and not consumer.closed:
                with contextlib.suppress(*FAILURES):
                    await control[0].cancel(control[1])
            unclaimed = await consumer.stop()
            if unclaimed and not consumer.closed:
                await self._requeue(unclaimed)

    async def _listen_control(self, consumer: Consumer) -> tuple[AbstractQueue, str] | None:
        """An exclusive queue of this worker's bound to the control exchange, consumed on its
        channel: pauses and resumes arrive there within milliseconds."""
        queue = await consumer.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.control_exchange, PAUSE_KEY)

        async def on_control(message: AbstractIncomingMessage) -> None:
            paused = message.body == b"1"
            self._apply_paused(paused)
            if paused:
                # Stop consuming before answering: the pause returns once every consumer has.
                unclaimed = await consumer.stop()
                if unclaimed and not consumer.closed:
                    await self._requeue(unclaimed)
            if message.reply_to:
                with contextlib.suppress(*FAILURES):
                    reply = aio_pika.Message(b"stopped")
                    await consumer.channel.default_exchange.publish(reply, routing_key=message.reply_to)

        tag = await queue.consume(on_control, no_ack=True)
        return queue, tag

    def _apply_paused(self, paused: bool) -> None:
        """Take the queue's paused state as now known: tell the workers, wake their polls."""
        self._paused = paused
        if paused:
            self._resumed.clear()
        else:
            self._resumed.set()
        for worker in list(self._workers.values()):
            worker.on_paused(paused)
            consumer = self._consumers.by_worker.get((self.queue, worker.id))
            if consumer is not None:
                consumer.arrived.set()

    async def _admit(
        self, consumer: Consumer, message: AbstractIncomingMessage, worker: WorkerContext
    ) -> Task[bytes] | None:
        """The task a delivery starts, or None when it was a lost run now persisted instead."""
        envelope = read_envelope(message, self.max_attempts)
        if message.redelivered:
            lost = envelope.attempts + 1
            if lost >= envelope.max_attempts:
                error = _LOST.format(worker="(unknown)")
                copy = copy_message(message, id=envelope.id, attempts=lost, error=error, done_at=time.time())
                target = self.dead, copy
            else:
                target = self.work, copy_message(message, id=envelope.id, attempts=lost)
            published = [target]
            if target[0] == self.dead:  # its end, for waiters, confirmed with the copy before the ack
                record = final_record(Status.KILLED, envelope, attempts=lost, error=error, result=None)
                published.append((self.finals, records_message([record])))
            await self._conn.retrying(lambda: self._conn.publish_many(published))
            await message.ack()
            return None
        attempts = envelope.attempts + 1
        consumer.hold(envelope.id, message, attempts)
        return envelope.task(self.queue, message.body, status=Status.RUNNING, attempts=attempts, lock_by=worker.id)

    async def _requeue(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Hand back deliveries that never started: copies to the work queue, then acks."""
        await self._conn.retrying(lambda: self._conn.publish_many([(self.work, copy_message(m)) for m in messages]))
        for message in messages:
            await message.ack()

    # -- acknowledging ---------------------------------------------------------------------

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Settle outcomes: copies and the batch's final records (one message of the finals
        stream, which `wait` reads) published and confirmed first, then the originals acked: an
        end the broker did not take (lost in its crash, or its stream deleted) leaves the task's
        message unacknowledged, so the task is redelivered, not its waiter's answer lost.

        A message stays held until its copy is confirmed: after a failed publish the heartbeat
        still sees it (and puts it back once its run is over), and a lost connection is raised
        as `ConnectionLost` (the broker then redelivers what the channel held)."""
        now = time.time()
        copies: list[tuple[str, aio_pika.Message]] = []
        records: list[dict[str, Any]] = []
        settled: list[tuple[Consumer, TaskId, AbstractIncomingMessage]] = []
        routes: dict[int, str] = {}
        try:
            for task, outcome in items:
                consumer = self._consumers.by_worker.get((self.queue, task.ctx.lock_by or ""))
                held = consumer.held.get(task.id) if consumer is not None else None
                if held is None or consumer is None or consumer.closed:
                    continue  # the lease was lost: the broker redelivers the message
                message, kind = held.message, outcome.kind
                if kind is OutcomeKind.RETRY:
                    run_at = outcome.run_at if outcome.run_at is not None else now
                    copy = copy_message(message, id=task.id, attempts=held.attempts, error=outcome.error, run_at=run_at)
                    copies.append((await self._route(run_at - now, routes), copy))
                elif kind in (OutcomeKind.KILL, OutcomeKind.CANCEL):
                    # A cancel is not offered here (see CAPABILITIES); a run stopped as cancelled
                    # by other means ends killed, with its reason.
                    copy = copy_message(message, id=task.id, attempts=held.attempts, error=outcome.error, done_at=now)
                    copies.append((self.dead, copy))
                elif kind is OutcomeKind.RELEASE:
                    copies.append((self.work, copy_message(message, id=task.id, attempts=max(held.attempts - 1, 0))))
                if kind in (OutcomeKind.DONE, OutcomeKind.KILL, OutcomeKind.CANCEL):
                    envelope = read_envelope(message, self.max_attempts)
                    status = Status.DONE if kind is OutcomeKind.DONE else Status.KILLED
                    result = encode_result(outcome.result) if kind is OutcomeKind.DONE else None
                    record = final_record(status, envelope, attempts=held.attempts, error=outcome.error, result=result)
                    records.append(record)
                settled.append((consumer, task.id, message))
            if records:  # the ends, for waiters: confirmed with the copies, in the same round trip
                copies.append((self.finals, records_message(records)))
            await self._conn.publish_many(copies)
        except FAILURES as exc:
            raise ConnectionLost(f"RabbitMQ: {exc!r}") from exc
        for consumer, task_id, _ in settled:
            consumer.held.pop(task_id, None)
        # An ack that fails found its channel gone: the broker redelivers that message (a
        # duplicate run, never a loss), so the failure is not this batch's.
        await asyncio.gather(*(message.ack() for _, _, message in settled), return_exceptions=True)

    # -- heartbeat -------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Prove the connection, note this worker's beat, and close stale workers' channels."""
        shared = self._consumers

        async def beat() -> None:
            # Noted before the round trips below: the worker is alive when its loop runs its
            # beat, however long a loaded broker then takes to answer.
            now = time.time()
            shared.beats[worker.id] = now
            steady = shared.contact.may_sweep(worker.id, worker.stale_after)
            await self._conn.connection()
            self._workers[worker.id] = worker
            self._apply_paused(await self._read_paused())  # a control message missed meanwhile
            for (queue, worker_id), consumer in list(shared.by_worker.items()):
                if queue != self.queue:
                    continue
                if worker_id == worker.id:
                    await self._release_idle(consumer, worker, now)
                elif steady and shared.beats.get(worker_id, 0.0) < now - worker.stale_after:
                    del shared.by_worker[(queue, worker_id)]
                    shared.beats.pop(worker_id, None)
                    unclaimed = await consumer.stop()
                    if unclaimed and not consumer.closed:
                        await self._requeue(unclaimed)
                    await consumer.close()  # the broker requeues its held tasks, flagged redelivered

        async def farewell() -> None:
            self._workers.pop(worker.id, None)
            shared.beats.pop(worker.id, None)
            consumer = shared.by_worker.pop((self.queue, worker.id), None)
            if consumer is not None:
                unclaimed = await consumer.stop()
                if unclaimed and not consumer.closed:
                    await self._requeue(unclaimed)
                await consumer.close()

        return beat_every(worker, beat, farewell, shared.contact)

    async def _release_idle(self, consumer: Consumer, worker: WorkerContext, now: float) -> None:
        """Tasks this worker holds but does not run (a hand-over lost mid-way) go back."""
        running = worker.running()
        idle = [
            tid for tid, held in consumer.held.items() if tid not in running and held.since < now - worker.keep_alive
        ]
        for task_id in idle:
            held = consumer.held.pop(task_id)
            copy = copy_message(held.message, id=task_id, attempts=max(held.attempts - 1, 0))
            await self._conn.publish_many([(self.work, copy)])
            await held.message.ack()
