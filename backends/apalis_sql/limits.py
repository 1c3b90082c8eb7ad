"""Global limits and unique pushes on the server-backed SQL stores, written once.

A limited claim is `apalis_cli.fleet`'s claim over named statements (each store's
`sql/limits.sql`), run in one transaction that first takes the queue's limit lock
(`SqlDatabase.locked`: a transaction-scoped advisory lock on PostgreSQL, a named lock around the
transaction on MySQL), so every daemon's limited claims of a queue take turns and none reads a
count another is about to change. Running counts come from the running rows themselves, so a
dead worker's slots come back with its leases (the orphan sweep, after `stale_after`); a rate
is one GCRA time per key in `limit_rates`; the clock is the server's. Tasks over a limit stay
pending and unclaimed; keys under theirs are claimed past them. The pgmq store runs the same
claim on pgmq's tables (`apalis_pgmq.limits`). PostgreSQL runs it whole on the server, one call
of a PL/pgSQL function (`WholeClaims`, its migration 0009): one round trip a claim, not five;
pgmq too, one function per queue.

A unique push is answered from the rows: a duplicate found by a plain read answers a `skip` at
once (the holder was committed: the push is as if it came just then); otherwise the push takes
the lock of its queue and key, reads again, and inserts, skips, replaces or extends in that
transaction. No lock outlives it, so none can go stale.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from apalis_cli.backend import NewTask
from apalis_cli.fleet import FleetLimits, KeyedClaims, claim_round_async
from apalis_cli.fleet.claim import MAX_KEYS_PER_CLAIM, QUEUE_RATE, ClaimRound, Turn, Turned, rate_ahead, rate_key
from apalis_cli.polling import Waker
from apalis_cli.task import Task, TaskId

from .acks import AckPlan
from .database import Rows, Session, SqlDatabase, WholeClaims
from .rows import TASK_COLUMNS, encode_meta, task_from_row

__all__ = ["LimitedClaims", "LimitsDatabase", "push_unique"]

T = TypeVar("T")

_KEYLESS_SCAN = 1000
"""How many ready tasks one scan of a keyed claim reads for tasks pushed without a key, where
the ready index cannot tell them from keyed ones. MySQL's scan starts where the worker's last one
that found none stopped (`limit_keyless_from`); pgmq's reads the first ones only. PostgreSQL has
no scan: an index of keyless ready tasks (its migration 0014, an entry more for every keyless
push) gives them in the queue's order, and its `limit_claim` returns no place to keep."""
_FORGET_EVERY = 256
"""Claims of one worker between two sweeps of the rate states gone by."""
_STOPPED_KEPT = 1024
"""Stopped workers a process remembers (`LimitedClaims.stopped`): their last acks come soon."""
_STATUS, _ATTEMPTS, _LOCK_BY = (TASK_COLUMNS.index(name) for name in ("status", "attempts", "lock_by"))
_ACCOUNT = len(TASK_COLUMNS)
"""Where the account's columns start in a row of `limit_claim`."""
_TURN_KEY = len(TASK_COLUMNS)
"""Where a claimed task's key is in a row of `limit_turn_*` (its task's columns before it)."""


class LimitsDatabase(Protocol):
    """What a limited claim asks of its store (an `SqlDatabase` has it; so has pgmq's, whose
    statements claim messages of pgmq's own tables)."""

    claims_by_select: bool
    """The claim statements lock their rows and `limit_mark` claims them (MySQL)."""

    @property
    def whole_claims(self) -> WholeClaims | None:
        """The store itself where its limited claim is one call (`WholeClaims`), else None. Said
        by a typed attribute, not found by `isinstance`, so a store that means to claim in one
        call and stops matching the protocol fails the type check instead of falling back
        silently to the claim by statements."""
        ...

    def waker(self, queue: str) -> Waker:
        """The in-process `Waker` of `queue`."""
        ...

    async def locked(
        self, lock: str, queue: str, key: str, op: Callable[[Session], Awaitable[T]], *, durable: bool
    ) -> T:
        """`op` in one transaction holding the lock `lock` of `queue` and `key` (`SqlDatabase.locked`)."""
        ...


