"""Global limits and unique pushes on SQLite: `apalis_cli.fleet` over statements in
`sql/limits.sql`, run inside the store's one write transaction (`BEGIN IMMEDIATE`), which every
daemon sharing the file takes in turn: what a claim reads cannot change before it writes.

Under a keyed concurrency without a keyed rate, the keys take their turns in one statement each
(`claim_turn_*`: the walk and the claim of the keys' first tasks, whose rows never reach
Python); a keyed rate's claim walks the keys here (`keys_after`), reading each key's state.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from apalis_cli.backend import NewTask
from apalis_cli.fleet import ClaimRound, KeyedClaims, claim_round
from apalis_cli.fleet.claim import Turn, Turned
from apalis_cli.task import TaskId
from apalis_sql import Queries, encode_meta, insert_params

__all__ = ["KeyedClaims", "claim_limited", "enqueue_keyed"]

_FORGET_EVERY = 256
"""Claims of one worker between two sweeps of the rate states gone by."""


class _Rates(Mapping[str, float]):
    """The stored rate states of a queue, each read when the claim first asks for it."""

    def __init__(self, conn: sqlite3.Connection, q: Queries, queue: str) -> None:
        self._conn, self._q, self._queue = conn, q, queue
        self._seen: dict[str, float | None] = {}

    def __getitem__(self, state: str) -> float:
        if state not in self._seen:
            row = self._conn.execute(self._q.rate_state, {"queue": self._queue, "state": state}).fetchone()
            self._seen[state] = None if row is None else float(row[0])
        value = self._seen[state]
        if value is None:
            raise KeyError(state)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, v in self._seen.items() if v is not None)

    def __len__(self) -> int:
        return sum(1 for v in self._seen.values() if v is not None)


def claim_limited(
    conn: sqlite3.Connection, q: Queries, queue: str, worker_id: str, limit: int, now: float, state: KeyedClaims
) -> list[Any]:
    """Claim up to `limit` tasks for `worker_id` within `state.limits`; the claimed rows."""
    limits = state.limits
    params: dict[str, Any] = {"queue": queue, "worker": worker_id, "now": now}
    paused, running_keys = conn.execute(q.limit_state, params).fetchone()
    if paused:
        return []  # a paused queue hands out nothing (apalis_cli.control)
    running: dict[str | None, int] = Counter(json.loads(running_keys))
    rates = _Rates(conn, q, queue)
    rows: list[Any] = []
    walking: list[sqlite3.Cursor] = []
    heads: dict[str, int | None] = {}  # by key: the row of its first waiting task, where due

    def walked() -> None:
        while walking:
            walking.pop().close()  # a walk read only as far as the claim needed: ended here

    def keys_after(after: str | None, count: int) -> Iterator[str]:
        walked()
        if after is None:
            found = conn.execute(q.keys_from_first, {"queue": queue, "walk": count, "upto": None})
        else:
            found = conn.execute(q.keys_after, {"queue": queue, "after": after, "walk": count, "upto": None})
        walking.append(found)
        return read(found)

    def read(found: sqlite3.Cursor) -> Iterator[str]:
        # The keys as the claim reads them: the recursive walk finds each when it is read, so
        # the keys after the last one the claim needs are never walked. Each key's first task
        # comes with it: its row, or None when it is not due (claim_heads then looks again).
        for key, row, run_at in found:
            heads[key] = row if run_at <= now else None
            yield key  # TEXT in a STRICT table: str

    def take_heads(keys: Sequence[str]) -> dict[str, int]:
        walked()
        chosen = [heads[key] for key in keys]
        if None not in chosen:
            got = conn.execute(q.claim_rows, {**params, "rows": json.dumps(chosen)}).fetchall()
            rows.extend(got)
            # Each row was its key's first waiting task, read by the walk in this same write
            # transaction: every one is claimed. Were one not, its key would count a start it
            # did not make: this claim would start fewer, never more than the limits allow.
            return dict.fromkeys(keys, 1)
        got = conn.execute(q.claim_heads, {**params, "keys": json.dumps(list(keys))}).fetchall()
        taken: dict[str, int] = {}
        for row in got:
            rows.append(row[:-1])
            taken[row[-1]] = taken.get(row[-1], 0) + 1
        return taken

    def turn(ask: Turn) -> Turned:
        after, upto = ask.after, ask.upto
        # Only the keys at their limit within the turn's range are named to it: those are most
        # often the keys the last claims took, which a turn from where they stopped never meets.
        blocked = [k for k in ask.blocked if (after is None or k > after) and (upto is None or k <= upto)]
        got = conn.execute(
            q.claim_turn_first if after is None else q.claim_turn_after,
            {
                **params,
                "after": after,
                "upto": upto,
                "count": ask.count,
                "walk": ask.scan,
                "blocked": json.dumps(blocked),
            },
        ).fetchall()
        taken = sorted(row[-1] for row in got)
        rows.extend(row[:-1] for row in got)
        # A turn that claimed fewer than it asked for ran out of keys in its range (or of keys
        # it may look at: `scan`); where it stopped among them matters only to the next turn,
        # which then starts from the first key. The keys it saw are counted as those it took
        # (the statement does not say how far it walked): `scan` still bounds each turn.
        return Turned(taken, len(taken), taken[-1] if taken else None, len(taken) < ask.count)

    def take(key: str | None, n: int) -> int:
        walked()
        statement = q.claim_keyless if limits.keyed else q.claim
        got = conn.execute(statement, {**params, "limit": n}).fetchall()
        rows.extend(got)
        return len(got)

    try:
        done: ClaimRound = claim_round(
            limits,
            limit,
            now,
            running=running,
            rates=rates,
            keys_after=keys_after,
            take_heads=take_heads,
            take=take,
            after=state.after,
            turn=None if limits.keyed_rate else turn,
        )
    finally:
        walked()
    if done.rates:
        conn.executemany(q.set_rate_state, [(queue, name, tat) for name, tat in done.rates.items()])
    state.claimed(done)
    if state.claims % _FORGET_EVERY == 0:
        conn.execute(q.forget_rate_states, {"queue": queue, "now": now})
    return rows


def enqueue_keyed(
    conn: sqlite3.Connection, q: Queries, queue: str, tasks: Sequence[NewTask], now: float
) -> list[TaskId]:
    """Insert tasks that carry a limit key or a unique key; the id each push answers with.

    A unique task is checked against the rows and inserted one at a time, so two pushes of one
    key in the same batch see each other. Runs inside the push's write transaction.
    """
    ids: list[TaskId] = []
    for task, params in zip(tasks, insert_params(queue, tasks, now), strict=True):
        unique = task.unique
        if unique is not None:
            found = conn.execute(
                q.unique_holder,
                {"queue": queue, "key": unique.key, "now": now, "states": json.dumps(unique.state_names())},
            ).fetchone()
            if found is not None:
                holder = str(found[0])
                if unique.on_conflict == "extend":
                    conn.execute(q.unique_extend, {"id": holder, "until": unique.until})
                elif unique.on_conflict == "replace":
                    conn.execute(q.unique_replace, _replacement(holder, task))
                ids.append(holder)
                continue
        keyed = (
            *params,
            task.limit_key,
            None if unique is None else unique.key,
            None if unique is None else unique.until,
        )
        conn.execute(q.insert_keyed, keyed)
        ids.append(task.id)
    return ids


def _replacement(holder: TaskId, task: NewTask) -> dict[str, Any]:
    return {
        "id": holder,
        "payload": task.payload,
        "run_at": task.run_at,
        "priority": task.priority,
        "max_attempts": task.max_attempts,
        "meta": encode_meta(task.meta),
        "limit_key": task.limit_key,
    }
