"""MariaDB's claim path alone: the server's CPU per task of an acknowledgement and the claim it
carries, the ordinary claim beside the keyed ones, through the store's own code. Not part of the
suite.

    .venv/bin/python -m bench.claimpath_mysql --url mysql://root@127.0.0.1:15206/test --rounds 5
    .venv/bin/python -m bench.claimpath_mysql --url ... --statements   # needs performance_schema=ON

Run it against a PRIVATE `mariadbd` with no other client: the server's CPU is read from every
thread of the process listening on the URL's port (`/proc/PID/task/*/schedstat`, nanoseconds;
the connections' threads and InnoDB's own, whose purge of the claimed rows is part of a claim's
price), around each call; this process's CPU in the call (the store's client side) beside it.
(`valgrind --tool=callgrind` of mariadbd hung here at a drain's first statements: bench/README.md,
MariaDB limits, session 14.) `bench.limits` drains through a worker whose rates and CPU drift
with the machine's load by more than a change to the claim is worth; here the variants' calls
alternate, one claim of each in turn, so load hits them alike. (Its figures are not a drain's:
a change it favours must still show in `bench.limits` pairs, bench/README.md session 15.)

Each round drains `--tasks` tasks over `--keys` keys per variant, in claims of `--want`, each
claim carrying the acknowledgement of the last one's tasks (all done, as a drain of tasks that
return nothing), as `bench.limits` with its worker taken away:

- `plain`: the ordinary claim (`Database.ack` with a claim ahead): `bench.limits`' unlimited drain;
- `keyed`: the limited claim (`LimitedClaims.claim` with the ack) at a concurrency of one a key,
  no key saturated: `bench.limits`' keyed drain;
- `saturated`: the same on a queue whose `--hot` tasks of one key (priority 5, pushed first)
  wait behind one that runs for good (the first claim takes it and it is never acknowledged):
  `bench.limits`' saturated drain.

`--statements` reads performance_schema's statement history after each call (the server must
run with `--performance-schema=ON`; the harness turns the history's consumers on) and prints,
per variant and statement of the scripts, its calls, time a call and a task claimed, rows
examined and temporary tables made: the claim's script statement by statement. The timings are
wall time (a COMMIT's includes its log flush), close to CPU on an idle private server; the
history costs the server CPU too, so take the CPU figures from a run without it. Each variant's tables have their own
queue; the tasks are pushed through the store (`push_bulk`) before the first claim, so no round
measures another's pushes.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from apalis_cli.fleet import FleetLimits
from apalis_cli.fleet.claim import KeyedClaims
from apalis_cli.service import Outcome
from apalis_cli.sink import new_task
from apalis_cli.task import Task
from apalis_sql.acks import plan_acks

from .servercpu import listening_pid
from .stores import CODEC, _cleanup, open_store, prepare

__all__ = ["main"]

VARIANTS = ("plain", "keyed", "saturated")
HOT_PRIORITY = 5  # the hot key's tasks, told apart by it


@dataclass(slots=True)
class _Drain:
    """One variant's drain in one round."""

    variant: str
    queue: Any  # the store's SqlQueue
    worker: str
    held: list[Task[bytes]] = field(default_factory=list)  # claimed, to acknowledge next call
    ns: int = 0
    client_ns: int = 0  # this process's CPU in the calls
    tasks: int = 0
    calls: int = 0
    done: bool = False


@dataclass(slots=True)
class _Seen:
    """One statement of the scripts, over a variant's calls (`--statements`)."""

    calls: int = 0
    us: float = 0.0
    examined: int = 0
    tmp: int = 0

    def add(self, us: float, examined: int, tmp: int) -> None:
        self.calls, self.us, self.examined, self.tmp = (
            self.calls + 1,
            self.us + us,
            self.examined + examined,
            self.tmp + tmp,
        )


def server_ns(pid: int) -> int:
    """CPU nanoseconds of every thread of process `pid` so far (`schedstat`'s first field)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended between the listing and the read
    return total


async def _fill(queue: Any, variant: str, tasks: int, keys: int, hot: int) -> None:
    """As `bench.limits` pushes: the hot key's tasks first (at a higher priority), then the
    others', each with the key its `account` names, in batches of 1,000."""
    values = [("hot", n, HOT_PRIORITY) for n in range(hot if variant == "saturated" else 0)]
    values += [(f"k{n % keys}", n, 0) for n in range(tasks)]
    for start in range(0, len(values), 1000):
        await queue.enqueue(
            [
                new_task(
                    CODEC.encode({"account": key, "n": n}), default_max_attempts=1, limit_key=key, priority=priority
                )
                for key, n, priority in values[start : start + 1000]
            ]
        )


async def _claim(d: _Drain, want: int) -> list[Task[bytes]]:
    """One call: the acknowledgement of the tasks held (none hot) and the claim it carries."""
    q, acked = d.queue, [t for t in d.held if t.ctx.priority != HOT_PRIORITY]
    if d.variant == "plain":
        plan = plan_acks([(t, Outcome.done()) for t in acked], 0.0)
        if not acked:
            return list(await q._db.claim(q.queue, d.worker, want))
        return list((await q._db.ack(q.queue, plan, [(d.worker, want)]))[0])
    limited = q._limited
    plan = plan_acks([(t, Outcome.done()) for t in acked], 0.0)
    return list(await limited.claim(d.worker, want, ack=plan if acked else None))


_LITERALS = re.compile(r"'(?:[^'\\]|\\.|'')*'|\b\d+(?:\.\d+)?\b")


