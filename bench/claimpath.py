"""PostgreSQL's claim path alone: the server's CPU per task of an ack and the claim it carries,
the ordinary claim beside the limited one, on one backend, call by call. Not part of the suite.

    .venv/bin/python -m bench.claimpath --rounds 3
    .venv/bin/python -m bench.claimpath --variants plain,limited,limited:my_claim --install my_claim.sql
    .venv/bin/python -m bench.claimpath --probes probe_counts --install probes.sql --url postgresql://...:5499/test

`bench.limits` drains through a worker, whose rates and CPU drift with the machine's load by
more than a change to the claim is worth; here one connection runs every variant's statements
in turn (a claim of each, then the next round of claims), and each call's CPU is read from the
backend's `/proc/PID/schedstat` (nanoseconds: `/proc/PID/stat`'s 10 ms ticks are too coarse for
one call), so load hits every variant alike. Each round drains `--tasks` tasks over `--keys` keys
per variant, in claims of `--want`, each claim carrying the ack of the last one's tasks (all done,
as a drain of tasks that return nothing): as `bench.limits` with its worker taken away.

- `plain`: `ack_done`, the ordinary claim ahead (`ack.sql`), on a queue of the keyed tasks alone
  (`bench.limits`' unlimited drain);
- `limited`: `ack_done_limit_claim` (the function `limit_claim`) at a concurrency of one a key,
  on a queue whose `--hot` tasks of one key (priority 5, pushed first) wait behind one that
  runs for good (`bench.limits`' saturated drain);
- `limited:FN`: the same with `limit_claim` replaced by the function FN, made by an `--install`
  file (`{schema}`, `{channel}` and `{columns}` are filled in as in the store's SQL): a new
  version of the function measured against the old, in one schema and one backend.

`bench/claimpath_copies.sql` holds two such copies (a lean one and a flat one: bench/README.md
says what they measured). `--probes FN,...` calls each named function (same arguments as `limit_claim`, installed by
`--install`) after each limited claim, on that queue, and reports its CPU per call: a copy of
`limit_claim` that returns after some stage gives that stage's cost (it must claim nothing).

The tasks are inserted by one statement per queue, all before the first claim (so no round
measures another's pushes), and the table is not analyzed unless `--analyze` (a queue the
statistics do not know is what a daemon meets first, and the server here runs no autovacuum).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from apalis_postgres.schema import COLUMNS, load_statements

from .stores import DEFAULT_URLS, Target, open_store, prepare

__all__ = ["main"]


@dataclass(slots=True)
class _Drain:
    """One variant's drain in one round."""

    queue: str
    worker: str
    function: str | None  # None: the ordinary claim
    ids: list[str] = field(default_factory=list)
    after: str | None = None
    ns: int = 0
    tasks: int = 0
    calls: int = 0
    done: bool = False


