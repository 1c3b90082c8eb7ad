"""One queue of the Redis store (`kind = "redis"`): every state change is one atomic Lua script.

Layout, for queue `q` under namespace `ns` (default "apalis"); every key of a queue carries the
hash tag `{q}`, so a queue lives in one Redis Cluster slot and its scripts may touch all of it:

    ns:{q}:t:<id>      hash   one task: p payload, s status, a attempts, m max_attempts,
                              r run_at, pr priority, c created_at, k idempotency key, mt meta JSON,
                              l lock_by ('' when none), e last_error, res result JSON, d done_at,
                              cr the reason of a cancel requested while it runs
    ns:{q}:ready       zset   pending/failed tasks that are due; score -priority*1e10 + run_at, so
                              ZPOPMIN takes priority DESC then run_at ASC (exact for |priority| < 1e5);
                              those with a limit key wait in their key's line instead (kp:<key>)
    ns:{q}:scheduled   zset   pending/failed tasks not yet due, by run_at; promoted by the claim
    ns:{q}:kp:<key>    zset   the line of limit key <key>: its due pending/failed tasks, scored as in
                              the ready set but in whole ms, and not in it (global limits: lua/lines.lua)
    ns:{q}:heads       zset   the limit keys with a line, by the score of its first task
    ns:{q}:parked      zset   keys a claim within limits set aside at their limit (lua/claim_limited.lua)
    ns:{q}:below       set    limit keys whose line may hold a task of a priority below 0 (lua/lines.lua)
    ns:{q}:running     zset   claimed tasks, by claim time in integer ms (the orphan sweep walks it)
    ns:{q}:failed      set    tasks whose status is failed (ready or scheduled), for counts
    ns:{q}:done        zset   done tasks, by done_at    (purged after `retention` by the heartbeat;
    ns:{q}:killed      zset   killed tasks, by done_at   their hashes also expire by PEXPIRE)
    ns:{q}:cancelled   zset   cancelled tasks, by done_at (the same)
    ns:{q}:paused      string present while the queue is paused: the claim hands out nothing
    ns:{q}:waiting     zset   ids someone waits for (`wait`), so their end is published
    ns:{q}:k:<key>     string idempotency key -> task id (expires with its task)
    ns:{q}:u:<key>     zset   the tasks pushed with unique key <key>, by the end of their window
                              (expires with the last window; lua/unique.lua)
    ns:{q}:uniques     zset   unique keys with a task of no window, swept by the heartbeat
    ns:{q}:workers     zset   worker id -> last_seen
    ns:{q}:winfo       hash   worker id -> JSON (name, queue, host, pid, started_at, layers, running)
    ns:{q}:idle:v2     zset   polling workers whose last claim left free slots unfilled, scored
                              until_ms * 1000 + slots: a push hands its task to the first one
                              and takes one of its slots (lua/handing.lua)
    ns:{q}:handed:v2   hash   worker id -> MessagePack array of the tasks handed to it that it may
                              not have received yet (lua/handing.lua)
                              (v2: `keys.HANDING_FORMAT`; daemons of the first format read `idle`
                              and `handed`, which this one neither reads nor writes: its heartbeat
                              only drops their entries of workers no longer registered)
    ns:wake:q          pub/sub channel: published when a task becomes ready; idle pollers wake;
                              a task handed to an idle worker travels on it ('h' + the task)
    ns:ctl:q           pub/sub channel: a cancel requested of a running task (its worker stops
                              it), a waited-for task's end (its waiters read it); `signals.py`

On a Redis Cluster (`cluster = true`) the client is redis-py's `RedisCluster`: each script goes
to the node of its queue's slot, and the wake channel is classic pub/sub, which the cluster
delivers to a subscriber on any node.

Times are the client's clock (epoch seconds, passed into each script), the same clock that gives
`run_at` to pushed tasks, so a due task is never hidden by a skew between client and server.
Scripts run with EVALSHA (`scripts.py`: loaded again after NOSCRIPT, e.g. after a server
restart); a dropped connection is retried with capped backoff, and a claim whose reply was lost
is released by the claiming worker's next heartbeat.

Handing over: a lone task would otherwise cost its worker a second round trip after the wake-up
(the claim). A polling worker whose claim leaves free slots unfilled is listed idle for them
(`idle`), and a push whose task would be the next claimed claims it for the first listed worker
in the same script, takes one of its slots and publishes the task itself; that worker's process
starts it as the message is read (`_handed`, `ClaimsAhead.start`), or gives it to the worker's
poll stream when no slot is free there. A run that ends gives
its slot back to the listing when its acknowledgement finds nothing to claim ahead, so a worker
running some tasks is handed the next ones too (one listing for several slots: a push that comes
before the last run's acknowledgement is handed over as well). The stream's next claim is
skipped when nothing woke the queue since (`Connection.wakes`): it would find nothing. A handed
task is an ordinary claim: if the message is lost the worker's heartbeat gives it back as a lost
claim (once it is `stale_after` late: a message merely slow must not have it run twice), if the
worker vanished the orphan sweep does, and a worker that stops gives back those still on their
way (lua/farewell.lua).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from types import MappingProxyType
from typing import Any, Unpack

import msgpack
from apalis_cli.ahead import ClaimsAhead, Fetch, Held
from apalis_cli.backend import Capabilities, Capability, NewTask, PushOptions, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.polling import FIRST_IDLE_WAIT, Waker, beat_every
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome, OutcomeKind
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task, TaskContext, TaskId

from .ackcall import AckCall
from .browse import RedisBrowser
from .connection import ACKNOWLEDGING, Connection, lua
from .control import RedisControl, tell_beat
from .keys import QueueKeys
from .limits import LimitedClaims, unique_args
from .lone import LonePush
from .scripts import OUTCOME_CODES

__all__ = ["CAPABILITIES", "RedisQueue", "scripts"]

_SCRIPTS = (
    "enqueue",
    "push",
    "claim",
    "ack",
    "heartbeat",
    "farewell",
    "retry",
    "kill",
    "purge",
    "cancel",
    "bulk",
    "claim_limited",
    "ack_limited",
    "heads",
    "browse",
    "activity",
)
_LIMITED = ("claim_limited", "ack_limited")  # and lua/limited.lua's (the claim within limits)
_CLAIMING = ("claim", "ack", *_LIMITED)  # the scripts that start with lua/claiming.lua
_CONTROL = ("ack", "heartbeat", "farewell", "retry", "kill", "purge", "cancel", "bulk", *_LIMITED)  # control.lua
_UNIQUE = ("enqueue", "heartbeat")  # and lua/unique.lua's
_PUSHING = ("enqueue",)  # and lua/pushing.lua's (the hand-over); push.lua's inside `handing` (`scripts`)
_HANDING = (*_PUSHING, "claim", "ack", "heartbeat", "farewell")  # and lua/handing.lua's (listings, tasks on their way)
_LINES = (*_CLAIMING, *_CONTROL, "enqueue")  # and lua/lines.lua's (the limit keys' lines), first
_BODY = {"ack_limited": "ack"}  # a script whose own text is another's: ack.lua, with limited.lua before it

CAPABILITIES = Capabilities(offers=frozenset({Capability.FLEET_LIMITS, Capability.UNIQUE}))


def scripts() -> dict[str, str]:
    """The text of every script the queue runs, by name."""
    lines, claiming, control, unique, walk, handing, pushing, limited = (
        lua("apalis_redis", name)
        for name in ("lines", "claiming", "control", "unique", "walk", "handing", "pushing", "limited")
    )
    # push.lua runs on every push: the hand-over's functions (handing.lua, pushing.lua) are
    # built only when it calls `handing`, which it does when a worker is listed idle.
    lazy = f"local function handing()\n{handing}{pushing}return may_hand, hand\nend\n"
    return {
        name: (lazy if name == "push" else "")
        + (lines if name in _LINES else "")
        + (claiming if name in _CLAIMING else "")
        + (handing if name in _HANDING or _BODY.get(name) in _HANDING else "")
        + (control if name in _CONTROL else "")
        + (unique if name in _UNIQUE else "")
        + (pushing if name in _PUSHING else "")
        + (limited if name in _LIMITED else "")
        + (walk if name == "browse" else "")
        + lua("apalis_redis", _BODY.get(name, name))
        for name in _SCRIPTS
    }


_NO_META: MappingProxyType[str, Any] = MappingProxyType({})
_ENQUEUE_CHUNK = 2000  # tasks per script call: big pushes stay in one round trip, no call is huge
PURGE_LIMIT = 5000
_LISTED_IDLE_WAIT = 0.05  # the first idle wait of a worker a push can hand its task to


_PACKER = msgpack.Packer(use_bin_type=False)
"""One packer for every call: `msgpack.packb` makes a `Packer` (its options parsed, its buffer
allocated) per call, 1.0 us against 0.3 for the ack's five fields; two packs per ack. Shared by
threads safely: `pack` holds the GIL throughout, since these arguments call back into no Python."""


def _pack(items: list[Any]) -> bytes:
    """Script arguments as one MessagePack array (old raw strings: what Lua's cmsgpack reads)."""
    packed: bytes = _PACKER.pack(items)
    return packed


def _unpack(reply: bytes) -> list[Any]:
    """A script's MessagePack reply; strings stay bytes."""
    unpacked: list[Any] = msgpack.unpackb(reply, raw=True)
    return unpacked


DEFAULT_RETENTION = 7 * 86400.0


class RedisQueue(RedisBrowser, RedisControl, QueueBase):
    """One queue of a `RedisStore`, built from its connection (not the store)."""

    capabilities = CAPABILITIES

    def __init__(self, connection: Connection, namespace: str, queue: str, *, codec: Codec, max_attempts: int) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self.connection = connection
        self.keys = QueueKeys.of(namespace, queue)
        self.retention = DEFAULT_RETENTION  # the last heartbeat's worker.retention
        self._ahead = ClaimsAhead(self.ack_batch, Held)
        self._limited: dict[str, LimitedClaims] = {}  # the polling workers with global limits, by id
        self._got: dict[str, str] = {}  # polling worker id -> the id of the last task handed to it
        self._spans: dict[str, float] = {}  # polling worker id -> how long its idle listing holds (s)
        # Polling worker id -> the queue's wake count when a task was last handed to it, until
        # its next claim (`_handed`: that claim is skipped when nothing woke the queue since).
        self._fresh: dict[str, int] = {}
        self._releasing: set[asyncio.Future[None]] = set()
        # The hot path's constant arguments as bytes: redis-py encodes every str argument anew
        # on every call (the ack call's packing took a third less time with these).
        k = self.keys
        # Tuples: the scripts pack a tuple of keys once (`Script.head`).
        self._ack_keys = tuple(key.encode() for key in (*k.statuses, k.idle, k.handed))
        self._claim_keys = (*self._ack_keys[:4], *self._ack_keys[7:])  # ready, scheduled, running, failed, idle, handed
        self._base, self._wake, self._control = k.base.encode(), k.wake.encode(), k.control.encode()
        self._lone = LonePush(connection, k)
        self._ack = AckCall(connection, self._ack_keys, self._base, self._wake, self._control)

    # -- the store's primitives ------------------------------------------------------------

    async def push_compact(self, compact: bytes, **options: Unpack[PushOptions]) -> TaskId:
        """Enqueue already-encoded bytes; a push without options packs its own call (`LonePush.now`)."""
        if options or type(compact) is not bytes:
            return await super().push_compact(compact, **options)
        return await self._lone.now(compact, self.max_attempts)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Insert tasks, many per script call and every call in one pipeline round trip."""
        if len(tasks) == 1:
            new = tasks[0]
            if not (new.idempotency_key or new.meta or new.limit_key is not None or new.unique is not None):
                return [await self._lone.task(new)]  # the common push, one at a time: lua/push.lua
        k, script = self.keys, self.connection.scripts["enqueue"]
        now = repr(time.time())
        calls = []
        for start in range(0, len(tasks), _ENQUEUE_CHUNK):
            items: list[Any] = []
            for new in tasks[start : start + _ENQUEUE_CHUNK]:
                items += (
                    new.id,
                    new.payload,
                    repr(float(new.run_at)),
                    str(int(new.priority)),
                    str(int(new.max_attempts)),
                    new.idempotency_key or "",
                    json.dumps(dict(new.meta), separators=(",", ":")) if new.meta else "",
                    "" if new.limit_key is None else "=" + new.limit_key,
                    "" if new.unique is None else unique_args(new.unique),
                )
            args = [k.base, now, k.wake, _pack(items)]
            calls.append(args)
        keys = [k.ready, k.scheduled, k.idle, k.handed, k.running]
        if len(calls) == 1:
            replies = [await script(keys=keys, args=calls[0])]
        else:
            from redis.exceptions import NoScriptError

            async with self.connection.client.pipeline(transaction=False) as pipe:
                for args in calls:
                    await script(keys=keys, args=args, client=pipe)
                replies = await pipe.execute(raise_on_error=False)
            # A cluster's pipeline does not load a script its node has not seen: a batch that
            # answered NOSCRIPT did nothing, and goes again alone (a lone call loads the script).
            for n, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):
                    replies[n] = await script(keys=keys, args=calls[n])
                elif isinstance(reply, Exception):
                    raise reply
        return [raw.decode() for reply in replies for raw in _unpack(reply)]

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Ready tasks, claimed for `worker` in batches of its free slots; a push wakes it.

        Tasks claimed ahead by `ack_batch` (for the slots its outcomes free) come first, so a
        busy worker makes one round trip per batch, not two.
        """

        def start() -> tuple[Fetch, Waker]:
            script, worker_id, base = self.connection.scripts["claim"], worker.id, self._base
            waker = self.connection.waker(self.queue)
            if worker.limits is not None:
                claim_keys = list(self._ack_keys[:4])  # ready, scheduled, running, failed
                limited = LimitedClaims(self.connection.scripts["claim_limited"], claim_keys, base, worker, waker)
                self._limited[worker_id] = limited

                async def fetch_limited(limit: int) -> list[Task[bytes]]:
                    return self._tasks(await limited.claim(limit), worker_id)

                return fetch_limited, waker

            # Listed idle by a claim that finds nothing: pushes hand it their tasks (`_handed`).
            self.connection.take_handed(self.queue, self._handed)
            got, keys, span = self._got, self._claim_keys, worker.poll_interval + worker.keep_alive
            got.setdefault(worker_id, "")
            self._spans[worker_id] = span
            fresh, wakes, queue = self._fresh, self.connection.wakes, self.queue
            fresh.pop(worker_id, None)  # a new stream (after an error) claims first

            async def fetch(limit: int) -> list[Task[bytes]]:
                handed_at = fresh.pop(worker_id, None)
                if handed_at is not None and handed_at == wakes(queue):
                    # The first claim after a task was handed over: it would find nothing (the
                    # push found nothing ready, and whatever became ready since woke the queue),
                    # and the handed task's acknowledgement claims for its slot and lists the
                    # worker idle again. One round trip less per lone task.
                    return []
                now = time.time()
                args = [base, repr(now), limit, worker_id, got[worker_id], int((now + span) * 1000)]
                return self._tasks(_unpack(await script(keys=keys, args=args)), worker_id)

            return fetch, waker

        # Listed idle, it is handed what is pushed: its timer claims only for work nobody
        # signals (a delayed task or a retry falling due), so it first waits 50 ms, not 5 (at 200
        # tasks/s the 5 ms timer fired just before every other push: a claim that found nothing).
        first_wait = FIRST_IDLE_WAIT if worker.limits is not None else _LISTED_IDLE_WAIT
        return self._unlisted(worker, self._ahead.poll(worker, start, first_wait))

    async def _unlisted(
        self, worker: WorkerContext, stream: AsyncIterator[Task[bytes] | None]
    ) -> AsyncIterator[Task[bytes] | None]:
        """`stream`, after which `worker` is no longer listed idle: nothing is handed to a worker
        that stopped polling (a task on its way is given back: `_handed`, lua/farewell.lua)."""
        try:
            async for task in stream:
                yield task
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            self._limited.pop(worker.id, None)
            if worker.id in self._got:
                with contextlib.suppress(Exception):  # the store is away: the listing expires
                    await self.connection.client.zrem(self.keys.idle, worker.id)

    def _handed(self, message: list[Any]) -> None:
        """A task handed to a worker on the wake channel: to its poll stream, if it is ours."""
        worker_id = message[0].decode()
        if worker_id not in self._got:
            return  # another process's worker, or one that stopped
        tasks = self._tasks(message[1:], worker_id)
        self._got[worker_id] = tasks[0].id
        # Started here, as the message is read, when the worker has a free slot: its poll
        # stream is not woken, and makes no claim for it.
        left = self._ahead.start(self._ahead.holder(worker_id), tasks)
        if left:
            self._fresh[worker_id] = self.connection.wakes(self.queue)
        elif left is None:
            # Its poll stream has closed (the worker stops, or polls again after an error).
            release = asyncio.ensure_future(self._ahead.release(tasks))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)

    def _tasks(self, reply: list[Any], worker_id: str) -> list[Task[bytes]]:
        """Tasks from a claim's reply: 10 fields each (see lua/claiming.lua)."""
        queue, fields = self.queue, iter(reply)
        # Ten at a time by zip: cheaper per task than indexing the reply ten times.
        return [
            Task(
                id=task_id.decode(),
                args=payload,
                ctx=TaskContext(
                    queue=queue,
                    status=Status.RUNNING,
                    attempts=attempts,
                    max_attempts=int(max_attempts),
                    run_at=float(run_at),
                    priority=int(priority),
                    idempotency_key=key.decode() if key else None,
                    meta=json.loads(meta) if meta else _NO_META,
                    lock_by=worker_id,
                    last_error=error.decode() if error else None,
                    created_at=float(created_at),
                ),
            )
            for task_id, payload, attempts, max_attempts, run_at, priority, key, meta, created_at, error in zip(
                *[fields] * 10, strict=False
            )
        ]

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Apply many outcomes in one script call; a task whose lease was lost is left alone.

        In the same call, each polling worker whose runs ended here gets up to as many new
        tasks claimed as those runs free slots (never more: backpressure holds).
        """
        packed: list[Any] = []
        for task, outcome in items:
            kind = outcome.kind
            text = (encode_result(outcome.result) if kind is OutcomeKind.DONE else outcome.error) or ""
            run_at = repr(float(outcome.run_at)) if outcome.run_at is not None else "0"
            packed += (task.id, task.ctx.lock_by or "", OUTCOME_CODES[kind], text, run_at)
        # Workers with global limits claim within them (lua/limited.lua), carried by the same
        # call: the script ack_limited, which replies with their claims apart.
        wanted, limited_wanted = [], []
        limited = self._limited
        for ahead, n in self._ahead.wanted(items):
            if ahead.worker_id in limited:
                limited_wanted.append((ahead, n))
            else:
                wanted.append((ahead, n))
        claims = b""
        now = time.time()
        if wanted:
            got, spans = self._got, self._spans
            fields: list[Any] = []
            for ahead, count in wanted:
                wid = ahead.worker_id
                span = spans.get(wid)
                fields += (wid, count, got.get(wid, ""), "" if span is None else int((now + span) * 1000))
            claims = _pack(fields)
        ack, clock, retention, outcomes = self._ack, repr(now), int(self.retention * 1000), _pack(packed)
        if not (wanted or limited_wanted):
            with ACKNOWLEDGING:
                await ack(clock, retention, outcomes, claims)
            return
        claiming = [*wanted, *limited_wanted]
        for ahead, _ in claiming:
            ahead.claiming.append(now)  # its beat leaves alone what this call claims for it
        try:
            with ACKNOWLEDGING:
                if limited_wanted:
                    limited_fields = [
                        field for ahead, n in limited_wanted for field in limited[ahead.worker_id].ack_fields(n)
                    ]
                    args = [*ack.args(clock, retention, outcomes, claims), _pack(limited_fields)]
                    reply = _unpack(await self.connection.scripts["ack_limited"](keys=self._ack_keys, args=args))
                else:
                    reply = _unpack(await ack(clock, retention, outcomes, claims))
            got_rows = reply if not limited_wanted else reply[0]
            for (ahead, _), rows in zip(wanted, got_rows, strict=True):
                if rows:
                    self._fresh.pop(ahead.worker_id, None)  # more may be ready: its next claim is made
                    await self._ahead.hand_over(ahead, self._tasks(rows, ahead.worker_id))
            for (ahead, _), claim in zip(limited_wanted, reply[1] if limited_wanted else (), strict=True):
                rows = limited[ahead.worker_id].took(claim)
                if rows:
                    await self._ahead.hand_over(ahead, self._tasks(rows, ahead.worker_id))
        finally:
            for ahead, _ in claiming:
                ahead.claiming.remove(now)

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Register `worker` (an upsert, so it re-registers after any loss), sweep orphans and
        the worker's own lost claims, and purge finished tasks past retention.

        Orphans are swept only once this process has had the server reachable, and been awake
        itself (no stall), for `stale_after` (`apalis_cli.contact`). The cutoff is taken before
        the call: a call that redis-py retries across an outage still judges workers by their
        heartbeats from before it."""
        k, script, contact = self.keys, self.connection.scripts["heartbeat"], self.connection.contact
        self.retention = worker.retention
        signals = self.connection.signals
        signals.register(worker)
        self.connection.start_listening()

        async def beat() -> None:
            for _ in range(20):  # more purging only when a backlog of finished tasks built up
                now = time.time()
                stale = repr(now - worker.stale_after) if contact.may_sweep(worker.id, worker.stale_after) else "-inf"
                running = [*worker.running(), *self._ahead.held(worker.id)]  # held: not lost claims
                # Nor are the tasks of a claim still on its way to the worker (ahead.claiming_since).
                release = now - worker.keep_alive
                asked = self._ahead.claiming_since(worker.id)
                if asked is not None and asked - 0.001 < release:  # a claim's time is kept in whole ms
                    release = asked - 0.001
                info = {
                    "name": worker.name,
                    "queue": self.queue,
                    "host": worker.host,
                    "pid": worker.pid,
                    "started_at": worker.started_at,
                    "layers": list(worker.layers),
                    "running": len(running),
                }
                _, purged, cancels, paused = await script(
                    keys=[*k.statuses, k.workers, k.winfo, k.idle, k.handed, *k.earlier_handing],
                    args=[
                        k.base,
                        repr(now),
                        k.wake,
                        worker.id,
                        json.dumps(info, separators=(",", ":")),
                        stale,
                        repr(release),
                        repr(now - worker.retention),
                        PURGE_LIMIT,
                        int(worker.retention * 1000),
                        k.control,
                        self._got.get(worker.id, ""),
                        *running,
                    ],
                )
                tell_beat(worker, cancels, paused)
                if purged < PURGE_LIMIT:
                    return

        async def farewell() -> None:
            signals.forget(worker.id)
            await self.connection.scripts["farewell"](
                keys=[*k.statuses, k.workers, k.winfo, k.idle, k.handed],
                args=[
                    worker.id,
                    self._got.get(worker.id, ""),
                    k.base,
                    repr(time.time()),
                    k.wake,
                    int(self.retention * 1000),
                    k.control,
                ],
            )
            if self._ahead.holder(worker.id) is None:  # it stopped (not a beat that failed)
                # Forgotten only now: a task still on its way to it went back with the farewell,
                # and one that arrived until then was given back by `_handed`.
                self._got.pop(worker.id, None)
                self._spans.pop(worker.id, None)
                self._fresh.pop(worker.id, None)

        return beat_every(worker, beat, farewell, contact)
