"""One queue of the RSMQ store (`kind = "rsmq"`), in the data layout of npm `rsmq` 0.12 and
PyPI `pyrsmq`.

Layout under namespace `ns` (default "rsmq"), exactly as rsmq writes it:

    ns:QUEUES      set    queue names
    ns:<q>         zset   message id -> the ms timestamp (Redis TIME) at which it becomes visible
    ns:<q>:Q       hash   vt, delay, maxsize, created, modified, totalsent, totalrecv, and per
                          message: <id> (the body), <id>:rc (receive count), <id>:fr (first receive ms)
    ns:rt:<q>      pub/sub channel, published after a send when `realtime` is on

Ids are 32 characters: base36 of Redis TIME in µs, then 22 random `[A-Za-z0-9]`. A message sent
by any rsmq client is a task whose compact payload is the body; a task pushed here is a message
any rsmq client receives with the same body.

How tasks map onto messages:
- Claim = receiveMessage for up to n messages at once; the lease is the visibility timeout, the
  longer of the `vt` option and the worker's `stale_after`, and each heartbeat extends it for
  the tasks the worker runs (changeMessageVisibility). attempts = rc.
- Done = deleteMessage. Retry = visible again at now + backoff, the error kept. Release = visible
  now, rc decremented. Kill = moved to the dead-letter queue `<q>-dead`, itself a plain rsmq
  queue (same id and body), where dead letters are purged after the worker's `retention`.
- A message whose lease ran out while its worker was locked on it was orphaned: it comes back
  with rc + 1, and when rc passes max_attempts it is dead-lettered instead of delivered.
- What rsmq has no place for lives in our side hash `ns:<q>:apalis`: `<id>:ma` (max attempts,
  written by our pushes; messages from other clients get the worker's default), `<id>:lk` (the
  worker holding the lease), `<id>:e` (the last error). The dead-letter queue's side hash keeps
  `<id>:e`, `<id>:rc`, `<id>:ma`, `<id>:at` (killed at, ms). `ns:<q>:apalis:claims` is a zset of
  the messages our workers hold, by claim time: a worker's beat gives back (visible now, rc not
  counted) those it holds but does not run, e.g. a claim whose reply was lost with its
  connection. Other clients ignore these keys.
- Every time is Redis TIME, read inside the scripts, as rsmq does; every change is one script.
- A dropped connection is retried with the core's backoff and budget (`apalis_redis.connection.
  Patience`). A claim or an acknowledgement retried after a lost reply is harmless (the lease
  runs out; the lock check ignores a second ack); a send is not sent again once it was sent
  (rsmq ids come from the server: a second run would store the message twice), it fails in one
  line saying it may have been stored.

rsmq keeps queues outside any hash tag (`ns:QUEUES` and `ns:<q>` are different slots): like
rsmq itself, this store needs a single Redis server, not a Cluster.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgpack
from apalis_cli.backend import Capabilities, Capability, NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.errors import BadPayload
from apalis_cli.polling import beat_every, poll_batches
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task, TaskContext, TaskId
from apalis_redis.connection import ACKNOWLEDGING, Connection
from apalis_redis.control import tell_beat
from apalis_redis.scripts import OUTCOME_CODES

from .browse import RsmqBrowser
from .config import RsmqConfig
from .control import RsmqControl
from .inspector import created_at
from .keys import RsmqKeys

__all__ = ["CAPABILITIES", "RsmqQueue"]

_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_SEND_CHUNK = 2000
_PURGE_LIMIT = 5000
DEFAULT_RETENTION = 7 * 86400.0

CAPABILITIES = Capabilities(
    {
        Capability.PRIORITY: "rsmq orders messages by visibility time only; it has no priorities",
        Capability.RESULTS: (
            "rsmq deletes a message once it is processed: a result is kept only for a task someone "
            "waits for (wait, apalis push --wait)"
        ),
        Capability.IDEMPOTENCY: "rsmq messages carry no key: the same message sent twice is two messages",
        Capability.WORKERS: "rsmq has no worker registry: a worker's liveness is its leases (visibility timeouts)",
        Capability.INSPECT: (
            "rsmq deletes done messages, so done tasks cannot be listed or counted "
            "(pending, running, failed and dead-lettered ones can)"
        ),
        Capability.CLAIMS_AHEAD: "rsmq's deleteMessage and receiveMessage are separate commands of its protocol",
    }
)


class RsmqQueue(RsmqBrowser, RsmqControl, QueueBase):
    """One rsmq queue (and its dead-letter queue) of an `RsmqStore`, built from its connection."""

    capabilities = CAPABILITIES

    def __init__(
        self, connection: Connection, config: RsmqConfig, queue: str, *, codec: Codec, max_attempts: int
    ) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self.connection = connection
        self.config = config
        self.keys = RsmqKeys.of(config.namespace, queue)
        self._channel = self.keys.realtime if config.realtime else ""
        self._created = False
        self.retention = DEFAULT_RETENTION  # the last heartbeat's worker.retention
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._claiming: dict[str, list[float]] = {}
        """Per polling worker, when each of its receives whose reply has not been read yet was
        asked: its beat gives none of their messages back (apalis_cli.ahead.claiming_since)."""
        self._coming: dict[str, list[str]] = {}
        """Per polling worker, the messages its last receive brought, which its poll stream may
        not have handed to it yet (a beat can run first): not lost claims either. Its next
        receive is asked once the stream has handed them all out."""

    async def prepare(self) -> None:
        """createQueue for the queue and its dead-letter queue unless they exist (`apalis check`);
        a queue another rsmq client made keeps its own vt, delay and maxsize."""
        self._created = False
        await self.ensure_queue()

    async def ensure_queue(self) -> None:
        """createQueue for the queue and its dead-letter queue, unless they exist."""
        if self._created:
            return
        k, s = self.keys, self.config
        await self.connection.scripts["create"](
            keys=[k.queues, k.hash, k.dead_hash],
            args=[math.ceil(s.vt), math.ceil(s.delay), s.maxsize, k.queue, k.dead_queue],
        )
        self._created = True

    def _lease_ms(self, worker: WorkerContext) -> int:
        return int(max(self.config.vt, worker.stale_after) * 1000)

    # -- the store's primitives ------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """sendMessage for each task; the ids are rsmq's (made from Redis TIME), not the task's."""
        await self.ensure_queue()
        k, script = self.keys, self.connection.scripts["send"]
        ids: list[TaskId] = []
        for start in range(0, len(tasks), _SEND_CHUNK):
            now, items = time.time(), list[Any]()
            for new in tasks[start : start + _SEND_CHUNK]:
                delay = (new.run_at - now) * 1000
                items += ("".join(random.choices(_CHARSET, k=22)), round(delay) if delay > 1 else -1)
                items += (new.payload, new.max_attempts, 1 if new.waited else 0)
            args = [self._channel, msgpack.packb(items, use_bin_type=False)]
            try:
                reply = await script(keys=[k.zset, k.hash, k.side], args=args)
            except Exception as exc:
                if "messageTooLong" in str(exc):
                    raise BadPayload(f'a payload is larger than the maxsize of rsmq queue "{self.queue}"') from None
                if "queueNotFound" not in str(exc):
                    raise
                self._created = False  # deleted by another client, or a server that lost its data
                await self.ensure_queue()
                reply = await script(keys=[k.zset, k.hash, k.side], args=args)
            ids += (raw.decode() for raw in msgpack.unpackb(reply, raw=True))
        self.sent(ids)
        waker = self.connection.waker(self.queue)
        if not self._channel:
            waker.notify()
        return ids

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Messages received for `worker` in batches of its free slots."""
        script, queue, worker_id, keys = self.connection.scripts["receive"], self.queue, worker.id, self.keys.all
        lease, default_max, control = self._lease_ms(worker), self.max_attempts, self.keys.control
        claiming = self._claiming.setdefault(worker_id, [])
        coming: list[str] = []

        async def fetch(limit: int) -> list[Task[bytes]]:
            coming.clear()  # the last receive's messages were all handed out: they run now
            self._coming[worker_id] = coming  # again after a farewell (a beat that failed)
            await self.ensure_queue()
            asked = time.time()
            claiming.append(asked)
            try:
                raw = await script(keys=keys, args=[limit, lease, worker_id, default_max, control])
            finally:
                claiming.remove(asked)
            reply: list[Any] = msgpack.unpackb(raw, raw=True)
            now = time.time()
            tasks = []
            for i in range(0, len(reply), 6):
                task_id = reply[i].decode()
                tasks.append(
                    Task(
                        id=task_id,
                        args=reply[i + 1],
                        ctx=TaskContext(
                            queue=queue,
                            status=Status.RUNNING,
                            attempts=reply[i + 2],
                            max_attempts=reply[i + 4],
                            run_at=now,
                            lock_by=worker_id,
                            last_error=reply[i + 5].decode() if reply[i + 5] else None,
                            created_at=created_at(task_id),
                        ),
                    )
                )
            coming.extend(task.id for task in tasks)
            return tasks

        async def release(tasks: Sequence[Task[bytes]]) -> None:
            await self.ack_batch([(task, Outcome.release()) for task in tasks])

        return poll_batches(worker, fetch, release, self.connection.waker(queue))

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Apply many outcomes in one script call; a message whose lease was lost is left alone."""
        now, packed = time.time(), list[Any]()
        local_wake = False
        for task, outcome in items:
            delay = max(round((outcome.run_at - now) * 1000), 0) if outcome.run_at is not None else 0
            packed += (task.id, task.ctx.lock_by or "", task.ctx.attempts, OUTCOME_CODES[outcome.kind])
            # A done run's result is kept only if someone waits for it (the script decides).
            text = encode_result(outcome.result) if outcome.kind is OutcomeKind.DONE else outcome.error
            packed += (text or "", delay)
            local_wake = local_wake or outcome.kind is OutcomeKind.RELEASE
        retention_ms = int(self.retention * 1000)
        args = [self._channel, msgpack.packb(packed, use_bin_type=False), self.keys.control, retention_ms]
        with ACKNOWLEDGING:
            await self.connection.scripts["ack"](keys=self.keys.all, args=args)
        if local_wake and not self._channel:
            self.connection.waker(self.queue).notify()

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Extend the leases of the messages `worker` runs, give back those it holds but does
        not run, purge old dead letters, and tell the worker again of the cancels requested of
        its runs and whether the queue is paused."""
        keys, script, lease = self.keys.all, self.connection.scripts["beat"], self._lease_ms(worker)
        retention_ms, keep_alive_ms = int(worker.retention * 1000), int(worker.keep_alive * 1000)
        self.retention = worker.retention
        signals = self.connection.signals
        signals.register(worker)
        self.connection.start_listening()

        async def beat() -> None:
            await self.ensure_queue()
            for _ in range(20):  # more purging only when a backlog of dead letters built up
                # A message received for it by a receive whose reply is still on its way is not a
                # lost claim: the age at which one is given back grows by that receive's age.
                claiming, grace_ms = self._claiming.get(worker.id), keep_alive_ms
                if claiming:
                    grace_ms += int((time.time() - min(claiming)) * 1000) + 1
                _, purged, cancels, paused = await script(
                    keys=keys,
                    args=[
                        lease,
                        worker.id,
                        retention_ms,
                        _PURGE_LIMIT,
                        grace_ms,
                        self.keys.control,
                        *worker.running(),
                        *self._coming.get(worker.id, ()),
                    ],
                )
                tell_beat(worker, cancels, paused)
                if purged < _PURGE_LIMIT:
                    return

        async def farewell() -> None:
            signals.forget(worker.id)
            if not self._claiming.get(worker.id):
                self._claiming.pop(worker.id, None)
            self._coming.pop(worker.id, None)

        return beat_every(worker, beat, farewell, self.connection.contact)
