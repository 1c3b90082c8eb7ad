"""pgmq's claim path alone: the server's CPU per task of the ordinary claim (`read`) and of the
limited one (the queue's claim function), each followed by the acknowledgement (`archive`), on
one backend, call by call. Not part of the suite.

    .venv/bin/python -m bench.claimpath_pgmq --rounds 3
    .venv/bin/python -m bench.claimpath_pgmq --variants plain,limited,limited:new --sql new=/tmp/new/sql
    .venv/bin/python -m bench.claimpath_pgmq --url postgresql://127.0.0.1:5499/test --variants limited --separate

As `bench.claimpath` for PostgreSQL: `bench.limits` drains through a worker whose rates and CPU
drift with the machine's load by more than a change to the claim is worth; here one connection
runs every variant's claims in turn, each call's CPU read from the backend's
`/proc/PID/schedstat`. Each round drains `--tasks` messages over `--keys` keys per variant in
claims of `--want`, each claim's messages archived before the next claim (all done):

- `plain`: the ordinary claim (`read`), on a queue of the keyed messages alone (`bench.limits`'
  unlimited drain);
- `limited`: the queue's limited claim function at a concurrency of one a key, on a queue whose
  `--hot` messages of one key, sent first, wait behind one of theirs that is in flight for good
  (`bench.limits`' saturated drain), the key index made before the first claim;
- with `--hold`, each claim's messages are archived after the next claim, not before it: each
  claim meets ~`--want` messages in flight, as a drain at concurrency 50 does (their keys at
  their limit, counted and passed over by the limited claim);
- `limited:NAME`: the same with the statements of the `sql/` folder given by `--sql NAME=DIR` (a
  copy of `backends/apalis_pgmq/sql` with a change): a new version measured against the old.

`--separate` opens a new connection (a new backend) after the queues are filled: run under a
private server started by `valgrind --tool=callgrind`, that backend's profile holds the drains and
nothing else (instructions are repeatable where seconds are not: bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from apalis_pgmq.statements import claim_fn_of, key_index_of, old_key_indexes_of, statements_for
from apalis_sql.files import Queries, render, split_named, without_comments

from .stores import open_store, prepare

__all__ = ["main"]

_FRAGMENTS = ("status", "archived", "notify_waiters")


@dataclass(slots=True)
class _Drain:
    """One variant's drain in one round."""

    queue: str
    sql: dict[str, str]
    limited: bool
    after: str | None = None
    claim_ns: int = 0
    ack_ns: int = 0
    tasks: int = 0
    calls: int = 0
    done: bool = False
    held: list[tuple[int, int]] = field(default_factory=list)