class LimitedClaims:
    """The limited claiming of one queue's polling workers in this process, by worker id.

    `decode` makes a task of a row the claim statements return (the key, where a statement
    adds it, cut off first): `task_from_row` for the SQL stores' tasks table."""

    __slots__ = (
        "_blocked",
        "_db",
        "_decode",
        "_keyless",
        "_queue",
        "_timers",
        "_walking",
        "_whole",
        "stopped",
        "workers",
    )

    def __init__(
        self,
        db: LimitsDatabase,
        queue: str,
        *,
        decode: Callable[[Sequence[Any]], Task[bytes]] = task_from_row,
    ) -> None:
        self._db = db
        self._queue = queue
        self._decode = decode
        self.workers: dict[str, KeyedClaims] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._keyless: dict[str, tuple[Any, Any, Any]] = {}
        self._blocked: dict[str, frozenset[str]] = {}
        """By worker, the keys at their concurrency after its last claim: the first turn, sent
        before the claim reads which are, walks past as many in its range (`walk_length`)."""
        self._walking: set[str] = set()
        """Workers whose last scan of the keys' tasks interleaved (MySQL's `limit_scan`) came
        short: their claims walk the keys until a walk fills one."""
        self._whole = db.whole_claims
        self.stopped: set[str] = set()
        """Workers that claimed within limits here and stopped polling: the slots their last
        runs free are claimed by no one here (`SqlQueue.ack_batch` tells the other daemons)."""

    def forget(self, worker_id: str) -> None:
        """`worker_id` stopped polling."""
        if self.workers.pop(worker_id, None) is not None:
            if len(self.stopped) >= _STOPPED_KEPT:
                self.stopped.clear()
            self.stopped.add(worker_id)
        self._keyless.pop(worker_id, None)
        self._blocked.pop(worker_id, None)
        self._walking.discard(worker_id)
        timer = self._timers.pop(worker_id, None)
        if timer is not None:
            timer.cancel()

    @property
    def carries_acks(self) -> bool:
        """Whether a claim can apply a batch of outcomes in its own transaction (`claim`'s
        `ack`): in its one statement (`limit_claim`), or sent ahead of its first read (MySQL's
        `ack_ahead`: one commit, one log flush, for both)."""
        return self._whole is not None or getattr(self._db, "ack_ahead", None) is not None

    async def claim(
        self, worker_id: str, want: int, params: Mapping[str, Any] | None = None, *, ack: AckPlan | None = None
    ) -> list[Task[bytes]]:
        """Up to `want` tasks for `worker_id` within its limits, in one locked transaction;
        `params` go to the claim statements besides the queue and the worker (pgmq: the lease).
        With `ack` (where `carries_acks`), the same transaction first applies those outcomes."""
        state = self.workers[worker_id]
        extra = params or {}
        if self._whole is not None:
            claimed, done, now = await self._claim_whole(self._whole, worker_id, want, state, ack, extra)
        else:
            db: Any = self._db
            sent: list[Any] = []
            scans: list[tuple[list[Any], int]] = []  # each keyless scan's place, read with the commit

            async def claim_in(s: Session) -> tuple[list[Task[bytes]], ClaimRound | None, float]:
                if ack is not None:  # again where the transaction is tried again
                    sent.append(db.ack_ahead(s, ack))
                scans.clear()
                return await self._claim(s, worker_id, want, state, extra, scans)

            claimed, done, now = await db.locked("limits", self._queue, "", claim_in, durable=False)
            if ack is not None:
                await db.acked_ahead(self._queue, ack, sent[-1])
            for place, found in scans:
                self._keyless_scanned(worker_id, place, found)
        if done is not None:
            state.claimed(done)
            if done.wake_at is not None:
                self._wake_at(worker_id, done.wake_at - now)
        filled = getattr(self._db, "limited_claim_filled", None)
        if filled is not None and 0 < want <= len(claimed):
            # It may have left tasks with room that other daemons, idle since their last claim
            # found every key at its limit, could start (PostgreSQL's claim tells them itself).
            await filled(self._queue)
        return claimed

    def _keyless_scanned(self, worker_id: str, place: list[Any], found: int) -> None:
        """Where the worker's next keyless scan (`limit_keyless_from`) starts, after one that
        scanned `place` (its count and last place, read with the commit) and found `found`
        tasks: there again where it found some, from the first where it reached the last ready
        task, else past the place it stopped at."""
        if not place:
            return
        count, *last = place[0]
        if count is None or int(count) < _KEYLESS_SCAN:
            self._keyless.pop(worker_id, None)
        elif not found:
            self._keyless[worker_id] = (int(last[0]), float(last[1]), str(last[2]))

    def _wake_at(self, worker_id: str, delay: float) -> None:
        """Poll again when a rate lets the next start through, not a whole idle wait later."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        timer = self._timers.get(worker_id)
        if timer is not None and not timer.cancelled() and timer.when() <= when and timer.when() > loop.time():
            return
        if timer is not None:
            timer.cancel()
        self._timers[worker_id] = loop.call_at(when, self._db.waker(self._queue).notify)

    async def _claim_whole(
        self,
        db: WholeClaims,
        worker_id: str,
        want: int,
        state: KeyedClaims,
        ack: AckPlan | None,
        extra: Mapping[str, Any],
    ) -> tuple[list[Task[bytes]], ClaimRound | None, float]:
        """The claim as one call of the store's `limit_claim` (PostgreSQL: migration 0009; pgmq:
        the queue's function, whose rows have the account at `account_at`), the
        same algorithm on the server, carried by the statement of `ack` where there is one; the
        keyless scan's place is kept here, by worker."""
        limits, decode = state.limits, self._decode
        keyless = self._keyless.get(worker_id, (None, None, None))
        params = {
            **extra,
            "queue": self._queue,
            "worker": worker_id,
            "want": want,
            "after": state.after,
            "concurrency": limits.concurrency,
            "keyed_concurrency": limits.keyed_concurrency,
            "rate": limits.rate,
            "per": float(limits.per),
            "keyed_rate": limits.keyed_rate,
            "scope": db.lock_scope("limits", self._queue),
            "forget": (state.claims + 1) % _FORGET_EVERY == 0,
            "keyless_priority": keyless[0],
            "keyless_run_at": keyless[1],
            "keyless_id": keyless[2],
        }
        if ack is None:
            rows = await db.fetch("limit_claim", params)
        else:
            name, acking = db.ack_statement(self._queue, ack)
            rows = await db.fetch(f"{name}_limit_claim", {**acking, **params})
        # one row per task claimed, then the account (task columns NULL)
        account = getattr(db, "account_at", _ACCOUNT)
        after, wake_at, now, *place = rows[-1][account:]
        self._keyless[worker_id] = (place[0], place[1], place[2])
        claimed = [decode(row[:account]) for row in rows[:-1]]
        if len(claimed) > 1:
            claimed.sort(key=lambda t: (-t.ctx.priority, t.ctx.run_at, t.id))
        done = ClaimRound(claimed=len(claimed), after=after, wake_at=None if wake_at is None else float(wake_at))
        return claimed, done, float(now)

    async def _claim(
        self,
        s: Session,
        worker_id: str,
        want: int,
        state: KeyedClaims,
        extra: Mapping[str, Any],
        scans: list[tuple[list[Any], int]],
    ) -> tuple[list[Task[bytes]], ClaimRound | None, float]:
        db, queue, limits, decode = self._db, self._queue, state.limits, self._decode
        # A store that walks the keys and locks their first tasks in one statement per turn
        # has the turn's account worked out by its `turn_walk` (MySQL's `apalis_mysql.turns`).
        walked = getattr(db, "turn_walk", None)
        # A store whose session reads a statement's rows with the next one (MySQL's locked
        # session) sends the claim's first turn in its first round trip, before the claim knows
        # which keys are at their concurrency (the statement finds them itself: `cap`), and the
        # turn claims the heads it takes itself (`limit_marked`). Under a keyed concurrency
        # alone, a claim whose turns took all it asks for ends there (`_early_turns`); else it
        # reads its state, and its first turns are answered from the rows they sent.
        read_later: Callable[[str, Mapping[str, Any]], list[Any]] | None = getattr(s, "read_later", None)
        defer: Callable[[str, Mapping[str, Any]], None] | None = getattr(s, "later", None)
        early: list[tuple[Turn, int, Rows]] = []
        claimed: list[Task[bytes]] = []
        scanned = False
        if walked is not None and read_later is not None and defer is not None and _whole_first_turn(limits) and want:
            finish_if = getattr(s, "finish_if", None) if _one_trip(limits, state) else None
            scan_params = getattr(walked, "scan_params", None)
            if finish_if is not None and scan_params is not None and worker_id not in self._walking:
                # Under a keyed concurrency alone: the keys' tasks interleaved, one range scan
                # (`limit_scan`); where it came short, the rest as below, walking the keys.
                cap = limits.concurrency
                assert cap is not None
                defer("limit_scan_start", {})
                scan = read_later("limit_scan", {**extra, **scan_params(queue, want, cap)})
                defer("limit_marked", {"worker": worker_id})  # the rows it took, claimed
                finished = await finish_if("limit_claim_full", {"count": want})
                claimed = [decode(_as_claimed(row, worker_id)[:_TURN_KEY]) for row in walked.scanned(scan, _TURN_KEY)]
                if finished:
                    return self._claimed_scanned(walked, worker_id, scan, claimed, state.after)
                self._walking.add(worker_id)
                scanned, want = True, want - len(claimed)
            else:
                early, finished = await self._early_turns(
                    walked, read_later, defer, finish_if, worker_id, want, state, extra
                )
                if finished:
                    return self._claimed_early(walked, worker_id, early)
        rows = await s.fetch("limit_state", {"queue": queue})
        now, paused, queue_tat, keyless_tat = float(rows[0][0]), bool(rows[0][1]), rows[0][2], rows[0][3]
        if paused:  # a paused queue hands out nothing (apalis_cli.control); a scan's, taken before
            return claimed, None, now
        running: dict[str | None, int] = {row[4]: int(row[5]) for row in rows if row[5] is not None}
        for ask, length, walk in early:
            # The early turns' heads were claimed before this read (`limit_marked`): counted here
            # as running already, they are counted again as the claim takes them.
            assert walked is not None
            for row in walked.account(ask, length, walk, _TURN_KEY)[0]:
                running[row[_TURN_KEY]] = running.get(row[_TURN_KEY], 1) - 1
        rates: dict[str, float] = {}
        if queue_tat is not None:
            rates[QUEUE_RATE] = float(queue_tat)
        if keyless_tat is not None:
            rates[rate_key(None)] = float(keyless_tat)

        async def later(name: str, params: Mapping[str, Any]) -> None:
            """A write whose answer the claim needs not: sent with the next statement or the
            commit where the session can (MySQL's locked session: a round trip less)."""
            if defer is None:
                await s.execute(name, params)
            else:
                defer(name, params)

        async def lock(name: str, params: Mapping[str, Any]) -> Rows:
            got = await s.fetch(name, {"queue": queue, "worker": worker_id, **extra, **params})
            if got and db.claims_by_select:  # the rows are locked, not yet claimed
                await later("limit_mark", {"worker": worker_id, "ids": [row[0] for row in got]})
                return [_as_claimed(row, worker_id) for row in got]
            return got

        async def keys_after(after: str | None, count: int) -> Sequence[str]:
            if after is None:
                found = await s.fetch("limit_keys_first", {"queue": queue, "count": count})
            else:
                found = await s.fetch("limit_keys_after", {"queue": queue, "after": after, "count": count})
            for key, tat in found:
                if tat is not None:
                    rates[rate_key(key)] = float(tat)
            return [str(key) for key, _ in found]

        async def take_heads(keys: Sequence[str]) -> Mapping[str, int]:
            taken: dict[str, int] = {}
            for row in await lock("limit_heads", {"keys": json.dumps(list(keys))}):
                claimed.append(decode(row[:-1]))
                taken[row[-1]] = taken.get(row[-1], 0) + 1
            return taken

        taken_keys: list[str] = []

        async def turn(ask: Turn) -> Turned:
            assert walked is not None
            walk: Rows
            if early:  # sent before the claim's state was read (`_early_turns`)
                sent, length, walk = early.pop(0)
                assert (sent.after, sent.upto, sent.count) == (ask.after, ask.upto, ask.count), (sent, ask)
            else:
                length = walked.walk_length(ask)
                params = self._turn_params(worker_id, extra, ask, length, sorted(ask.blocked), ask.now, None)
                await later("limit_turn_start", {})
                walk = await s.fetch(_turn_statement(ask), params)
                await later("limit_marked", {"worker": worker_id})  # the heads it took, claimed
            # columns: TASK_COLUMNS, the key, its rate state, whether it was open, whether taken
            taking, turned = walked.account(ask, length, walk, _TURN_KEY)
            taking = [_as_claimed(row, worker_id) for row in taking]  # as `limit_marked` left them
            for row in taking:
                claimed.append(decode(row[:_TURN_KEY]))
                taken_keys.append(row[_TURN_KEY])
                if row[_TURN_KEY + 1] is not None:
                    rates[rate_key(row[_TURN_KEY])] = float(row[_TURN_KEY + 1])
            result: Turned = turned
            return result

        # A store whose session reads a statement's rows with the commit (MySQL's locked
        # session) scans for keyless tasks from where the worker's last scan stopped.
        scans_on = getattr(db, "keyless_from", False) and read_later is not None

        async def take(key: str | None, count: int) -> int:
            if not limits.keyed:
                got = await lock("limit_take", {"limit": count, "scan": _KEYLESS_SCAN})
            elif scans_on and read_later is not None:
                kp, kr, ki = self._keyless.get(worker_id, (None, None, None))
                await later("limit_keyless_count", {})  # rides with the scan
                got = await lock(
                    "limit_keyless_from",
                    {
                        "limit": count,
                        "scan": _KEYLESS_SCAN,
                        "kp": kp,
                        "kr": kr,
                        "ki": ki,
                    },
                )
                scans.append((read_later("limit_keyless_place", {}), len(got)))
            else:
                got = await lock("limit_keyless", {"limit": count, "scan": _KEYLESS_SCAN})
            claimed.extend(decode(row) for row in got)
            return len(got)

        done = await claim_round_async(
            limits,
            want,
            now,
            running=running,
            rates=rates,
            keys_after=keys_after,
            take_heads=take_heads,
            take=take,
            after=state.after,
            turn=turn if walked is not None else None,
        )
        if not scanned and done.claimed >= want:
            self._walking.discard(worker_id)  # the keys with room are many again: scan first
        if done.rates:
            await later("limit_rates_set", {"queue": queue, "rates": json.dumps(list(done.rates.items()))})
        if (state.claims + 1) % _FORGET_EVERY == 0:
            await later("limit_rates_forget", {"queue": queue, "now": now})
        if len(claimed) > 1:
            claimed.sort(key=lambda t: (-t.ctx.priority, t.ctx.run_at, t.id))
        if walked is not None and limits.keyed_concurrency and limits.concurrency is not None:
            for key in taken_keys:
                running[key] = running.get(key, 0) + 1
            cap = limits.concurrency
            self._blocked[worker_id] = frozenset(k for k, n in running.items() if k is not None and n >= cap)
        return claimed, done, now

    async def _early_turns(
        self,
        walked: Any,
        read_later: Callable[[str, Mapping[str, Any]], list[Any]],
        later: Callable[[str, Mapping[str, Any]], None],
        finish_if: Callable[[str, Mapping[str, Any]], Awaitable[bool]] | None,
        worker_id: str,
        want: int,
        state: KeyedClaims,
        extra: Mapping[str, Any],
    ) -> tuple[list[tuple[Turn, int, Rows]], bool]:
        """The claim's first turn, sent before its state is read (the lock and the carried
        acknowledgement ride with it), and whether the claim ended with it. Under a keyed
        concurrency alone (`_one_trip`), the server commits a turn that took all the claim asks
        for and frees the lock in the same round trip (`limit_claim_full`); and a first turn that
        ran out of keys before it had them is followed at once by the walk from the first key up
        to where it began (the claim's wrap, as `claim_steps` asks it), in a second trip that may
        end the claim likewise. The keys at their limit are guessed from the last claim's
        (`walk_length`); the statement passes over those it finds so itself."""
        sent: list[tuple[Turn, int, Rows]] = []
        limits, guess = state.limits, self._blocked.get(worker_id, frozenset())
        cap = limits.concurrency if limits.keyed_concurrency else None
        ask = Turn(state.after, None, want, MAX_KEYS_PER_CLAIM, guess, 0.0, rate_ahead(limits))
        while True:
            length = walked.walk_length(ask)
            later("limit_turn_start", {})
            rows = read_later(_turn_statement(ask), self._turn_params(worker_id, extra, ask, length, [], None, cap))
            later("limit_marked", {"worker": worker_id})  # the heads it took, claimed
            sent.append((ask, length, rows))
            if finish_if is None:
                return sent, False
            if await finish_if("limit_claim_full", {"count": ask.count}):
                return sent, True
            _, turned = walked.account(ask, length, rows, _TURN_KEY)
            if len(sent) > 1 or not turned.ended or ask.after is None:
                return sent, False
            count, seen = ask.count - len(turned.taken), ask.scan - turned.seen
            ask = Turn(None, ask.after, count, seen, guess, 0.0, ask.ahead)  # round again up to where it began

    def _claimed_scanned(
        self, walked: Any, worker_id: str, rows: Rows, claimed: list[Task[bytes]], after: str | None
    ) -> tuple[list[Task[bytes]], ClaimRound | None, float]:
        """What a claim whose scan (`limit_scan`) took all it asked for claimed (the server
        committed it). A walk's next claim guesses the keys at their limit from those it took."""
        if len(claimed) > 1:
            claimed.sort(key=lambda t: (-t.ctx.priority, t.ctx.run_at, t.id))
        self._blocked[worker_id] = frozenset(row[_TURN_KEY] for row in walked.scanned(rows, _TURN_KEY))
        return claimed, ClaimRound(claimed=len(claimed), after=after), time.time()

    def _claimed_early(
        self, walked: Any, worker_id: str, turns: list[tuple[Turn, int, Rows]]
    ) -> tuple[list[Task[bytes]], ClaimRound | None, float]:
        """What a claim whose early turns took all it asked for claimed (`_early_turns`; the
        server committed it). The keys its next claim will find at their limit are guessed from
        this one's rows: those it took, and those its walks found closed."""
        claimed: list[Task[bytes]] = []
        blocked: set[str] = set()
        after = turns[0][0].after
        for ask, length, rows in turns:
            taken, turned = walked.account(ask, length, rows, _TURN_KEY)
            claimed += [self._decode(_as_claimed(row, worker_id)[:_TURN_KEY]) for row in taken]
            blocked.update(turned.taken)
            blocked.update(row[_TURN_KEY] for row in rows if not row[_TURN_KEY + 2])
            if turned.last is not None:
                after = turned.last
        if len(claimed) > 1:
            claimed.sort(key=lambda t: (-t.ctx.priority, t.ctx.run_at, t.id))
        self._blocked[worker_id] = frozenset(blocked)
        return claimed, ClaimRound(claimed=len(claimed), after=after), time.time()

    def _turn_params(
        self,
        worker_id: str,
        extra: Mapping[str, Any],
        ask: Turn,
        length: int,
        blocked: list[str],
        now: float | None,
        cap: int | None,
    ) -> dict[str, Any]:
        """The parameters of `limit_turn_*` for `ask`, a walk of `length` keys passing over
        `blocked` and, with `cap`, the keys with as many running tasks (`now` None: the
        server's clock)."""
        return {
            "queue": self._queue,
            "worker": worker_id,
            **extra,
            "after": ask.after,
            "upto": ask.upto,
            "count": ask.count,
            "walk": length,
            "blocked": blocked,
            "now": now,
            "ahead": ask.ahead,
            "cap": cap,
        }


