"""Global limits: does a saturated key slow the others (head-of-line blocking: issue 15 asks that
unrelated keys keep >= 90 % of the unlimited drain's throughput), and what does a limit cost per
task? Not part of the test suite.

    .venv/bin/python -m bench.limits --backend memory,sqlite,redis,postgres,mysql,pgmq --rounds 5
    .venv/bin/python -m bench.limits --backend postgres --url postgres=postgresql://postgres@127.0.0.1:15432/test \
        --modes unlimited,saturated --rounds 7

Each round drains the same `--tasks` tasks over `--keys` keys through one in-process worker at
concurrency 50 in up to five ways, one after the other:

- `unlimited`: no global limit: the store's ordinary claim;
- `saturated`: `concurrency = 1` per key, `scope = "global"`, with a key pushed first (and at a
  higher priority) whose `--hot` tasks wait behind one that never ends: only the other keys'
  tasks are timed;
- `keyed`: the same limit, no key saturated: the limit's own cost;
- `queue-wide`: a global concurrency over the whole queue, never reached;
- `keyed-rate`: a global rate per key (10,000 a second), never reached: its cost (a rate
  state read and written per key claimed).

`--modes` picks some (`unlimited,saturated` always): `--modes unlimited,saturated` judges the bar
alone in two fifths of the time.

**The verdict.** One drain's rate swings by a third from minute to minute on a shared machine,
so the bar is not judged on medians of rates taken apart: each round runs `unlimited` and
`saturated` back to back (which goes first alternates by round), the ratio of the two is that
round's, and the verdict is the median of those ratios over the rounds, with their range
(bench/limits_verdict.py): "postgres: no head-of-line blocking: met, ratio 0.95 (range
0.88-1.03 over 5 rounds)". Give `--rounds 5` or more (the default) for a verdict worth reading.
The ratios judged are of the steady drains (`steady`: the rate over the last four fifths of each
drain's timed tasks), every store alike: what a store does once per queue (pgmq's key index and
its first marking of lost messages, made by the saturated drain's first claim with 25,000
messages in the queue; a backlog set aside once) falls in the first fifth. The whole drains'
ratios are printed below the table.

The table gives, per mode, the rate's median and range over the rounds, `steady` (the rate over
the last four fifths of the timed tasks: a store that sets a saturated key's backlog aside once,
or a queue's one-time setup such as pgmq's key index, pays that before them), CPU time per task
(a shared machine bends it less than the rate): this process's (both threads: the event loop's
and SQLite's), the server's where it can be told apart (PostgreSQL: the backends of this run's
`application_name`, from `/proc`; MariaDB and Redis: the whole server process listening on the
URL's port, other clients' work included), and both; and each mode's rate and CPU as per-round
ratios to the same round's `unlimited` drain (a limit's cost per task is its CPU over
unlimited's). Below the table: the steady saturated / unlimited ratio of each round (judged),
the whole drains' one, and saturated / keyed (the saturated key's own effect, without the limit's cost).

`--url KIND=URL` (repeatable) points a store at another server, e.g. a private PostgreSQL on a
spare port; by default each kind uses the local server of `bench/stores.py`.

`--min-seconds S` (default 1.5) makes each timed drain last at least S seconds: an untimed
round of `--tasks` first gives each mode's rate, and that mode's task count becomes rate x S when
that is more than `--tasks` (a half-second drain cannot resolve a 10% difference here);
`unlimited` and `saturated` both drain the larger of their two counts (drains of one length
compare, and one untimed rate taken at a bad moment does not shorten the pair).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import statistics
import sys
import time
import uuid
from typing import Any, NamedTuple

from apalis_cli.backend import Store
from apalis_cli.layers import ConcurrencyLayer, RateLimitLayer
from apalis_cli.service import Layer
from apalis_cli.sink import new_task
from apalis_cli.task import Task
from apalis_cli.worker import Worker
from rich.console import Console
from rich.table import Table

from .limits_verdict import Verdict, judge, pair_order
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


class Rounds:
    """Every timed drain of one store, by mode, in round order (a mode left out by `--modes` has
    none)."""

    def __init__(self, modes: tuple[str, ...]) -> None:
        self.modes = modes
        self.drains: dict[str, list[Drained]] = {mode: [] for mode in modes}

    def rates(self, mode: str) -> list[float]:
        return [d.rate for d in self.drains[mode]]

    def totals(self, mode: str) -> list[float]:
        """CPU per task, this process's and the server's, per round."""
        return [cpu_total(d.cpu, d.server) for d in self.drains[mode]]

    def ratios(self, mode: str, field: str = "rate", against: str = "unlimited") -> list[float]:
        """`mode` over `against`, round by round (the same round's drains: drift hits both)."""
        return [
            getattr(m, field) / getattr(a, field) for m, a in zip(self.drains[mode], self.drains[against], strict=True)
        ]

    def cpu_ratios(self, mode: str, against: str = "unlimited") -> list[float]:
        return [m / a for m, a in zip(self.totals(mode), self.totals(against), strict=True)]


def _spread(values: list[float], digits: int = 0) -> str:
    """ "median (min-max)" of a figure over the rounds, rates with thousands separators."""
    fmt = f",.{digits}f"
    med = format(statistics.median(values), fmt)
    return med if len(values) < 2 else f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _us(values: list[float | None]) -> str:
    known = _median(values)
    return "-" if known is None else f"{known:.0f}"


def print_rounds(console: Console, kind: str, got: Rounds, counts: dict[str, int], header: str, scope: str) -> None:
    """A store's table: per mode, the rate's median and range over the rounds, the steady rate,
    CPU per task (this process, server, both), and the median of the per-round ratios to the
    same round's unlimited drain; then the per-round saturated / unlimited ratios and the
    verdict."""
    table = Table(title=header, title_justify="left")
    for column in ("mode", "n", "tasks/s median (range)", "steady/s", "µs CPU/task", "server µs", "both µs"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    table.add_column("rate / unlimited, per round: median (range)", justify="right")
    table.add_column("CPU / unlimited", justify="right")
    for mode in got.modes:
        drains = got.drains[mode]
        relative = ("", "") if mode == "unlimited" else (_spread(got.ratios(mode), 2), _spread(got.cpu_ratios(mode), 2))
        table.add_row(
            mode,
            f"{counts[mode]:,}",
            _spread(got.rates(mode)),
            f"{statistics.median(d.steady for d in drains):,.0f}",
            f"{statistics.median(d.cpu for d in drains):.0f}",
            _us([d.server for d in drains]),
            f"{statistics.median(got.totals(mode)):.0f}",
            *relative,
        )
    console.print(table)
    ratios = got.ratios("saturated", "steady")
    keyed = (
        f"; saturated / keyed: {_spread(got.ratios('saturated', against='keyed'), 2)}" if "keyed" in got.modes else ""
    )
    console.print(
        f"  steady saturated / unlimited per round (judged): {', '.join(f'{r:.2f}' for r in ratios)}"
        f"; whole drains: {_spread(got.ratios('saturated'), 2)}{keyed}; server: {scope}",
        highlight=False,
    )
    console.print(judge(ratios).line(kind), highlight=False, style="bold")


async def measure(
    kind: str,
    url: str | None,
    modes: tuple[str, ...],
    tasks: int,
    keys: int,
    hot: int,
    rounds: int,
    min_seconds: float,
    console: Console,
) -> Verdict | None:
    """One store's rounds, printed; its verdict (None: the store could not be measured here)."""
    try:
        target = prepare(kind, url, uuid.uuid4().hex[:8])
        name = name_target(target, f"bench-limits-{target.namespace}")
        server = ServerCpu(kind, target.url, name)
        store = await open_store(target)
    except Unavailable as exc:
        console.print(f"{kind}: skipped ({exc})", highlight=False)
        return None
    try:
        counts = dict.fromkeys(modes, tasks)
        if min_seconds > 0:  # an untimed drain of each mode (a warm-up too) sets its task count
            for mode in modes:
                counts[mode] = scaled_tasks(
                    tasks, (await drain(store, mode, tasks, keys, hot, server)).rate, min_seconds
                )
            # The pair the bar compares drains the same count: a drain of three times the other's
            # length meets other load, and an untimed rate that a moment's load set apart.
            counts["unlimited"] = counts["saturated"] = max(counts["unlimited"], counts["saturated"])
        got = Rounds(modes)
        loads = [os.getloadavg()[0]]
        for index in range(rounds):
            pair = pair_order(index)
            for mode in (*pair, *(m for m in modes if m not in pair)):
                got.drains[mode].append(await drain(store, mode, counts[mode], keys, hot, server))
            loads.append(os.getloadavg()[0])
        scaling = f" or more (n: each drain >= {min_seconds:g} s)" if min_seconds > 0 else ""
        header = (
            f"{kind}: {tasks} tasks{scaling} over {keys} keys, a hot key of {hot}, concurrency {CONCURRENCY},"
            f" {rounds} rounds, load (1 min) {min(loads):.1f}-{max(loads):.1f}"
        )
        print_rounds(console, kind, got, counts, header, server.scope or "no server process apart")
        return judge(got.ratios("saturated", "steady"))
    finally:
        await store.close()
        await target.cleanup()


async def run(
    kinds: list[str],
    tasks: int,
    keys: int,
    hot: int,
    rounds: int,
    min_seconds: float = 0.0,
    urls: dict[str, str] | None = None,
    modes: tuple[str, ...] = MODES,
) -> dict[str, Verdict]:
    """Measure each store in turn; the verdicts, printed again together at the end."""
    console = Console(width=None if sys.stdout.isatty() else 160)  # a log's lines are not cut at 80
    verdicts: dict[str, Verdict] = {}
    for kind in kinds:
        verdict = await measure(kind, (urls or {}).get(kind), modes, tasks, keys, hot, rounds, min_seconds, console)
        if verdict is not None:
            verdicts[kind] = verdict
    if len(verdicts) > 1:
        console.print("")
        for kind, verdict in verdicts.items():
            console.print(verdict.line(kind), highlight=False)
    return verdicts


def parse_urls(values: list[str]) -> dict[str, str]:
    """`--url KIND=URL` (repeatable) as {kind: url}."""
    urls: dict[str, str] = {}
    for value in values:
        kind, sep, url = value.partition("=")
        if not sep or not url:
            raise argparse.ArgumentTypeError(f"--url takes KIND=URL, not {value!r}")
        urls[kind] = url
    return urls


def parse_modes(value: str) -> tuple[str, ...]:
    """`--modes` in the order of `MODES`; the two the bar compares are always there."""
    asked = {m.strip() for m in value.split(",") if m.strip()} | {"unlimited", "saturated"}
    unknown = asked - set(MODES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {', '.join(sorted(unknown))} (of {', '.join(MODES)})")
    return tuple(m for m in MODES if m in asked)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="memory,sqlite,redis,postgres,mysql,pgmq")
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="KIND=URL",
        help="a store's URL, e.g. postgres=postgresql://postgres@127.0.0.1:15432/test (repeatable; default: the"
        " local server)",
    )
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--hot", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--modes",
        type=parse_modes,
        default=MODES,
        help=f"which drains ({','.join(MODES)}; unlimited and saturated always): 'unlimited,saturated' judges the"
        " bar alone, in two fifths of the time",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=MIN_SECONDS,
        help="each timed drain lasts at least this long: an untimed unlimited drain first sets the task count"
        f" ({MIN_SECONDS:g}; 0: --tasks as given)",
    )
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile (process time) of the whole run to FILE")
    args = parser.parse_args()
    try:
        urls = parse_urls(args.url)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    work = run(
        args.backend.split(","), args.tasks, args.keys, args.hot, args.rounds, args.min_seconds, urls, args.modes
    )
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
        profiler.runcall(asyncio.run, work)
        profiler.dump_stats(args.profile)
    else:
        asyncio.run(work)


if __name__ == "__main__":
    main()
