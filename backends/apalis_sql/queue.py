"""`SqlQueue`: one queue of a server-backed SQL store (PostgreSQL, MySQL/MariaDB), written once.

The flow is the same on every server; what differs is asked of the store's `SqlDatabase`:

- push: `insert` (skipping ids and keys already stored); a key held by another task gives its
  id (`key_holders`). Pollers here are woken at once, elsewhere by the server's push path. A
  task with a unique key is pushed on its own, in its key's locked transaction (`limits`).
- poll: `ClaimsAhead.poll` over `claim`: batches of free slots, tasks claimed ahead first; a
  worker with global limits claims within them instead (`limits`).
- ack: the batch grouped by outcome (`plan_acks`), applied by `ack` in one write that also
  claims, for each polling worker whose runs ended here, as many tasks as those runs free (so
  a busy worker waits for one round trip or commit per batch, not two).
- heartbeat: register the worker, tell it of the cancels of its runs and of a pause, give back
  its lost claims, and (one worker of the queue at a time, under the sweep lock, once this
  process's contact with the server is steady) forget silent workers, recover their tasks and
  purge expired ones.
- control: cancel, pause, wait and bulk actions (`control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from apalis_cli.ahead import ClaimsAhead, Fetch, Held, Start
from apalis_cli.backend import Capabilities, Capability, NewTask, WorkerContext
from apalis_cli.codec import Codec
from apalis_cli.fleet import KeyedClaims
from apalis_cli.polling import FIRST_IDLE_WAIT, Waker, beat_every
from apalis_cli.queue_base import QueueBase
from apalis_cli.service import Outcome
from apalis_cli.task import Task, TaskId

from .acks import AckPlan, plan_acks
from .control import SqlControl
from .database import Backlog, BeatAsk, Handing, Rows, Session, SqlDatabase
from .housekeeping import Housekeeping
from .inspector import SqlInspector
from .limits import LimitedClaims, push_unique
from .rows import worker_params

__all__ = ["CAPABILITIES", "SqlQueue"]

CAPABILITIES = Capabilities(offers=frozenset({Capability.FLEET_LIMITS, Capability.UNIQUE}))
PURGE_BATCH = 10_000
"""The most expired tasks one statement of a purge beside the heartbeat deletes."""
LISTED_IDLE_WAIT = 0.05
"""The first idle wait of a worker that pushes hand their tasks to."""


class SqlQueue(QueueBase, SqlInspector, SqlControl):
    """One queue of a SQL store, over its `SqlDatabase` (its control plane is `SqlControl`)."""

    capabilities = CAPABILITIES

    def __init__(self, database: SqlDatabase, queue: str, *, codec: Codec, max_attempts: int) -> None:
        super().__init__(queue, codec=codec, max_attempts=max_attempts)
        self._db = database
        self._ahead = ClaimsAhead(self.ack_batch, Backlog)
        self._limited = LimitedClaims(database, queue)
        self._releasing: set[asyncio.Future[None]] = set()  # handed tasks going back (`_handed`)
        self._waking: set[asyncio.Future[None]] = set()  # the wake-ups of beats (`_wake_beside`)
        self._tidying = Housekeeping("tidying the tasks table after a sweep")  # `_tidy_beside`

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Insert tasks (other processes woken); known keys give the existing ids."""
        if not tasks:
            return []
        db, queue = self._db, self.queue
        if any(t.unique is not None for t in tasks):
            return await self._enqueue_unique(tasks)
        inserted = await db.insert(queue, tasks)
        db.waker(queue).notify()
        keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
        if inserted == len(tasks) or not keys:
            return [t.id for t in tasks]  # a task skipped without a key was stored by an earlier try
        return await self._key_holders(tasks, [t.id for t in tasks])

    async def _enqueue_unique(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """Tasks with a unique key one at a time, in order (two of one key in a batch see each
        other), those without in one insert."""
        db, queue = self._db, self.queue
        plain = [t for t in tasks if t.unique is None]
        woken = bool(plain) and await db.insert(queue, plain) > 0  # other processes woken by it
        ids, wrote = [], False
        for task in tasks:
            if task.unique is None:
                ids.append(task.id)
                continue
            task_id, changed = await push_unique(db, queue, task)
            ids.append(task_id)
            wrote = wrote or changed
        if wrote and not woken:
            await db.notify(queue)  # here and in other processes
        else:
            db.waker(queue).notify()
        return await self._key_holders(tasks, ids) if any(t.idempotency_key for t in tasks) else ids

    async def _key_holders(self, tasks: Sequence[NewTask], ids: list[TaskId]) -> list[TaskId]:
        """`ids`, with the holder of each idempotency key in place of the task that had it."""
        keys = [t.idempotency_key for t in tasks if t.idempotency_key is not None]
        params = {"queue": self.queue, "keys": keys}
        holders = {key: task_id for key, task_id in await self._db.fetch("key_holders", params)}
        pairs = zip(tasks, ids, strict=True)
        return [i if t.idempotency_key is None else holders.get(t.idempotency_key, i) for t, i in pairs]

    def poll_compact(self, worker: WorkerContext) -> AsyncIterator[Task[bytes] | None]:
        """Ready tasks claimed in batches of free slots; woken by the server's push path where it
        has one, else by polling with backoff capped at `poll_interval`.

        Tasks claimed ahead by `ack_batch` (for the slots its outcomes free) come first. A claim
        that got fewer tasks than it asked for took every ready one: the next claim is skipped
        (the stream answers idle at once) unless something was pushed or released since, as the
        queue's `Waker` tells; a lone task thus costs one claim, not a second that finds nothing.
        """
        told: list[tuple[Waker, asyncio.Event]] = []
        handing = self._db.handing if worker.limits is None else None

        def start() -> tuple[Fetch, Waker]:
            db, queue, worker_id, limited = self._db, self.queue, worker.id, self._limited
            db.listen(queue)
            heard = False
            waker = db.waker(queue)
            pushed = waker.subscribe()
            told.append((waker, pushed))
            drained = False

            def given(worker_id: str, tasks: list[Task[bytes]]) -> None:
                # A handed task wakes the stream, but is no sign of other tasks ready: the next
                # claim is skipped as after a claim that took every ready task (the
                # acknowledgement's claim ahead lists the worker idle again).
                nonlocal drained
                signalled = pushed.is_set()
                self._handed(worker_id, tasks)
                if not signalled:
                    pushed.clear()
                    drained = True

            if worker.limits is not None:
                limited.workers[worker_id] = KeyedClaims(worker.limits)
            elif handing is not None:
                handing.enlist(queue, worker, given)  # its claims that find nothing list it idle

            async def fetch(limit: int) -> list[Task[bytes]]:
                nonlocal heard, drained
                if not heard:  # no claim before the listener hears: a cancel of it would go unheard
                    await db.listening()
                    heard = True
                if worker_id in limited.workers:
                    claimed = await limited.claim(worker_id, limit)
                    holder = self._ahead.holder(worker_id)
                    if holder is not None:  # then the acknowledgement of its runs claims for it
                        holder.backlog = len(claimed) == limit
                    return claimed
                if drained and not pushed.is_set():
                    drained = False  # once: tasks falling due are found by the idle backoff
                    return []
                pushed.clear()
                claimed = await db.claim(queue, worker_id, limit)
                drained = 0 < len(claimed) < limit
                holder = self._ahead.holder(worker_id)
                if holder is not None:
                    holder.backlog = len(claimed) == limit
                return claimed

            return fetch, waker

        return self._polling(worker, start, told, handing)

    async def _polling(
        self, worker: WorkerContext, start: Start, told: list[tuple[Waker, asyncio.Event]], handing: Handing | None
    ) -> AsyncIterator[Task[bytes] | None]:
        """The poll stream; a worker's limited claiming is forgotten when it closes, and nothing
        more is handed to it."""
        # A worker pushes hand their tasks to has its idle timer claim only what nobody signals
        # (a delayed task or a retry falling due): its first wait is longer (see the Redis store).
        stream = self._ahead.poll(worker, start, FIRST_IDLE_WAIT if handing is None else LISTED_IDLE_WAIT)
        try:
            async for task in stream:
                yield task
        finally:
            self._limited.forget(worker.id)
            for waker, event in told:
                waker.unsubscribe(event)
            await stream.aclose()  # type: ignore[attr-defined]
            if handing is not None:
                await handing.unlist(worker.id)

    def _handed(self, worker_id: str, tasks: list[Task[bytes]]) -> None:
        """Tasks a push handed to `worker_id`: to its poll stream, or back to the queue if it has
        closed (the worker stops, or polls again after an error)."""
        if not self._ahead.give(self._ahead.holder(worker_id), tasks):
            release = asyncio.ensure_future(self._ahead.release(tasks))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)

    def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
        """Register and refresh `worker`; tell it which of its runs have a cancel requested and
        whether its queue is paused; release its lost claims; sweep orphans and purge expired
        tasks under the sweep lock, so one worker of the queue sweeps at a time, and only once
        this process has had the server reachable, and been awake itself, for `stale_after`
        (`apalis_cli.contact`). A store that sends a beat whole (`whole_beat`) makes it one
        round trip; the others, one a statement."""
        db, queue = self._db, self.queue
        lock = db.sweep_params(queue)
        stale = {"queue": queue, "stale_after": worker.stale_after}
        row = worker_params(worker, queue)

        def lost_grace(worker_id: str) -> float:
            # A claim still on its way to the worker (`ClaimsAhead.claiming_since`) locked its
            # tasks on the server, and the worker does not run them yet: not lost claims. The
            # grace counts from when the oldest such claim was asked (a duration, so the server's
            # clock need not agree with ours).
            asked = self._ahead.claiming_since(worker_id)
            return worker.stale_after + (max(time.time() - asked, 0.0) if asked is not None else 0.0)

        async def beat_in(s: Session) -> tuple[bool, Rows, bool, bool]:
            runs = list(worker.running())
            running = [*runs, *self._ahead.held(worker.id)]  # held: not lost claims
            seen = {**row, "running": len(running)}
            await s.execute("beat", seen)
            stamped = time.monotonic()
            cancels = await s.fetch("cancels_requested", {"running": runs}) if runs else []
            paused = await s.fetch("paused", {"queue": queue})
            told = (cancels, bool(paused and paused[0][0]))
            # Read again now, with the grace: a claim whose reply came since the beat's round trips
            # (one sent before a stall of this process is as old as the stall) is running or held by
            # now, and is no lost claim.
            running = [*worker.running(), *self._ahead.held(worker.id)]
            lost = {"queue": queue, "worker": worker.id, "grace": lost_grace(worker.id), "running": running}
            if db.handing is not None:  # a task handed to it and not received yet is on its way, not lost
                lost["received"] = db.handing.received(worker.id)
            woke = await s.execute("release_lost", lost) > 0
            # Asked at each try: a beat retried across an outage does not sweep right after it.
            if not db.contact.may_sweep(worker.id, worker.stale_after):
                return (woke, *told, False)
            locked = await s.fetch("sweep_lock", lock)
            if not (locked and locked[0][0]):
                return (woke, *told, False)
            # Asked again: the server's clock judges staleness when the sweep runs, so a stall of
            # this process during the lock's round trip must hold the sweep too.
            if not db.contact.may_sweep(worker.id, worker.stale_after):
                if db.releases_sweep_lock:
                    await s.execute("sweep_unlock", lock)
                return (woke, *told, False)
            # Recovered first: a store may read a stale worker's row to tell how its tasks end.
            woke = await s.execute("recover", stale) > 0 or woke  # the tasks that run again (where it can tell)
            await s.execute("forget_workers", stale)
            if not db.purges_beside:
                await s.execute("purge_expired", {"queue": queue, "retention": worker.retention})
            if db.releases_sweep_lock:
                # Each statement committed by itself, so the beat above is as old as the sweep,
                # which row locks and a loaded server hold up for seconds (1-2.5 s seen). Beaten
                # again, this worker is alive to the next sweeper, which can start once the lock is
                # freed: it found this one stale and ran its running tasks a second time.
                if time.monotonic() - stamped > worker.keep_alive:
                    await s.execute("beat", seen)
                await s.execute("sweep_unlock", lock)
            return (woke, *told, True)

        def ask() -> BeatAsk:
            # Read as it is sent (at each try): the script counts the lost claims' grace back
            # from its own start, so a claim whose reply comes while it runs is no lost claim.
            runs = list(worker.running())
            running = [*runs, *self._ahead.held(worker.id)]
            lost = {"queue": queue, "worker": worker.id, "grace": lost_grace(worker.id), "running": running}
            if db.handing is not None:
                lost["received"] = db.handing.received(worker.id)
            return BeatAsk(
                seen={**row, "running": len(running)},
                runs=runs,
                lost=lost,
                sweep=db.contact.may_sweep(worker.id, worker.stale_after),
                lock=lock,
                stale=stale,
                retention=worker.retention,
                keep_alive=worker.keep_alive,
            )

        async def beat() -> None:
            db.controls.workers[worker.id] = worker  # told of cancels by the listener from now on
            whole = db.whole_beat
            if whole is not None:
                beaten = await whole.beat(ask)
                woke, cancels, paused, swept = beaten.woke, beaten.cancels, beaten.paused, beaten.swept
            else:
                woke, cancels, paused, swept = await db.session(beat_in)
            for task_id, reason in cancels:
                worker.on_cancel(task_id, reason)
            worker.on_paused(paused)
            if woke:
                self._wake_beside()
            if swept:
                self._tidy_beside(worker.retention)

        async def farewell() -> None:
            db.controls.workers.pop(worker.id, None)
            if db.handing is not None:  # a task on its way to it goes back
                await db.handing.farewell(worker.id, stopped=self._ahead.holder(worker.id) is None)
            await db.execute("farewell", {"id": worker.id})

        return beat_every(worker, beat, farewell, db.contact)

    def _wake_beside(self) -> None:
        """Wake the queue's pollers, here and in other processes, for the tasks a beat made
        ready (released or recovered), without the beat waiting for it. A heartbeat must not wait
        on a signal: MariaDB's is a KILL QUERY of each listener, which the server holds for up
        to 2 s when the listener is not asleep yet (woken by another signal just before), and a
        beat held that long was stale to the other workers, which swept its worker's
        running tasks and ran them a second time (tests/acceptance/test_chaos_outage.py). The
        wake-up is a help: pollers it misses find the tasks at their next claim."""
        waking = asyncio.ensure_future(self._db.notify(self.queue))
        self._waking.add(waking)
        waking.add_done_callback(self._waking.discard)
        waking.add_done_callback(_woken)

    def _tidy_beside(self, retention: float) -> None:
        """Tidy the tasks table after a sweep, without the beat waiting for it, and no second
        time while it runs: purge the tasks past `retention` where the store purges beside the
        beat (`purges_beside`: in statements of `PURGE_BATCH`), then clean up the row versions
        left (PostgreSQL's VACUUM where autovacuum is off). A VACUUM reads every index of the
        table, and a purge after retention was shortened deletes as many tasks as expired at
        once: seconds either way, and a beat that waited for them (or ran the purge in its own
        transaction) was as late to the other workers, which found its worker stale past
        stale_after and ran its running tasks a second time
        (tests/integration/test_postgres_sweep.py). A failure is logged: tried again after a
        later sweep."""
        self._tidying.start(lambda: self._tidy(retention))

    async def _tidy(self, retention: float) -> None:
        db = self._db
        if db.purges_beside:
            params = {"queue": self.queue, "retention": retention, "limit": PURGE_BATCH}
            while await db.execute("purge_expired", params) >= PURGE_BATCH:
                pass  # a backlog of expired tasks: the next batch, in a transaction of its own
        await db.tidy()

    async def ack_batch(self, items: Sequence[tuple[Task[Any], Outcome]]) -> None:
        """Apply a batch of outcomes in one write (the server's clock stamps done_at), claiming
        ahead for the polling workers whose runs ended here (see `apalis_cli.ahead`)."""
        if not items:
            return
        db, limited = self._db, self._limited.workers
        plan = plan_acks(items, time.time())
        want = [(h, n) for h, n in self._ahead.wanted(items) if h.backlog or not db.ahead_on_backlog]
        # A worker with global limits claims within them, in a transaction of its own, after the ack;
        # on a store whose limited claim is one statement, that statement applies the acks too.
        within = [(h, n) for h, n in want if h.worker_id in limited]
        want = [(h, n) for h, n in want if h.worker_id not in limited]
        if within and not want and self._limited.carries_acks:
            holder, count = within.pop(0)
            with claiming([holder]):
                tasks = await self._limited.claim(holder.worker_id, count, ack=plan)
            if plan.wake:
                db.waker(self.queue).notify()
            holder.backlog = len(tasks) == count
            if tasks:
                await self._ahead.hand_over(holder, tasks)
            plan = AckPlan()  # applied
        claimed: list[list[Task[bytes]]] = []
        if plan or want:
            with claiming([holder for holder, _ in want]):  # their beats leave alone what this claims
                claimed = await db.ack(self.queue, plan, [(holder.worker_id, n) for holder, n in want])
        if plan.wake:  # released (or instantly retried) tasks are ready for this process's pollers too
            db.waker(self.queue).notify()
        elif self._limited.stopped and any(task.ctx.lock_by in self._limited.stopped for task, _ in items):
            # The slots a stopped worker's last runs free under a global limit: no claim here
            # follows them, so the other daemons are told (a key's next task waits on them).
            await db.notify(self.queue)
        for (holder, count), tasks in zip(want, claimed, strict=True):
            holder.backlog = len(tasks) == count
            if tasks:
                await self._ahead.hand_over(holder, tasks)
        for holder, count in within:
            if holder.worker_id in limited:
                with claiming([holder]):
                    tasks = await self._limited.claim(holder.worker_id, count)
                holder.backlog = len(tasks) == count
                if tasks:
                    await self._ahead.hand_over(holder, tasks)


def _woken(waking: asyncio.Future[None]) -> None:
    """A beat's wake-up ended: a failure (the store away, or closed meanwhile) is no loss."""
    if not waking.cancelled():
        waking.exception()


@contextlib.contextmanager
def claiming(holders: Sequence[Held]) -> Iterator[None]:
    """A claim for `holders`' workers is in flight for the block (`Held.claiming`)."""
    if not holders:
        yield
        return
    asked = time.time()
    for holder in holders:
        holder.claiming.append(asked)
    try:
        yield
    finally:
        for holder in holders:
            holder.claiming.remove(asked)
