"""SQLite's claim path alone, for callgrind: a loop of transactions that each mark the last
claim's tasks done (`ack_done`, as the worker's acknowledgement) and claim the next `--want`
(`claim`, the one the acknowledgement carries). Not part of the suite.

    .venv/bin/python -m bench.claimpath_sqlite fill /tmp/claims.db --tasks 10000
    cp /tmp/claims.db /tmp/a.db && valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out \\
        .venv/bin/python -m bench.claimpath_sqlite run /tmp/a.db --transactions 20
    (the same with --transactions 100; the instructions a task are the difference / (80 x want))

`--mode keyed` (fill and run) spreads the tasks over `--keys` keys and claims them through the
limited claim (`claim_limited`) at a concurrency of one a key, as `bench.limits`' keyed drain;
`--mode saturated` also pushes `--hot` tasks of one key first, at a higher priority, and leaves
one of them running for good, as its saturated drain. `--behind 1` acknowledges each claim a
transaction later, so a claim's worth of keys runs at every claim, as in a drain at concurrency 50.

The statements are this tree's (`apalis_sqlite/sql`), run on a file `fill` made with this tree's
migrations through the store itself; run from another tree (PYTHONPATH) to measure its
statements on the same file. The instructions of two runs that differ only in their number of
transactions, taken one from the other, leave Python's start and the file's opening out, and
count the same at any load (the machine here is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from typing import Any

from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.fleet import FleetLimits, KeyedClaims
from apalis_cli.sink import new_task
from apalis_sql import load_queries
from apalis_sqlite import SqliteStore
from apalis_sqlite.limits import claim_limited

__all__ = ["main"]

_QUEUE = "claims"
_WORKER = "w-claimpath"


_MODES = ("plain", "keyed", "saturated")
_LIMITS = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)


async def _fill(path: str, tasks: int, mode: str, keys: int, hot: int) -> None:
    store = SqliteStore.from_spec(StoreSpec(name="b", kind="sqlite", url=f"sqlite:///{path}", options={}))
    await store.open()
    try:
        queue: Any = store.backend(_QUEUE, codec=JsonCodec())
        if mode == "plain":
            for start in range(0, tasks, 1000):
                await queue.push_bulk([{"n": n} for n in range(start, min(start + 1000, tasks))])
            return
        pushes = [("hot", 5)] * (hot if mode == "saturated" else 0) + [(f"k{n % keys}", 0) for n in range(tasks)]
        for start in range(0, len(pushes), 1000):
            chunk = pushes[start : start + 1000]
            await queue.enqueue([new_task(b"{}", default_max_attempts=1, limit_key=k, priority=p) for k, p in chunk])
    finally:
        await store.close()
    if mode == "saturated":  # one hot task runs for good: its key is at its limit throughout
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(
            "UPDATE apalis_tasks SET status = 'running', lock_by = 'w-hot' WHERE rowid ="
            " (SELECT min(rowid) FROM apalis_tasks WHERE limit_key = 'hot')"
        )
        conn.close()


def _run(path: str, transactions: int, want: int, mode: str, behind: int) -> int:
    """Run the loop; the tasks claimed. Each transaction acknowledges the tasks claimed
    `behind` + 1 transactions before it, so `behind` claims' tasks are running at each claim."""
    queries = load_queries("apalis_sqlite", {"prefix": "apalis_"})
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA synchronous = NORMAL")
    claims: list[list[str]] = []
    total = 0
    limited = KeyedClaims(_LIMITS)
    for _ in range(transactions):
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        if len(claims) > behind:
            acked = claims.pop(0)
            conn.executemany(queries.ack_done, [(None, now, task_id, _WORKER) for task_id in acked])
        if mode == "plain":
            params = {"queue": _QUEUE, "worker": _WORKER, "now": now, "limit": want}
            rows = conn.execute(queries.claim, params).fetchall()
        else:
            rows = claim_limited(conn, queries, _QUEUE, _WORKER, want, now, limited)
        claims.append([row[0] for row in rows])
        conn.execute("COMMIT")
        total += len(rows)
    conn.close()
    return total


def main(argv: list[str] | None = None) -> None:
    """`fill PATH` or `run PATH`."""
    parser = argparse.ArgumentParser(prog="python -m bench.claimpath_sqlite", description=__doc__)
    parser.add_argument("what", choices=("fill", "run"))
    parser.add_argument("path")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--transactions", type=int, default=100)
    parser.add_argument("--want", type=int, default=50)
    parser.add_argument("--mode", choices=_MODES, default="plain")
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hot", type=int, default=20_000)
    parser.add_argument("--behind", type=int, default=0, help="claims left running (a drain at concurrency 50: 1)")
    args = parser.parse_args(argv)
    if args.what == "fill":
        asyncio.run(_fill(args.path, args.tasks, args.mode, args.keys, args.hot))
    else:
        print(f"claimed {_run(args.path, args.transactions, args.want, args.mode, args.behind)}")


if __name__ == "__main__":
    main()
