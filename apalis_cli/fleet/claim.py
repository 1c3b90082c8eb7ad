"""How many tasks of which key a limited claim may take: the one algorithm every store that
claims in steps (SQLite and memory, inside their atomic step) runs over its own primitives.

Without a keyed limit the claim is the store's ordinary one, taking no more than the queue-wide
limits allow. With one, keys take turns: the claim visits the keys that have ready tasks in key
order, starting after the key where the worker's last claim stopped, and takes from each as
many as its limits allow (its ready tasks in their usual order: priority, then run_at). A key
at its limit is passed over at the cost of one index step, so however deep its backlog, other
keys keep their speed; priority and run_at order tasks within a key, not across keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .limits import FleetLimits
from .rates import allowance, next_start, spend

__all__ = ["QUEUE_RATE", "ClaimRound", "claim_round", "rate_key"]

QUEUE_RATE = "*"
"""The rate state of a queue-wide rate limit (a keyed one's states are `rate_key(key)`)."""

MAX_KEYS_PER_CLAIM = 5000
"""Keys one claim visits at most: the next claim goes on from where this one stopped."""


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


NextKey = Callable[[str | None], str | None]
"""The smallest key above the one given (None: from the first) that has waiting tasks; None at the end."""
Take = Callable[[str | None, int], int]
"""Claim up to n ready tasks of a key (None: of the whole queue, in its usual order); how many."""


def claim_round(
    limits: FleetLimits,
    want: int,
    now: float,
    *,
    running: Mapping[str | None, int],
    rates: Mapping[str, float],
    next_key: NextKey,
    take: Take,
    after: str | None = None,
    unkeyed: Take | None = None,
) -> ClaimRound:
    """Claim up to `want` tasks within `limits`.

    `running` counts the running tasks by key (the rows themselves, so a crashed worker's count
    goes with its leases); `rates` are the stored rate states. `unkeyed` claims tasks pushed
    without a key (by a producer that did not read the worker's config) as one group of their
    own; they are offered what the keys leave.
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
        got = take(None, budget)
        _spent(limits, result, rates, QUEUE_RATE, got, now)
        result.claimed = got
        return result

    visited = 0
    wrapped = after is None
    key = next_key(after)
    while budget > 0 and visited < MAX_KEYS_PER_CLAIM:
        if key is None:
            if wrapped:
                break
            wrapped, key = True, next_key(None)
            continue
        if wrapped and after is not None and key > after:
            break  # every key has had its turn
        visited += 1
        got = _take_key(limits, result, key, budget, now, running, rates, take)
        budget -= got
        result.claimed += got
        result.after = key
        key = next_key(key)
    if budget > 0 and unkeyed is not None:
        result.claimed += _take_key(limits, result, None, budget, now, running, rates, unkeyed)
    return result


def _take_key(
    limits: FleetLimits,
    result: ClaimRound,
    key: str | None,
    budget: int,
    now: float,
    running: Mapping[str | None, int],
    rates: Mapping[str, float],
    take: Take,
) -> int:
    room = budget
    if limits.keyed_concurrency and limits.concurrency is not None:
        room = min(room, limits.concurrency - running.get(key, 0))
    state = rate_key(key)
    if limits.keyed_rate and limits.rate is not None:
        tat = result.rates.get(state, rates.get(state))
        allowed = allowance(tat, now, limits.rate, limits.per)
        if allowed <= 0 and tat is not None:
            result.wake(next_start(tat, limits.rate, limits.per))
        room = min(room, allowed)
    if room <= 0:
        return 0
    got = take(key, room)
    if limits.keyed_rate:
        _spent(limits, result, rates, state, got, now)
    return got


def _spent(
    limits: FleetLimits, result: ClaimRound, rates: Mapping[str, float], state: str, got: int, now: float
) -> None:
    if got and limits.rate is not None:
        tat = result.rates.get(state, rates.get(state))
        result.rates[state] = spend(tat, now, got, limits.rate, limits.per)
