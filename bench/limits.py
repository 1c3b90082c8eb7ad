"""Global limits: does a saturated key slow the others (head-of-line blocking), and what does a
limit cost per task? Not part of the test suite.

    .venv/bin/python -m bench.limits --backend memory,sqlite,redis,postgres,mysql,pgmq --tasks 5000 --rounds 2

Each round drains the same `--tasks` tasks over `--keys` keys through one in-process worker at
concurrency 50 in four ways, one after the other (interleaved, so drift hits them alike):

- `unlimited`: no global limit: the store's ordinary claim;
- `keyed`: `concurrency = 1` per key, `scope = "global"`, no key saturated: the limit's own cost;
- `saturated`: the same, with a key pushed first (and at a higher priority) whose `--hot` tasks
  wait behind one that never ends: only the other keys' tasks are timed;
- `queue-wide`: a global concurrency over the whole queue, never reached;
- `keyed-rate`: a global rate per key (10,000 a second), never reached: its cost (a rate
  state read and written per key claimed).

It prints the medians of the rounds: tasks per second, and CPU time per task (a shared machine
bends it less than the rate): this process's, and the server's where it can be told apart
(PostgreSQL: the backends of this run's `application_name`, from `/proc`; MariaDB and Redis: the
whole server process, other clients' work included); `saturated / unlimited` (no head-of-line
blocking: a rate >= 0.9) and `saturated / keyed` (the saturated key's own effect), as rates and as
CPU per task of this process and the server together (saturated over the other: above 1, dearer);
and the cost of each limit per task in CPU microseconds, this process's and the server's.
`steady` is the rate over the last four fifths of the timed tasks: a store that sets a saturated
key's backlog aside once pays that in the whole drain's rate, not in the steady one, which is the
speed of unrelated keys while one key stays saturated (Redis did so until a key's tasks waited in
its own line from the push: bench/README.md).

`--min-seconds S` (default 1.5) makes each timed drain last at least S seconds: an untimed
round of `--tasks` first gives each mode's rate, and that mode's task count becomes rate x S when
that is more than `--tasks` (a half-second drain cannot resolve a 10% difference here).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import statistics
import time
import uuid
from typing import Any, NamedTuple

from apalis_cli.backend import Store
from apalis_cli.layers import ConcurrencyLayer, RateLimitLayer
from apalis_cli.service import Layer
from apalis_cli.sink import new_task
from apalis_cli.task import Task
from apalis_cli.worker import Worker

from .servercpu import ServerCpu, name_target
from .stores import CODEC, Unavailable, open_store, prepare

MODES = ("unlimited", "keyed", "saturated", "queue-wide", "keyed-rate")
CONCURRENCY = 50
MIN_SECONDS = 1.5  # a 10% difference is then ~0.15 s, well above the timer and scheduling noise


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


async def _push(backend: Any, values: list[dict[str, Any]], priority: int = 0) -> None:
    for start in range(0, len(values), 1000):
        chunk = values[start : start + 1000]
        await backend.enqueue(
            [
                new_task(CODEC.encode(v), default_max_attempts=1, limit_key=v["account"], priority=priority)
                for v in chunk
            ]
        )


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Drained(NamedTuple):
    """One timed drain: the cold keys' tasks per second, over the whole drain and over its last
    four fifths (`steady`: a backlog set aside before the first cold task runs is not in it, nor
    is a queue's one-time setup, such as pgmq's key index built by the first limited claim), and
    CPU per task in microseconds, this process's (both threads: the event loop's and SQLite's)
    and the server's (None where there is none), over the same two spans."""

    rate: float
    steady: float
    cpu: float
    server: float | None
    steady_cpu: float
    steady_server: float | None


