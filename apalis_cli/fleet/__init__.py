"""Limits that hold across every daemon of a queue, enforced by the store itself.

- `limits`: `FleetLimits`, what a worker's `scope = "global"` layers ask of its store.
- `keys`: the key a task is limited under, taken from its arguments when it is pushed (imported
  by the producers that need it: it is not loaded with the config).
- `rates`: the arithmetic of a fleet-wide rate (GCRA: one time per key, no counter to leak).
- `claim`: choosing how many tasks of which key a claim may take (keys take turns).
- `unique`: unique jobs, one per key per window, derived from the store's own rows.

A limited claim leaves the tasks over a limit in the store, unclaimed: they take no worker's
slot, and keys under their limit are claimed past them (no head-of-line blocking). Running
counts are read from the running rows themselves, so a crashed worker's slots come back with
its leases (the orphan sweep after `stale_after`); nothing is counted apart that could leak.
"""

from __future__ import annotations

from .claim import ClaimRound, KeyedClaims, claim_round, claim_round_async
from .limits import FleetLimits, fleet_limits
from .rates import allowance, next_start, spend
from .unique import CONFLICTS, DEFAULT_STATES, Unique, unique_from

__all__ = [
    "CONFLICTS",
    "DEFAULT_STATES",
    "ClaimRound",
    "FleetLimits",
    "KeyedClaims",
    "Unique",
    "allowance",
    "claim_round",
    "claim_round_async",
    "fleet_limits",
    "next_start",
    "spend",
    "unique_from",
]