def _whole_first_turn(limits: FleetLimits) -> bool:
    """Whether a claim's first turn may be sent before its state is read: keyed limits and no
    queue-wide one, so the claim may take as many as it asks for and the turn takes (and
    claims: `limit_marked`) no more than the claim will."""
    queue_wide = (limits.concurrency is not None and not limits.keyed_concurrency) or (
        limits.rate is not None and not limits.keyed_rate
    )
    return limits.keyed and not queue_wide


def _one_trip(limits: FleetLimits, state: KeyedClaims) -> bool:
    """Whether a claim may end with its first turn (`limit_claim_full`): under a keyed
    concurrency alone (no rate state to read or write, no queue-wide count), and not the claim
    that sweeps the rate states gone by."""
    return limits.keyed_concurrency and limits.rate is None and (state.claims + 1) % _FORGET_EVERY != 0


def _turn_statement(ask: Turn) -> str:
    return "limit_turn_first" if ask.after is None else "limit_turn_after"


def _as_claimed(row: Sequence[Any], worker_id: str) -> list[Any]:
    """A row locked by a claim statement, as `limit_mark` left it."""
    patched = list(row)
    patched[_STATUS], patched[_ATTEMPTS], patched[_LOCK_BY] = "running", row[_ATTEMPTS] + 1, worker_id
    return patched


