"""A keyed claim's turn on MySQL/MariaDB (`apalis_cli.fleet.claim.Turn`) in one statement.

`limit_turn_*` walks the keys in order and locks the first due task of each open key (one row
per key walked); which of them the turn takes is worked out here, from those rows: the first
`count` tasks in key order. Counting them in the statement (window functions over the walk)
cost the server more than the whole statement. Its heads beyond the `count` taken stay locked,
unclaimed, until the claim commits (a few: the walk is `count` keys long, plus those it knows
to be blocked in its range, plus a margin where a stored rate state may close a key); a later
turn of the same claim may take them.

A claim's first turn rides in the round trip that takes the lock (and carries the worker's
acknowledgement), sent before the claim knows which keys are at their concurrency: the
statement finds them itself (`cap`), and the walk is as long as the keys at their limit after
the worker's last claim suggest. The turn takes the first `count` heads it locked itself (it
counts them in a session variable as it sends their rows, and lists their ids for
`limit_marked`, which claims them in the same trip): the client reads which it took from the
rows. Under a keyed concurrency alone, a turn that took all the claim asks for leaves the client
nothing to decide, and the server commits and frees the lock in that same round trip
(`limit_claim_full`): a limited claim is one round trip, as an ordinary one. A first turn that
reached the last key first is followed by the walk from the first key (the claim's wrap) in a
second trip; a claim still short after them reads its state (`limit_state`) and goes on as
`claim_steps` asks, its first turns answered from the rows they sent.

Under a keyed concurrency alone, a claim first scans the keys' tasks interleaved (migration
0009, `limit_scan`: every key's first waiting task, then every key's second; one range scan, as
the ordinary claim's, instead of two lookups a key), taking and claiming them in its round trip
the same way (`scan_params`, `scanned`); a scan that came short leaves the rest of the claim to
the walk, and the worker's next claims walk until a walk fills one (the keys with room are then
few, or their tasks not numbered: the scan would only be read in vain first).

Before, a turn was two statements (`limit_keys_*`, then `limit_heads` for the keys with room),
two round trips per turn of a claim whose few round trips bound a drain at full speed; and
until session 11 a claim was two round trips: the lock, the state and the first turn; the
claim's UPDATE, the commit and the unlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apalis_cli.fleet.claim import Turn, Turned

__all__ = ["account", "scan_params", "scanned", "walk_length"]

SCAN_WINDOW_EXTRA = 64
"""Entries `limit_scan` reads beyond twice the claim (keys at their limit, tasks not due)."""


def walk_length(ask: Turn) -> int:
    """How many keys the statement walks for `ask`: enough for `count` open ones where there
    are as many, the keys `ask` names blocked in its range being passed over."""
    after, upto = ask.after, ask.upto
    blocked = sum(1 for key in ask.blocked if (after is None or key > after) and (upto is None or key <= upto))
    margin = ask.count // 4 + 8 if ask.ahead is not None else 2  # keys a stored rate state closes
    return max(1, min(ask.scan, ask.count + blocked + margin))


def account(ask: Turn, length: int, rows: Sequence[Sequence[Any]], key_at: int) -> tuple[list[Sequence[Any]], Turned]:
    """The rows the turn took (task columns, then key and rate state) and its `Turned`, from
    the statement's `rows` (one per key walked, in key order; the key at `key_at`, its rate
    state, whether it was open after it, and whether the turn took its head: the server counts
    them, `limit_marked` claims them) for a walk of at most `length` keys."""
    taken: list[Sequence[Any]] = []
    seen = 0
    wake_tat: float | None = None
    for row in rows:
        if len(taken) == ask.count:
            break
        seen += 1
        if row[key_at + 3]:
            taken.append(row)
        elif row[0] is None and not row[key_at + 2] and row[key_at + 1] is not None and row[key_at] not in ask.blocked:
            tat = float(row[key_at + 1])  # closed by its stored rate state: when it opens again
            wake_tat = tat if wake_tat is None else min(wake_tat, tat)
    return taken, Turned(
        taken=sorted(row[key_at] for row in taken),
        seen=seen,
        last=rows[seen - 1][key_at] if seen else None,
        ended=len(taken) < ask.count and len(rows) < length,  # the walk ran out of keys
        wake_tat=wake_tat,
    )


def scan_params(queue: str, want: int, cap: int) -> dict[str, Any]:
    """The parameters of `limit_scan` for a claim of `want` under a per-key concurrency `cap`:
    a window of twice the claim and `SCAN_WINDOW_EXTRA` entries, and up to an eighth more rows
    locked than it takes (a key met twice in the window takes its room once)."""
    return {
        "queue": queue,
        "count": want,
        "cap": cap,
        "window": 2 * want + SCAN_WINDOW_EXTRA,
        "lock": want + want // 8 + 2,
    }


def scanned(rows: Sequence[Sequence[Any]], key_at: int) -> list[Sequence[Any]]:
    """The rows `limit_scan` took (task columns, then the key at `key_at`, then whether taken)."""
    return [row for row in rows if row[key_at + 1]]
