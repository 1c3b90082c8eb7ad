"""How many tasks of which key a limited claim may take: the one algorithm every store that
claims in steps (SQLite and memory, inside their atomic step) runs over its own primitives.

Without a keyed limit the claim is the store's ordinary one, taking no more than the queue-wide
limits allow. With one, keys take turns: the claim walks the keys that have waiting tasks in key
order, starting after the key where the worker's last claim stopped and coming round once, and
takes the first ready task (priority, then run_at) of each key under its limits; while slots are
left and some key had room, it walks again. Keys come in batches from one index walk
(`KeysAfter`) and their tasks are claimed by one statement per batch (`TakeHeads`), so a claim
costs a few statements, not a few per key. A key at its limit is passed over at the cost of one
index step, so however deep its backlog, other keys keep their speed; priority and run_at order
tasks within a key, not across keys.

A store that can walk the keys and claim their first tasks in one statement is
asked for a `Turn` instead of `Keys` then `Heads`: the keys without room are named to it
(`blocked`: at their concurrency, or out of rate in this claim; a stored rate state it reads
itself), so the walk steps once per key, the key's first task with that step, and the claim
costs one statement per turn and about one index step per task, as an unlimited claim's scan.

The algorithm is written once, as steps that ask for I/O (`claim_steps`, a generator of `Keys`,
`Heads`, `Turn` and `Take` requests answered with their results), driven by `claim_round` over a
sync store's callables (SQLite's thread, memory) and by `claim_round_async` over an async
driver's (MySQL, pgmq). PostgreSQL runs it once more on the server, whole (its migration 0009,
a PL/pgSQL function with `Turn`'s walk), as Redis does in Lua: one round trip a claim.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .limits import FleetLimits
from .rates import EPSILON, allowance, next_start, spend

__all__ = [
    "QUEUE_RATE",
    "ClaimRound",
    "Heads",
    "KeyedClaims",
    "Keys",
    "Take",
    "Turn",
    "Turned",
    "claim_round",
    "claim_round_async",
    "claim_steps",
    "rate_ahead",
    "rate_key",
]

QUEUE_RATE = "*"
"""The rate state of a queue-wide rate limit (a keyed one's states are `rate_key(key)`)."""

MAX_BATCH = 1000
"""Keys one index walk returns at most."""
MAX_KEYS_PER_CLAIM = 10_000
"""Keys one claim looks at, at most: the next claim goes on from where this one stopped."""


def rate_key(key: str | None) -> str:
    """The name of a key's rate state (tasks pushed without a key share the state "-")."""
    return "-" if key is None else f"k:{key}"


@dataclass(slots=True)
class ClaimRound:
    """What one limited claim did: how many it `claimed`, the rate states it moved (`rates`, by
    state name), the key to go on after next time (`after`) and when a rate next allows a start
    to a key it had to pass over (`wake_at`)."""

    claimed: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    after: str | None = None
    wake_at: float | None = None

    def wake(self, at: float) -> None:
        """Remember the earliest time worth another claim."""
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


class KeyedClaims:
    """One worker's limited claiming, kept by its store between claims: its limits, where its
    last claim stopped among the keys (`after`), how many claims it made (`claims`: a store
    forgets rate states gone by every so many), and when a rate next lets a start through for
    a key it passed over (`wake_at`)."""

    __slots__ = ("after", "claims", "limits", "wake_at")

    def __init__(self, limits: FleetLimits) -> None:
        self.limits = limits
        self.after: str | None = None
        self.claims = 0
        self.wake_at: float | None = None

    def claimed(self, done: ClaimRound) -> None:
        """Remember where `done` stopped and when to try again."""
        self.claims += 1
        self.after = done.after
        self.wake_at = done.wake_at


@dataclass(frozen=True, slots=True)
class Keys:
    """Asks for up to `count` keys with waiting tasks, in key order, above `after` (None: from
    the first); answered with an `Iterable[str]`, which the claim reads in order and only as far
    as it needs, all of it before its next step (a store that finds the keys as they are read,
    such as SQLite's recursive walk, finds no more than that). A store whose `rates` mapping it
    fills as it reads may fill it here with the keys' rate states (the claim reads a key's
    after the key)."""

    after: str | None
    count: int


@dataclass(frozen=True, slots=True)
class Heads:
    """Asks to claim the first ready task of each of `keys`; answered with how many each key
    gave (a `Mapping[str, int]` of 0 or 1)."""

    keys: Sequence[str]


@dataclass(frozen=True, slots=True)
class Take:
    """Asks to claim up to `count` ready tasks (`key` None: of the whole queue in its usual
    order, or with a keyed limit those pushed without a key); answered with how many it took."""

    key: str | None
    count: int


@dataclass(frozen=True, slots=True)
class Turn:
    """Asks to claim, in one go, the first ready task of each key with waiting tasks, in key
    order, above `after` (None: from the first) and up to `upto` (None: to the last), passing
    over the keys in `blocked` and, where `ahead` is set (a keyed rate), those whose stored rate
    state is more than `ahead` seconds past `now`; until `count` are claimed or `scan` keys
    seen. Answered with a `Turned`. A store that answers it fills the `rates` mapping of the
    claim with the rate state of each key it claimed for (as for `Keys`)."""

    after: str | None
    upto: str | None
    count: int
    scan: int
    blocked: frozenset[str]
    now: float
    ahead: float | None


@dataclass(frozen=True, slots=True)
class Turned:
    """What a `Turn` did: the keys it claimed a task of, in key order; how many keys it saw;
    the last one (None: none); whether it stopped for want of keys (`ended`: none left in its
    range) rather than having chosen `count` or seen `scan`; and the earliest rate state of a
    key it passed over for its rate (`wake_tat`)."""

    taken: Sequence[str]
    seen: int
    last: str | None
    ended: bool
    wake_tat: float | None = None


Step = Keys | Heads | Take | Turn
Steps = Generator[Step, Any, ClaimRound]
KeysAfter = Callable[[str | None, int], Iterable[str]]
TakeHeads = Callable[[Sequence[str]], Mapping[str, int]]
TakeSome = Callable[[str | None, int], int]


def claim_round(
    limits: FleetLimits,
    want: int,
    now: float,
    *,
    running: Mapping[str | None, int],
    rates: Mapping[str, float],
    keys_after: KeysAfter,
    take_heads: TakeHeads,
    take: TakeSome,
    after: str | None = None,
    turn: Callable[[Turn], Turned] | None = None,
) -> ClaimRound:
    """Claim up to `want` tasks within `limits` through a sync store's callables (`claim_steps`);
    with `turn`, keys take their turns through it (`Turn`) rather than through `keys_after` and
    `take_heads`."""
    steps = claim_steps(limits, want, now, running=running, rates=rates, after=after, in_turns=turn is not None)
    answer: Any = None
    try:
        while True:
            step = steps.send(answer)
            if isinstance(step, Keys):
                answer = keys_after(step.after, step.count)
            elif isinstance(step, Heads):
                answer = take_heads(step.keys)
            elif isinstance(step, Take):
                answer = take(step.key, step.count)
            else:
                assert turn is not None  # a Turn is asked only by claim_steps(in_turns=True)
                answer = turn(step)
    except StopIteration as done:
        result: ClaimRound = done.value
        return result


async def claim_round_async(
    limits: FleetLimits,
    want: int,
    now: float,
    *,
    running: Mapping[str | None, int],
    rates: Mapping[str, float],
    keys_after: Callable[[str | None, int], Awaitable[Sequence[str]]],
    take_heads: Callable[[Sequence[str]], Awaitable[Mapping[str, int]]],
    take: Callable[[str | None, int], Awaitable[int]],
    after: str | None = None,
    turn: Callable[[Turn], Awaitable[Turned]] | None = None,
) -> ClaimRound:
    """`claim_round` through an async store's callables; with `turn`, keys take their turns
    through it (`Turn`) rather than through `keys_after` and `take_heads`."""
    steps = claim_steps(limits, want, now, running=running, rates=rates, after=after, in_turns=turn is not None)
    answer: Any = None
    try:
        while True:
            step = steps.send(answer)
            if isinstance(step, Turn):
                assert turn is not None
                answer = await turn(step)
            elif isinstance(step, Keys):
                answer = await keys_after(step.after, step.count)
            elif isinstance(step, Heads):
                answer = await take_heads(step.keys)
            else:
                answer = await take(step.key, step.count)
    except StopIteration as done:
        result: ClaimRound = done.value
        return result


def claim_steps(
    limits: FleetLimits,
    want: int,
    now: float,
    *,
    running: Mapping[str | None, int],
    rates: Mapping[str, float],
    after: str | None = None,
    in_turns: bool = False,
) -> Steps:
    """Claim up to `want` tasks within `limits`, asking for each read and claim in turn (with
    `in_turns`, each walk of the keys as one `Turn`).

    `running` counts the running tasks by key (the rows themselves, so a crashed worker's count
    goes with its leases); `rates` are the stored rate states. `Take(None, n)` claims in the
    queue's usual order; with a keyed limit it claims tasks pushed without a key (by a producer
    that did not read the worker's config), one group of their own offered what the keys leave.
    """
    result = ClaimRound(after=after)
    budget = want
    if limits.concurrency is not None and not limits.keyed_concurrency:
        budget = min(budget, limits.concurrency - sum(running.values()))
    if limits.rate is not None and not limits.keyed_rate:
        queue_tat = rates.get(QUEUE_RATE)
        room = allowance(queue_tat, now, limits.rate, limits.per)
        if room < budget:
            result.wake(next_start(spend(queue_tat, now, 0, limits.rate, limits.per), limits.rate, limits.per))
        budget = min(budget, room)
    if budget <= 0:
        return result
    if not limits.keyed:
        got = yield Take(None, budget)
        _spent(limits, result, rates, QUEUE_RATE, got, now)
        result.claimed = got
        return result
    turns = _Turns(limits, result, now, running, rates)
    start = after
    walk = turns.turn if in_turns else turns.walk
    while budget > 0:
        taken = yield from walk(start, budget)
        budget -= taken
        if taken == 0 or not turns.room_left:
            break
        start = None  # another walk for the keys that still had room, from the first key
    if budget > 0:
        got = turns.room(None, budget)
        if got > 0:
            taken = yield Take(None, got)
            turns.took(None, taken)
            budget -= taken
    result.claimed = turns.claimed
    if not limits.keyed_rate:  # a queue-wide rate beside a keyed concurrency: the claim spends it
        _spent(limits, result, rates, QUEUE_RATE, turns.claimed, now)
    return result


class _Turns:
    """The keys' turns within one claim: each key's room under its limits, and what it took."""

    __slots__ = ("claimed", "limits", "now", "rates", "result", "room_left", "running", "seen")

    def __init__(
        self,
        limits: FleetLimits,
        result: ClaimRound,
        now: float,
        running: Mapping[str | None, int],
        rates: Mapping[str, float],
    ) -> None:
        self.limits, self.result, self.now, self.rates = limits, result, now, rates
        self.running = dict(running)
        self.claimed = 0
        self.seen = 0
        self.room_left = False

    def room(self, key: str | None, budget: int) -> int:
        """How many more tasks of `key` this claim may start."""
        limits, room = self.limits, budget
        if limits.keyed_concurrency and limits.concurrency is not None:
            room = min(room, limits.concurrency - self.running.get(key, 0))
        if limits.keyed_rate and limits.rate is not None:
            state = rate_key(key)
            tat = self.result.rates.get(state, self.rates.get(state))
            allowed = allowance(tat, self.now, limits.rate, limits.per)
            if allowed <= 0 and tat is not None:
                self.result.wake(next_start(tat, limits.rate, limits.per))
            room = min(room, allowed)
        return max(room, 0)

    def took(self, key: str | None, got: int) -> None:
        if got:
            self.running[key] = self.running.get(key, 0) + got
            self.claimed += got
            if self.limits.keyed_rate:
                _spent(self.limits, self.result, self.rates, rate_key(key), got, self.now)

    def walk(self, after: str | None, budget: int) -> Generator[Step, Any, int]:
        """One turn for every key with waiting tasks, from the one after `after`, coming round
        once; the first task of each key with room, until `budget` is spent. Each batch of keys
        is read only until the claim is full: the keys after that are left for the next claim."""
        taken, cursor, wrapped = 0, after, after is None
        self.room_left = False
        limits, running = self.limits, self.running
        # A keyed concurrency alone (the common case) needs no rate: each key's room is its cap
        # less its running count, worked out here rather than by room() and took() per key,
        # whose calls were a good part of the walk's cost in Python (bench.claimpath_sqlite)
        cap = limits.concurrency if limits.keyed_concurrency and not limits.keyed_rate else None
        while budget - taken > 0 and self.seen < MAX_KEYS_PER_CLAIM:
            want = budget - taken
            keys: Iterable[str] = yield Keys(cursor, _batch(want))
            upto = after if wrapped else None  # round again up to where it began
            chosen: list[str] = []
            read, room_left, last = 0, self.room_left, None
            for key in keys:
                if upto is not None and key > upto:
                    break
                read += 1
                last = key
                wanted = want - len(chosen)
                if cap is not None:
                    room = cap - running.get(key, 0)
                    if room > wanted:
                        room = wanted
                else:
                    room = self.room(key, wanted)
                if room > 0:
                    chosen.append(key)
                    room_left = room_left or room > 1
                    if len(chosen) == want:
                        break
            self.seen += read
            self.room_left = room_left
            if last is None:
                if wrapped:
                    break
                wrapped, cursor = True, None
                continue
            self.result.after = last
            got: Mapping[str, int] = (yield Heads(chosen)) if chosen else {}
            if cap is not None:
                before = taken
                for key, n in got.items():
                    running[key] = running.get(key, 0) + n
                    taken += n
                self.claimed += taken - before
            else:
                for key, n in got.items():
                    self.took(key, n)
                    taken += n
            cursor = last
        return taken

    def turn(self, after: str | None, budget: int) -> Generator[Step, Any, int]:
        """`walk` as `Turn`s: the store walks the keys and claims their first tasks in one go,
        passing over those this claim knows to have no room (`blocked`)."""
        limits, taken, cursor, wrapped = self.limits, 0, after, after is None
        ahead = rate_ahead(limits)
        cap = limits.concurrency if limits.keyed_concurrency and not limits.keyed_rate else None
        self.room_left = False
        while budget - taken > 0 and self.seen < MAX_KEYS_PER_CLAIM:
            upto = after if wrapped else None
            ask = Turn(cursor, upto, budget - taken, MAX_KEYS_PER_CLAIM - self.seen, self._blocked(), self.now, ahead)
            turned: Turned = yield ask
            self.seen += turned.seen
            if turned.wake_tat is not None and limits.rate is not None:
                self.result.wake(next_start(turned.wake_tat, limits.rate, limits.per))
            if cap is not None:  # worked out inline, as in `walk`
                running = self.running
                for key in turned.taken:
                    started = running.get(key, 0)
                    if cap - started > 1 and budget - taken > 1:
                        self.room_left = True
                    running[key] = started + 1
                    taken += 1
                self.claimed += len(turned.taken)
            else:
                for key in turned.taken:
                    self.room_left = self.room_left or self.room(key, budget - taken) > 1
                    self.took(key, 1)
                    taken += 1
            if turned.last is not None:
                self.result.after = cursor = turned.last
            if turned.ended:
                if wrapped:
                    break
                wrapped, cursor = True, None
        return taken

    def _blocked(self) -> frozenset[str]:
        """The keys this claim knows to have no room: at their concurrency (the running rows and
        this claim's), or out of rate by what this claim started."""
        limits, blocked = self.limits, set[str]()
        if limits.keyed_concurrency and limits.concurrency is not None:
            cap = limits.concurrency
            blocked.update(key for key, n in self.running.items() if key is not None and n >= cap)
        if limits.keyed_rate and limits.rate is not None:
            for state, tat in self.result.rates.items():
                if state.startswith("k:") and allowance(tat, self.now, limits.rate, limits.per) <= 0:
                    blocked.add(state[2:])
        return frozenset(blocked)


def rate_ahead(limits: FleetLimits) -> float | None:
    """A `Turn`'s `ahead` under `limits`: how far past now a key's stored rate state closes it
    (None: no keyed rate)."""
    if not limits.keyed_rate or limits.rate is None:
        return None
    # allowance() is 0 exactly when a state is further ahead than this (less a margin: the
    # server's float arithmetic must never let through a start it would refuse)
    return limits.per - (1 - EPSILON) * limits.per / limits.rate - 1e-6


def _batch(wanted: int) -> int:
    """How many keys to read for `wanted` more tasks: a quarter more, for keys without room
    (those at their limit are mostly the ones the last claims took, behind the walk), and a
    few; another batch follows where they were not enough."""
    return min(MAX_BATCH, wanted + wanted // 4 + 8)


def _spent(
    limits: FleetLimits, result: ClaimRound, rates: Mapping[str, float], state: str, got: int, now: float
) -> None:
    if got and limits.rate is not None:
        tat = result.rates.get(state, rates.get(state))
        result.rates[state] = spend(tat, now, got, limits.rate, limits.per)