async def push_unique(db: SqlDatabase, queue: str, task: NewTask) -> tuple[TaskId, bool]:
    """Push one task with a unique key; the id of the task that holds the key after it, and
    whether a task is new or changed (its queue's pollers are then to be woken)."""
    unique = task.unique
    assert unique is not None
    now = time.time()  # the clock `until` was stamped with
    holder = {"queue": queue, "key": unique.key, "now": now, "states": unique.state_names()}
    if unique.on_conflict == "skip":
        found = await db.fetch("unique_holder", holder)
        if found:
            return str(found[0][0]), False

    async def push(s: Session) -> tuple[TaskId, bool]:
        found = await s.fetch("unique_holder", holder)
        if not found:
            return task.id, await s.execute("unique_insert", _insert(queue, task)) > 0
        held = str(found[0][0])
        if unique.on_conflict == "extend":
            await s.execute("unique_extend", {"id": held, "until": unique.until})
        elif unique.on_conflict == "replace":
            return held, await s.execute("unique_replace", {**_insert(queue, task), "id": held}) > 0
        return held, False

    return await db.locked("unique", queue, unique.key, push, durable=True)


def _insert(queue: str, task: NewTask) -> dict[str, Any]:
    unique = task.unique
    return {
        "id": task.id,
        "queue": queue,
        "payload": task.payload,
        "run_at": task.run_at,
        "priority": task.priority,
        "max_attempts": task.max_attempts,
        "idempotency_key": task.idempotency_key,
        "meta": encode_meta(task.meta),
        "limit_key": task.limit_key,
        "waited": task.waited,
        "unique_key": None if unique is None else unique.key,
        "unique_until": None if unique is None else unique.until,
    }
