"""Hand-over: a push of one task claims it for an idle worker, so the worker starts it after a
plain read instead of a claim of its own (migration 0006, `sql/idle.sql`).

A lone task otherwise waits for two redo-log flushes in a row: the push's commit, then the
claim's (the worker's listener wakes it, it claims, the claim commits). MariaDB cannot relax
durability per transaction, and a flush here is 0.5-2 ms. So a polling worker whose claim came
back short is listed idle with its free slots, in that claim's own transaction (with the
connection id of its process's listener for the queue); a push of one task due now claims it
for the most recently listed worker with a free slot, in the push's transaction, and ends that
listener's sleep; the worker reads the tasks handed to it (`handed`) and starts them. Each hand
takes a slot of the listing; the worker's next short claim lists it again when half are gone,
and so does the acknowledgement of its runs while it is listed, in its own transaction (a worker
fed by hands alone makes no claim: its listing ran out after as many hands as it had slots, and
a third of a paced stream's tasks then took the slower way of a plain push and a claim).

The push does not wait for that wake-up: the server holds a KILL QUERY for up to 2 s (4 seen)
when its target is not asleep yet (`beside`). `hand_push` commits in its own script, and ends
the listener's sleep from another connection as soon as the script's answer names it, while the
COMMIT waits for its redo-log flush: neither the commit's round trip nor its flush is on the
task's way. A listener that is gone (its process stopped without unlisting its worker) answers
the KILL at once with an unknown connection id; the push then takes its task back from that
worker (`hand_gone`: pending again, its attempt not counted, the worker unlisted) and wakes the
queue's other workers, before it returns when that answer came within `GONE_WITHIN`, beside it
otherwise. A listener whose process was killed a moment ago is still asleep on the server, so
its KILL succeeds (and makes the server end its connection): where the listener holds its live
lock (`listener.LIVE_LOCK`; a daemon of an earlier version does not), the push looks at that lock
`WATCH_AFTER` later, beside it, and takes the task back the same way when it was freed (the task
waited for the orphan sweep, `stale_after`: 30 s by default). The take-back holds while the
listing still names that listener, and a worker reads
its hands only under the listener it now has (`handed`): a worker alive whose listener's
connection was lost reads no hand of the lost one's listing once its process has noticed the
loss, so a task taken back is not also run by the worker it was handed to (it lists itself
again under its new listener at its next empty claim, and reads the hands it kept then).

A listing names its listener by the server's connection id, which a restarted server gives
out again from 1: a listing made before the server's last start is never handed to (`hand_push`
compares it with `@apalis_boot`, each connection's reading of the server's start), or its KILL
QUERY could end an unrelated connection's statement, and its worker would not be woken. Uptime
counts whole seconds, so that reading is the end of the second the server started in: a listing
made before it may be of the server's first second, and is passed by too, until its worker lists
itself again. A worker whose listener connected again lists itself at its next empty claim, under
the new connection (which the server may have given the id the old one had: `Listener.connection`
tells them apart).

A handed task is an ordinary claim: a worker that stops polling gives back those it never saw
(`farewell_idle`), one whose wake-up was lost gives them back by its heartbeat (lost claims),
and one that vanished by the orphan sweep. A listing lapses after `SPAN` seconds unless the
worker's idle claims refresh it, so a vanished worker stops being handed tasks. A push that found
no idle worker makes this process's next pushes to the queue plain inserts for a while
(`NONE_IDLE_FIRST`, twice as long after each such push in a row, up to `NONE_IDLE_FOR`; a hand
that finds a worker starts again from the first); one that found a listing only held for a
moment by another transaction (SKIP LOCKED) changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .listener import LIVE_LOCK, vanished

__all__ = [
    "GONE_WITHIN",
    "NONE_IDLE_FIRST",
    "NONE_IDLE_FOR",
    "SPAN",
    "WATCH_AFTER",
    "Handed",
    "Listing",
    "hand_push",
    "left",
]

SPAN = 5.0
"""Seconds a listing holds; an idle worker's claims refresh it once half of that is gone."""
NONE_IDLE_FOR = 0.05
"""Seconds at most a process pushes to a queue without trying to hand over, after pushes found
no idle worker there: a hand that finds none costs the server about 2.5x a plain push's CPU,
and while the queue's workers are busy (or there are none) every try would find none."""
NONE_IDLE_FIRST = 0.005
"""The first such while. A worker whose slots were all handed or claimed lists itself again at
its next short claim, which the first plain push wakes it for, a few milliseconds later: a
fixed 50 ms made ten pushes of a 200/s stream plain ones (a commit, a signal and a claim's
commit in a row, against one commit for a hand), and their claims, coming back full, unlisted
the worker again."""
GONE_WITHIN = 0.05
"""Seconds a push waits, after its commit, for its KILL's answer: a listener that is gone is
answered at once (an unknown connection id), so a KILL still unanswered is held by a listener
that is there, and the push returns without it."""