def statement_head(text: str, prefix: str) -> str:
    """A statement of a script as `events_statements_history_long` records it (its text runs on
    to the script's end), cut at its end and told apart by its first words, literals as `?`."""
    first = text.split(";\n", 1)[0].replace(prefix, "")
    return " ".join(_LITERALS.sub("?", first).split())[:70]


async def _statements(conn: Any, prefix: str | None) -> list[tuple[str, float, int, int]]:
    """Each statement another connection ran since the last call (None: forget them all, and
    turn the history on): its head, wall-clock us, rows examined, temporary tables made."""
    async with conn.cursor() as cur:
        if prefix is None:
            await cur.execute(
                "UPDATE performance_schema.setup_consumers SET ENABLED = 'YES' WHERE NAME LIKE 'events_statements%'"
            )
            await cur.execute("TRUNCATE performance_schema.events_statements_history_long")
            return []
        await cur.execute(
            "SELECT SQL_TEXT, TIMER_WAIT / 1e6, ROWS_EXAMINED, CREATED_TMP_TABLES"
            " FROM performance_schema.events_statements_history_long"
            " WHERE THREAD_ID <> (SELECT THREAD_ID FROM performance_schema.threads"
            " WHERE PROCESSLIST_ID = CONNECTION_ID())"
        )
        rows = await cur.fetchall()
        await cur.execute("TRUNCATE performance_schema.events_statements_history_long")
    return [(statement_head(str(text), prefix), float(us), int(n), int(tmp)) for text, us, n, tmp in rows]


async def run(args: argparse.Namespace) -> None:
    import asyncmy

    target = prepare("mysql", args.url, uuid.uuid4().hex[:8])
    port = urlsplit(target.url).port or 3306
    pid = listening_pid(port)
    if pid is None:
        raise SystemExit(f"no server process found listening on port {port} (it must be local)")
    store: Any = await open_store(target)
    u = urlsplit(target.url)
    probe = await asyncmy.connect(
        host=u.hostname or "127.0.0.1",
        port=port,
        user=u.username or "root",
        password=u.password or "",
        database=u.path.lstrip("/") or "test",
    )
    variants: list[str] = args.variants.split(",")
    limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True)
    per_task: dict[str, list[float]] = {v: [] for v in variants}
    client: dict[str, list[float]] = {v: [] for v in variants}
    claimed: dict[str, int] = dict.fromkeys(variants, 0)
    by_statement: dict[tuple[str, str], _Seen] = {}
    prefix = str(target.options["table_prefix"])
    try:
        queues: dict[tuple[int, str], Any] = {}
        for number in range(args.rounds):
            for variant in variants:
                queue = store.backend(f"q{number}_{variant}", codec=CODEC, max_attempts=1)
                await _fill(queue, variant, args.tasks, args.keys, args.hot)
                queues[number, variant] = queue
        if args.statements:
            await _statements(probe, None)
        for number in range(args.rounds):
            drains = []
            for variant in variants:
                d = _Drain(variant, queues[number, variant], f"w-{variant}-{number}")
                if variant != "plain":
                    d.queue._limited.workers[d.worker] = KeyedClaims(limits)
                drains.append(d)
            while not all(d.done for d in drains):
                for d in drains:
                    if d.done:
                        continue
                    before = server_ns(pid)
                    mine = time.process_time_ns()
                    got = await _claim(d, args.want)
                    d.client_ns += time.process_time_ns() - mine
                    spent = server_ns(pid) - before
                    cold = sum(t.ctx.priority != HOT_PRIORITY for t in got)
                    if args.statements:
                        for head, us, examined, tmp in await _statements(probe, prefix):
                            by_statement.setdefault((d.variant, head), _Seen()).add(us, examined, tmp)
                    d.ns, d.tasks, d.calls, d.held = d.ns + spent, d.tasks + cold, d.calls + 1, got
                    d.done = not cold
            parts = []
            for d in drains:
                per_task[d.variant].append(d.ns / 1000 / max(d.tasks, 1))
                client[d.variant].append(d.client_ns / 1000 / max(d.tasks, 1))
                claimed[d.variant] += d.tasks
                parts.append(
                    f"{d.variant} {per_task[d.variant][-1]:.1f} us/task, client {client[d.variant][-1]:.1f}"
                    f" ({d.tasks} in {d.calls} calls)"
                )
            print(f"round {number + 1}: {', '.join(parts)}; load {os.getloadavg()[0]:.1f}", flush=True)
        medians = {v: statistics.median(x) for v, x in per_task.items()}
        print("medians, server CPU per task:", ", ".join(f"{v} {m:.1f} us" for v, m in medians.items()))
        print("client:", ", ".join(f"{v} {statistics.median(x):.1f} us" for v, x in client.items()))
        if "plain" in medians:
            print("over plain:", ", ".join(f"{v} {m / medians['plain']:.2f}" for v, m in medians.items()))
        if args.statements:
            print("statements, per variant: calls, wall us a call and a task, rows examined and temp tables a call")
            for (variant, head), seen in sorted(by_statement.items(), key=lambda kv: (kv[0][0], -kv[1].us)):
                n, tasks = seen.calls, max(claimed[variant], 1)
                print(
                    f"  {variant:<9} {n:>6} {seen.us / n:>8.1f} {seen.us / tasks:>7.2f}"
                    f" {seen.examined / n:>7.1f} {seen.tmp / n:>4.1f}  {head}"
                )
    finally:
        probe.close()
        await store.close()
        await _cleanup(target)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claimpath_mysql", description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="a private MariaDB's URL, mysql://root@127.0.0.1:PORT/test")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hot", type=int, default=20000)
    parser.add_argument("--want", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", action="store_true", help="per-statement timings (performance_schema)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
