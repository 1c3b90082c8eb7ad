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
when its target is not asleep yet (`beside`). `hand_push` leaves its transaction open, ends the
listener's sleep from another connection and commits meanwhile; only a KILL answered within
`GONE_WITHIN` that says the listener is gone stops the commit (the push is rolled back and
pushed plainly: a gone listener answers at once, a held KILL is a listener that is there).

A listing names its listener by the server's connection id, which a restarted server gives
out again from 1: a listing made before the server's last start is never handed to (`hand_push`
compares it with `@apalis_boot`, each connection's reading of the server's start), or its KILL
QUERY could end an unrelated connection's statement, and its worker would not be woken. That
reading counts whole seconds of Uptime, so it errs late: a listing of the server's first second
may be passed by too, until its worker lists itself again. A worker whose listener connected
again lists itself at its next empty claim, under the new connection.

A handed task is an ordinary claim: a worker that stops polling gives back those it never saw
(`farewell_idle`), one whose wake-up was lost gives them back by its heartbeat (lost claims),
and one that vanished by the orphan sweep. A listing lapses after `SPAN` seconds unless the
worker's idle claims refresh it, so a vanished worker stops being handed tasks. A push that found
no idle worker makes this process's next pushes to the queue plain inserts for `NONE_IDLE_FOR`;
one that found a listing only held for a moment by another transaction (SKIP LOCKED) does not.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .listener import gone

__all__ = ["GONE_WITHIN", "NONE_IDLE_FOR", "SPAN", "Listing", "hand_push"]

SPAN = 5.0
"""Seconds a listing holds; an idle worker's claims refresh it once half of that is gone."""
NONE_IDLE_FOR = 0.05
"""Seconds a process pushes to a queue without trying to hand over, after a push found no idle
worker there: a hand is a transaction of several statements where a plain push is one insert,
and while the queue's workers are busy (or there are none) every try would find none."""
GONE_WITHIN = 0.05
"""Seconds a push waits for its KILL's answer before it commits: a listener that is gone is
answered at once (an unknown connection id), so a KILL still unanswered is held by a listener
that is there, and the push commits without it."""


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
    listener: int | None = None
    """The connection id of the listener it was listed with."""

    def due(self, slots: int, listener: int) -> bool:
        """Whether a worker with `slots` free, heard by `listener`, should be (re)listed: its
        listener connected again since (a server restart) makes its listing stale."""
        return self.until - time.time() < SPAN / 2 or self.free < max(slots // 2, 1) or listener != self.listener

    def listed(self, slots: int, listener: int) -> None:
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
    on_its_way: Callable[[str, int, asyncio.Future[None]], None],
) -> tuple[str | None, bool, bool] | None:
    """Run `hand_push` on `conn`: the worker the task was handed to (None: left pending), whether
    it was inserted, and whether some worker was listed with a free slot (its listing maybe
    held). The chosen worker's listener is woken by `wake(listener)` on another connection
    while this one commits; a wake-up that is not answered within `GONE_WITHIN` goes on beside,
    given to `on_its_way(worker, listener, wake-up)`. None when the listener was gone (its
    process stopped): the push is rolled back and that worker unlisted (`hand_gone`), for the
    caller to push plainly."""
    cursor = conn.cursor()
    await cursor.execute(sql["hand_push"], params)
    found: Sequence[Any] = ()
    while True:
        if cursor.description:
            found = await cursor.fetchall()
        if not await cursor.nextset():
            break
    ((worker, listener, inserted, listed, to_wake),) = found
    if to_wake:  # the transaction is open, the listing held
        waking = asyncio.ensure_future(wake(int(listener)))
        done, _ = await asyncio.wait({waking}, timeout=GONE_WITHIN)
        if done and _was_gone(waking):
            await cursor.execute(sql["hand_gone"])
            while await cursor.nextset():
                pass
            return None
        await cursor.execute("COMMIT")
        if not done:
            on_its_way(worker, int(listener), waking)
    return worker, bool(inserted), bool(listed)


def _was_gone(waking: asyncio.Future[None]) -> bool:
    """Whether a finished wake-up was answered that its listener is gone (any other failure is
    no loss: the worker reads its hands at its next claim)."""
    exc = None if waking.cancelled() else waking.exception()
    return exc is not None and gone(exc)