def _schedstat(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def statements_in(folder: str, queue: str) -> dict[str, str]:
    """The statements of a copy of the store's `sql/` folder, rendered for `queue` as
    `apalis_pgmq.statements.statements_for` renders the store's own."""
    queries: dict[str, str] = {}
    for entry in sorted(Path(folder).glob("*.sql")):
        queries.update(split_named(entry.read_text(encoding="utf-8"), entry.name[:-4]))
    fragments = {name: sql for name, sql in queries.items() if name.startswith("_")}
    for _ in fragments:
        fragments = {name: render(sql, fragments) for name, sql in fragments.items()}
    loaded = Queries({n: without_comments(render(q, fragments)) for n, q in queries.items() if n not in fragments})
    names = {
        "q": f'pgmq."q_{queue}"',
        "a": f'pgmq."a_{queue}"',
        "key_index": f'"{key_index_of(queue)}"',
        "old_key_indexes": ", ".join(f'pgmq."{name}"' for name in old_key_indexes_of(queue)),
        "claim_fn": f'apalis_pgmq."{claim_fn_of(queue)}"',
    }
    names.update({fragment: render(loaded[fragment], names) for fragment in _FRAGMENTS})
    names["all_tasks"] = render(loaded["all_tasks"], names)
    return {name: render(sql, names) for name, sql in loaded.items()}


def _fill(conn: psycopg.Connection[Any], queue: str, hot: int, tasks: int, keys: int) -> None:
    conn.execute("SELECT pgmq.create(%s)", (queue,))
    key = "coalesce(%(key)s, 'k' || (g %% %(keys)s))"
    insert = (
        f'INSERT INTO pgmq."q_{queue}" (vt, message, headers)'
        f" SELECT now() - interval '1 s', jsonb_build_object('account', {key}, 'n', g),"
        f" jsonb_build_object('apalis', jsonb_build_object('limit_key', {key}))"
        " FROM generate_series(1, %(count)s) AS g"
    )
    if hot:
        conn.execute(insert.encode(), {"key": "hot", "keys": 1, "count": hot})
        held = f"UPDATE pgmq.\"q_{queue}\" SET vt = now() + interval '1 day', read_ct = 1 WHERE msg_id = 1"
        conn.execute(held.encode())
    conn.execute(insert.encode(), {"key": None, "keys": keys, "count": tasks})


def _claim_params(d: _Drain, want: int) -> dict[str, Any]:
    params: dict[str, Any] = {"queue": d.queue, "worker": "w", "lease": 30}
    if not d.limited:
        return params | {"qty": want}
    return params | {
        "want": want,
        "after": d.after,
        "concurrency": 1,
        "keyed_concurrency": True,
        "rate": None,
        "per": 1.0,
        "keyed_rate": False,
        "scope": f"apalis_pgmq:limits:{d.queue}",
        "forget": False,
    }


def _step(conn: psycopg.Connection[Any], pid: int, d: _Drain, want: int, hold: bool) -> None:
    """One claim of `d` and the archive of what it claimed (with `hold`, of what the claim before
    it claimed: a claim then meets the last one's messages in flight), each call's server CPU
    counted."""
    before = _schedstat(pid)
    rows = conn.execute(d.sql["limit_claim" if d.limited else "read"].encode(), _claim_params(d, want)).fetchall()
    if d.limited:
        d.after, rows = rows[-1][6], rows[:-1]
    claimed = _schedstat(pid)
    done = [(row[0], row[1]) for row in rows]
    if hold:
        done, d.held = d.held, done
    if done:
        ids, cts = [i for i, _ in done], [ct for _, ct in done]
        conn.execute(d.sql["archive"].encode(), {"queue": d.queue, "ids": ids, "cts": cts}).fetchall()
    d.claim_ns += claimed - before
    d.ack_ns += _schedstat(pid) - claimed
    d.tasks, d.calls, d.done = d.tasks + len(rows), d.calls + 1, not rows and not d.held


def run(args: argparse.Namespace) -> None:
    target = prepare("pgmq", args.url, uuid.uuid4().hex[:8])

    async def install() -> None:  # the apalis_pgmq schema (and pgmq, in a scratch database)
        await (await open_store(target)).close()

    asyncio.run(install())
    folders = dict(spec.split("=", 1) for spec in args.sql)
    variants: list[str] = args.variants.split(",")
    conn = psycopg.connect(target.url, autocommit=True, application_name=f"bench-claimpath-pgmq-{target.namespace}")
    queues: dict[tuple[int, str], tuple[str, dict[str, str]]] = {}
    try:
        for number in range(args.rounds):
            for variant in variants:
                queue = f"cp{number}_{variant.replace(':', '_')}_{target.namespace}"[:47]
                folder = folders.get(variant.partition(":")[2])
                sql = statements_in(folder, queue) if folder else statements_for(queue)
                _fill(conn, queue, 0 if variant == "plain" else args.hot, args.tasks, args.keys)
                if variant != "plain":
                    conn.execute(sql["create_key_index"].encode())
                    conn.execute(sql["create_limit_claim"].encode())
                queues[number, variant] = queue, sql
        if args.separate:
            conn.close()
            conn = psycopg.connect(target.url, autocommit=True)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        print(f"the drains' backend: pid {pid}", flush=True)
        per_task: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for number in range(args.rounds):
            drains = {v: _Drain(*queues[number, v], limited=v != "plain") for v in variants}
            while not all(d.done for d in drains.values()):
                for d in drains.values():
                    if not d.done:
                        _step(conn, pid, d, args.want, args.hold)
            parts = []
            for variant, d in drains.items():
                n = max(d.tasks, 1)
                per_task[variant].append((d.claim_ns / 1000 / n, d.ack_ns / 1000 / n))
                claim, ack = per_task[variant][-1]
                parts.append(f"{variant} {claim:.1f} + {ack:.1f} us/task ({d.tasks} in {d.calls} claims)")
            print(f"round {number + 1}: {', '.join(parts)}; load {os.getloadavg()[0]:.1f}", flush=True)
        print(
            "medians, server CPU per task, claim + archive:",
            ", ".join(
                f"{v} {statistics.median(c for c, _ in x):.1f} + {statistics.median(a for _, a in x):.1f} us"
                for v, x in per_task.items()
            ),
        )
    finally:
        conn.close()
        with psycopg.connect(target.url, autocommit=True) as admin:  # a --url's database is kept
            for queue, _ in queues.values():
                admin.execute("SELECT pgmq.drop_queue(%s)", (queue,))
        asyncio.run(target.cleanup())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claimpath_pgmq", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a PostgreSQL URL with pgmq (default: a scratch database on the bench's server)")
    parser.add_argument("--variants", default="plain,limited")
    parser.add_argument("--sql", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hot", type=int, default=20000)
    parser.add_argument("--want", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--hold",
        action="store_true",
        help="archive each claim's messages after the next claim (a drain's ~--want in flight)",
    )
    parser.add_argument("--separate", action="store_true", help="drain on a backend of its own (for callgrind)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