async def drain(store: Store, mode: str, tasks: int, keys: int, hot: int, server: ServerCpu) -> Drained:
    """A timed drain of `tasks` cold tasks over `keys` keys in `mode` (`hot` tasks of one key
    before them in `saturated`)."""
    queue = f"bench_limits_{mode.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    backend: Any = store.backend(queue, codec=CODEC, max_attempts=1)
    layers: list[Layer] = []
    if mode in ("keyed", "saturated"):
        layers = [ConcurrencyLayer(1, scope="global", key="account")]
    elif mode == "queue-wide":
        layers = [ConcurrencyLayer(10_000, scope="global")]
    elif mode == "keyed-rate":
        layers = [RateLimitLayer(10_000, 1.0, scope="global", key="account")]
    release = asyncio.Event()
    if mode == "saturated":
        await _push(backend, [{"account": "hot", "n": n} for n in range(hot)], priority=5)
    await _push(backend, [{"account": f"k{n % keys}", "n": n} for n in range(tasks)])
    done = 0
    finished = asyncio.Event()
    fifth, fifth_at, fifth_cpu = max(tasks // 5, 1), 0.0, 0.0
    fifth_server: dict[int, float] | None = None

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal done, fifth_at, fifth_cpu, fifth_server
        if args["account"] == "hot":
            await release.wait()
            return
        done += 1
        if done == fifth:
            fifth_at, fifth_cpu, fifth_server = time.perf_counter(), _cpu(), server.mark()
        if done == tasks:
            finished.set()

    worker = Worker(name="bench", backend=backend, handler=handler, concurrency=CONCURRENCY, layers=layers)
    stop = asyncio.Event()
    server.start()
    started, cpu = time.perf_counter(), _cpu()
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(300):
            await finished.wait()
        ended, ended_cpu = time.perf_counter(), _cpu()
        elapsed, steady, cpu, steady_cpu = ended - started, ended - fifth_at, ended_cpu - cpu, ended_cpu - fifth_cpu
        served = server.spent()
        served_steady = None if fifth_server is None else server.spent(since=fifth_server)
    finally:
        release.set()
        worker.hurry()
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
    steady_tasks = tasks - fifth
    return Drained(
        tasks / elapsed,
        steady_tasks / steady,
        cpu / tasks * 1e6,
        None if served is None else served / tasks * 1e6,
        steady_cpu / steady_tasks * 1e6,
        None if served_steady is None else served_steady / steady_tasks * 1e6,
    )


def cpu_total(worker_us: float, server_us: float | None) -> float:
    """A mode's CPU per task, this process's and the server's where it is known: a limited claim
    moves work to the server (PostgreSQL's runs there whole), so the worker's share alone would
    hide its cost. The ratios printed (`saturated / unlimited`: above 1, the limit costs CPU) are
    of these totals."""
    return worker_us + (server_us or 0.0)


def scaled_tasks(tasks: int, rate: float, min_seconds: float) -> int:
    """The task count of each timed drain: `tasks`, or more (rounded up to a hundred) so that a
    drain at `rate` lasts at least `min_seconds`."""
    if min_seconds <= 0 or rate <= 0 or rate != rate:
        return tasks
    return max(tasks, -(-math.ceil(rate * min_seconds) // 100) * 100)


def _us(x: float | None, width: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.0f}"


async def run(kinds: list[str], tasks: int, keys: int, hot: int, rounds: int, min_seconds: float = 0.0) -> None:
    for kind in kinds:
        try:
            target = prepare(kind, None, uuid.uuid4().hex[:8])
            name = name_target(target, f"bench-limits-{target.namespace}")
            server = ServerCpu(kind, target.url, name)
            store = await open_store(target)
        except Unavailable as exc:
            print(f"{kind}: skipped ({exc})")
            continue
        try:
            counts = dict.fromkeys(MODES, tasks)
            if min_seconds > 0:  # an untimed drain of each mode (a warm-up too) sets its task count
                for mode in MODES:
                    counts[mode] = scaled_tasks(
                        tasks, (await drain(store, mode, tasks, keys, hot, server)).rate, min_seconds
                    )
            rates: dict[str, list[float]] = {mode: [] for mode in MODES}
            steadies: dict[str, list[float]] = {mode: [] for mode in MODES}
            cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
            served: dict[str, list[float | None]] = {mode: [] for mode in MODES}
            steady_totals: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(rounds):
                for mode in MODES:
                    got = await drain(store, mode, counts[mode], keys, hot, server)
                    rates[mode].append(got.rate)
                    steadies[mode].append(got.steady)
                    cpus[mode].append(got.cpu)
                    served[mode].append(got.server)
                    steady_totals[mode].append(cpu_total(got.steady_cpu, got.steady_server))
            med = {mode: statistics.median(values) for mode, values in rates.items()}
            steady_med = {mode: statistics.median(values) for mode, values in steadies.items()}
            cpu_med = {mode: statistics.median(values) for mode, values in cpus.items()}
            server_med = {mode: _median(values) for mode, values in served.items()}
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            scaling = (
                f" or more (n: each drain >= {min_seconds:g} s, by a first untimed one)" if min_seconds > 0 else ""
            )
            print(
                f"{kind}: {tasks} tasks{scaling}"
                f" over {keys} keys, concurrency {CONCURRENCY}, {rounds} rounds (medians),"
                f" load {load}"
            )
            total = {mode: cpu_total(cpu_med[mode], server_med[mode]) for mode in MODES}
            steady_total = {mode: statistics.median(values) for mode, values in steady_totals.items()}
            for mode in MODES:
                line = (
                    f"  {mode:<11}{f' n={counts[mode]:<6}' if min_seconds > 0 else ''}"
                    f" {med[mode]:>9,.0f}/s (steady {steady_med[mode]:>7,.0f}/s)"
                    f" {cpu_med[mode]:>6.0f} us CPU/task (server {_us(server_med[mode], 4)})"
                    f"  rounds: {', '.join(f'{r:,.0f}' for r in rates[mode])}"
                )
                if mode != "unlimited":
                    line += (
                        f"   rate {med[mode] / med['unlimited']:.2f} of unlimited,"
                        f" CPU {total[mode] - total['unlimited']:+.0f} us/task with the server"
                    )
                print(line)
            print(
                f"  saturated / unlimited: rate {med['saturated'] / med['unlimited']:.2f},"
                f" CPU per task {total['saturated'] / total['unlimited']:.2f}"
                f"; saturated / keyed: rate {med['saturated'] / med['keyed']:.2f},"
                f" CPU per task {total['saturated'] / total['keyed']:.2f} (a hot key of {hot} tasks)"
            )
            server_scope = server.scope or "no server process apart"
            print(
                f"  CPU per task, this process + server ({server_scope}): unlimited {total['unlimited']:.0f} us,"
                f" keyed {total['keyed']:.0f} us, saturated {total['saturated']:.0f} us"
            )
            print(
                f"  steady (the last four fifths): saturated / unlimited rate"
                f" {steady_med['saturated'] / steady_med['unlimited']:.2f},"
                f" CPU per task {steady_total['saturated'] / steady_total['unlimited']:.2f}"
                f" ({steady_total['unlimited']:.0f} -> {steady_total['saturated']:.0f} us);"
                f" saturated / keyed rate {steady_med['saturated'] / steady_med['keyed']:.2f},"
                f" CPU per task {steady_total['saturated'] / steady_total['keyed']:.2f}"
            )
        finally:
            await store.close()
            await target.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="memory,sqlite,redis,postgres,mysql,pgmq")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hot", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=MIN_SECONDS,
        help="each timed drain lasts at least this long: an untimed unlimited drain first sets the task count"
        f" ({MIN_SECONDS:g}; 0: --tasks as given)",
    )
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile (process time) of the whole run to FILE")
    args = parser.parse_args()
    work = run(args.backend.split(","), args.tasks, args.keys, args.hot, args.rounds, args.min_seconds)
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(asyncio.run, work)
        profiler.dump_stats(args.profile)
    else:
        asyncio.run(work)


if __name__ == "__main__":
    main()
