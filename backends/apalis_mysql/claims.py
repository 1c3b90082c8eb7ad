"""Claims: tasks locked for one worker, in the caller's transaction, and those claimed ahead.

A commit waits for the server's redo-log flush, which costs milliseconds, far more than a round
trip. So the transaction that acknowledges a worker's finished runs also claims as many new
tasks as those runs free slots (never more: backpressure holds), and the worker's poll stream
takes them (`apalis_cli.ahead`) before it claims on its own: a busy worker pays one commit per
batch, not two. Tasks claimed ahead count as running for the worker's heartbeat (they are not
lost claims) and go back to the queue when the stream closes. An ack claims ahead only for a
worker whose last claim came back full (`apalis_sql.Backlog`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from apalis_cli.task import Task
from apalis_sql import TASK_COLUMNS, task_from_row

__all__ = ["transact"]

_STATUS, _ATTEMPTS, _LOCK_BY, _PRIORITY, _RUN_AT = (
    TASK_COLUMNS.index(name) for name in ("status", "attempts", "lock_by", "priority", "run_at")
)

_COLUMNS = len(TASK_COLUMNS)

Conn = Any  # asyncmy ships no usable annotations for its Cython classes

CANDIDATES = 3
"""Ready tasks read per task wanted (`claim_select`): enough for three claims at once to each
find theirs past those the others hold (a claim that finds fewer comes back short)."""


async def transact(
    conn: Conn,
    sql: Mapping[str, str],
    queue: str,
    first: Sequence[str],
    want: Sequence[tuple[str, int]],
    last: Callable[[list[list[Task[bytes]]]], list[tuple[str, Mapping[str, Any]]]] | None = None,
) -> tuple[list[int], list[list[Task[bytes]]]]:
    """Run the statements `first` (already bound) and claim, for each `(worker_id, limit)` of
    `want`, up to `limit` ready tasks: one transaction, in one round trip where it can be.

    The SKIP LOCKED select serves every worker: a second one in the same transaction would see
    the rows the first locked again (a transaction never skips its own locks). For one worker,
    the server claims the rows it locked (`claim_marked`) and commits in the same round trip;
    for several (or with `last`), a second trip sends the UPDATE of each worker's rows, the
    statements `last(claimed)` gives from what was claimed, and the COMMIT. Returns the rows
    each of `first` changed and the tasks claimed per worker, in claim order. On an error the
    caller closes the connection, which rolls the transaction back.
    """
    cursor = conn.cursor()
    total = sum(limit for _, limit in want)
    one_trip = last is None and len(want) <= 1
    script = ["START TRANSACTION", *first]
    if total:
        params = {"queue": queue, "limit": total, "candidates": CANDIDATES * total}
        script += [sql["claim_start"], cursor.mogrify(sql["claim_select"], params)]
        if one_trip:
            script.append(cursor.mogrify(sql["claim_marked"], [want[0][0]]))
    if one_trip:
        script.append("COMMIT")
    await cursor.execute(";\n".join(script))
    changed = []
    for _ in first:
        await cursor.nextset()
        changed.append(int(cursor.rowcount))
    rows: list[Any] = []
    if total:
        await cursor.nextset()  # claim_start
        await cursor.nextset()
        # In claim order (the rows come in the candidates' order, which no statement promises).
        rows = sorted(await cursor.fetchall(), key=lambda row: (-row[_PRIORITY], row[_RUN_AT], row[0]))
    claimed: list[list[Task[bytes]]] = []
    script = []
    for worker_id, limit in want:
        mine, rows = rows[:limit], rows[limit:]
        claimed.append([_claimed(row, worker_id) for row in mine])
        if mine and not one_trip:
            update = sql["claim_update"].replace("{ids}", ", ".join(["%s"] * len(mine)))
            script.append(cursor.mogrify(update, [worker_id, *(row[0] for row in mine)]))
    if not one_trip:
        if last is not None:
            script += [cursor.mogrify(query, params) for query, params in last(claimed)]
        await cursor.execute(";\n".join([*script, "COMMIT"]))
    while await cursor.nextset():
        pass
    return changed, claimed


def _claimed(row: Sequence[Any], worker_id: str) -> Task[bytes]:
    """The selected row as the claim's UPDATE left it (patching the row is cheaper than
    replacing the task's context afterwards)."""
    patched = list(row[:_COLUMNS])  # without the select's last column (`claim_select`)
    patched[_STATUS], patched[_ATTEMPTS], patched[_LOCK_BY] = "running", row[_ATTEMPTS] + 1, worker_id
    return task_from_row(patched)