WATCH_AFTER = 0.05
"""Seconds after a KILL that succeeded when a push looks whether the listener it ended still
holds its live lock: a connection whose client is gone ends 0.2-0.5 ms after that KILL's
answer here (eight of eight probes at load 3.5; the lock was free at the first look), a live
listener keeps it. The hands of a process are looked at together, beside the pushes
(`Database._look`); a listener that has not ended by then leaves its task to the orphan sweep,
as before."""


@dataclass(slots=True)
class Listing:
    """What this process knows of one polling worker's listing."""

    until: float = 0.0
    """When the server's listing lapses (this machine's clock; 0: not listed)."""
    free: int = 0
    """Slots left in the listing, as far as this process knows (each hand read takes one)."""
    seen: set[str] = field(default_factory=set)
    """Tasks given to the worker (handed or claimed) and not yet acknowledged: a task handed to
    it that is still running under it is new to it only if it is not among these."""
    open: bool = False
    """Listed and not unlisted since (its last claim did not come back full)."""
    freed: int = 0
    """Slots its acknowledged runs gave back since it was listed: a worker fed by hands alone
    makes no short claim to list it again, so its acknowledgements do (`Database.ack`)."""
    listener: tuple[int, int] | None = None
    """The connection of the listener it was listed with (`Listener.connection`)."""

    def due(self, slots: int, listener: tuple[int, int]) -> bool:
        """Whether a worker with `slots` free, heard on the `listener` connection, should be
        (re)listed: its listener connected again since (a server restart) makes its listing
        stale, even when the restarted server gave it the id it had before."""
        return self.until - time.time() < SPAN / 2 or self.free < max(slots // 2, 1) or listener != self.listener

    def listed(self, slots: int, listener: tuple[int, int]) -> None:
        self.until, self.free, self.open, self.freed = time.time() + SPAN, slots, True, 0
        self.listener = listener

    def unlisted(self) -> None:
        self.free, self.open = 0, False

    def seen_json(self) -> str:
        return json.dumps(sorted(self.seen))


Conn = Any  # asyncmy ships no usable annotations for its Cython classes


async def hand_push(
    conn: Conn,
    sql: Mapping[str, str],
    params: Mapping[str, Any],
    wake: Callable[[int], Awaitable[None]],
) -> Handed:
    """Run `hand_push` on `conn` (it commits); the chosen worker's listener is woken by
    `wake(listener)` on another connection as soon as the script names it, while its COMMIT
    waits for the flush."""
    cursor = conn.cursor()
    await cursor.execute(sql["hand_push"], params)
    handed = Handed(None, 0, False, False, None, False)
    while True:
        if cursor.description:
            ((worker, listener, inserted, listed, to_wake, watched),) = await cursor.fetchall()
            handed = Handed(worker, int(listener or 0), bool(inserted), bool(listed), None, bool(watched))
            if to_wake:  # the COMMIT's answer is still to come
                handed.waking = asyncio.ensure_future(wake(handed.listener))
                handed.waking.add_done_callback(_no_loss)
        if not await cursor.nextset():
            break
    return handed


@dataclass(slots=True)
class Handed:
    """What `hand_push` did."""

    worker: str | None
    """The worker the task was handed to (None: left pending)."""
    listener: int
    """That worker's listener (its connection id)."""
    inserted: bool
    """Whether the task was inserted (a known id is skipped)."""
    listed: bool
    """Whether some worker was listed with a free slot (its listing maybe held)."""
    waking: asyncio.Future[None] | None
    """The wake-up of that listener, on its way (None: no other process's listener to wake)."""
    watched: bool
    """Whether that listener held its live lock: its end can be seen (`left`)."""

    def gone(self) -> bool:
        """Whether the wake-up ended, answered that the listener's connection is gone (its
        process stopped). Any other failure is no loss: the worker reads its hands at its next
        claim; a listener not ours to end is there (its worker polls)."""
        waking = self.waking
        if waking is None or not waking.done() or waking.cancelled():
            return False
        exc = waking.exception()
        return exc is not None and vanished(exc)

    def woke(self) -> bool:
        """Whether the wake-up ended and the KILL succeeded."""
        waking = self.waking
        return waking is not None and waking.done() and not waking.cancelled() and waking.exception() is None


async def left(conn: Conn, *, listeners: Sequence[int]) -> set[int]:
    """Which of the connections `listeners` no longer hold their live locks: they ended
    (listeners whose KILL succeeded, `WATCH_AFTER` ago)."""
    cursor = conn.cursor()
    held = ", ".join(f"IS_USED_LOCK('{LIVE_LOCK}{int(i)}') <=> {int(i)}" for i in listeners)
    await cursor.execute(f"SELECT {held}")
    row = await cursor.fetchone()
    return {i for i, there in zip(listeners, row, strict=True) if not there}


def _no_loss(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()