def _schedstat(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _fill(conn: psycopg.Connection[Any], schema: str, queue: str, hot: int, tasks: int, keys: int) -> None:
    tasks_table = f'"{schema}".tasks'
    insert = (
        f"INSERT INTO {tasks_table} (id, queue, payload, run_at, priority, max_attempts, created_at, limit_key)"
        " SELECT %(queue)s || %(tag)s || lpad(g::text, 8, '0'), %(queue)s, '\\x7b7d', extract(epoch FROM now()),"
        " %(priority)s, 1, extract(epoch FROM now()), coalesce(%(key)s, 'k' || (g %% %(keys)s))"
        " FROM generate_series(1, %(count)s) AS g"
    )
    if hot:
        conn.execute(insert, {"queue": queue, "tag": "h", "priority": 5, "key": "hot", "keys": 1, "count": hot})
        conn.execute(
            f"UPDATE {tasks_table} SET status = 'running', lock_by = 'holder', attempts = 1 WHERE id = %s",
            (f"{queue}h00000001",),
        )
    conn.execute(insert, {"queue": queue, "tag": "c", "priority": 0, "key": None, "keys": keys, "count": tasks})


def _params(schema: str, d: _Drain, want: int) -> dict[str, Any]:
    if d.function is None:
        return {
            "ids": d.ids,
            "lock_by": d.worker,
            "queue": d.queue,
            "slots": [],
            "claim_for": d.worker,
            "claim_n": want,
        }
    return {
        "ids": d.ids,
        "lock_by": d.worker,
        "queue": d.queue,
        "slots": [],
        "claim_for": None,
        "claim_n": None,
        "worker": d.worker,
        "want": want,
        "after": d.after,
        "concurrency": 1,
        "keyed_concurrency": True,
        "rate": None,
        "per": 1.0,
        "keyed_rate": False,
        "scope": f"{schema}:limits:{d.queue}",
        "forget": False,
        "keyless_priority": None,
        "keyless_run_at": None,
        "keyless_id": None,
    }


def _call(conn: psycopg.Connection[Any], pid: int, text: str, params: dict[str, Any]) -> tuple[list[Any], int]:
    before = _schedstat(pid)
    with conn.cursor(binary=True) as cursor:
        cursor.execute(text.encode(), params, prepare=True)
        rows = cursor.fetchall()
    return rows, _schedstat(pid) - before


def run(args: argparse.Namespace) -> None:
    url = args.url or DEFAULT_URLS["postgres"]
    target: Target = prepare("postgres", url, uuid.uuid4().hex[:8])

    async def migrate() -> None:
        await (await open_store(target)).close()

    asyncio.run(migrate())
    schema = target.options["schema"]
    sql = load_statements(schema)
    quoted = f'"{schema}"'
    conn = psycopg.connect(url, autocommit=True, application_name=f"bench-claimpath-{target.namespace}")
    try:
        for path in args.install:
            with open(path) as f:
                text = f.read().replace("{schema}", quoted).replace("{channel}", f"'{schema}'")
            conn.execute(text.replace("{columns}", COLUMNS).encode())
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        variants: list[str] = args.variants.split(",")
        probes: list[str] = [p for p in args.probes.split(",") if p]
        queues = {}
        for number in range(args.rounds):
            for variant in variants:
                queue = f"q{number}_{variant.replace(':', '_')}"
                _fill(conn, schema, queue, 0 if variant == "plain" else args.hot, args.tasks, args.keys)
                queues[number, variant] = queue
        if args.analyze:
            conn.execute(f"ANALYZE {quoted}.tasks".encode())
        per_task: dict[str, list[float]] = {v: [] for v in variants}
        for number in range(args.rounds):
            drains = {}
            for variant in variants:
                function = None if variant == "plain" else variant.partition(":")[2] or "limit_claim"
                drains[variant] = _Drain(queues[number, variant], f"w-{variant}", function)
            probed = {p: [0, 0] for p in probes}
            while not all(d.done for d in drains.values()):
                for d in drains.values():
                    if d.done:
                        continue
                    if d.function is None:
                        rows, ns = _call(conn, pid, sql["ack_done"], _params(schema, d, args.want))
                        d.ids = [row[0] for row in rows]
                    else:
                        text = sql["ack_done_limit_claim"].replace(f"{quoted}.limit_claim(", f"{quoted}.{d.function}(")
                        rows, ns = _call(conn, pid, text, _params(schema, d, args.want))
                        d.ids, d.after = [row[0] for row in rows[:-1]], rows[-1][15]
                        for probe in probes if d.ids else ():
                            text = sql["limit_claim"].replace(f"{quoted}.limit_claim(", f"{quoted}.{probe}(")
                            probed[probe][0] += _call(conn, pid, text, _params(schema, d, args.want) | {"ids": []})[1]
                            probed[probe][1] += 1
                    d.ns, d.tasks, d.calls = d.ns + ns, d.tasks + len(d.ids), d.calls + 1
                    d.done = not d.ids
            parts = []
            for variant, d in drains.items():
                per_task[variant].append(d.ns / 1000 / max(d.tasks, 1))
                parts.append(f"{variant} {per_task[variant][-1]:.1f} us/task ({d.tasks} in {d.calls} calls)")
            parts += [f"{p} {ns / 1000 / max(n, 1):.0f} us/call" for p, (ns, n) in probed.items()]
            print(f"round {number + 1}: {', '.join(parts)}; load {os.getloadavg()[0]:.1f}", flush=True)
        print(
            "medians, server CPU per task:",
            ", ".join(f"{v} {statistics.median(x):.1f} us" for v, x in per_task.items()),
        )
    finally:
        conn.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE".encode())
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claimpath", description=__doc__.split("\n")[0])
    parser.add_argument("--url", help=f"a PostgreSQL URL ({DEFAULT_URLS['postgres']})")
    parser.add_argument("--variants", default="plain,limited")
    parser.add_argument("--install", action="append", default=[], metavar="FILE")
    parser.add_argument("--probes", default="", metavar="FN,...")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hot", type=int, default=20000)
    parser.add_argument("--want", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--analyze", action="store_true", help="ANALYZE the table after the pushes")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
