"""`python -m bench.hops`: a lone task's hops on Redis, and how much of each task's latency the
three processes on its path spent waiting for a core.

One worker process (concurrency `--conc`, uvloop) and a stream of `--tasks` pushes at `--rate`
from this process. Stamps, by the wall clock of both processes (one machine):

- the pusher: before each push and when it returned;
- the worker: where its pub/sub connection's bytes arrive (`wakeups.Hearing.data_received`),
  where a handed task is given to the worker's poll stream (`RedisQueue._handed`), and the
  handler's start;
- the run-queue wait (`/proc/thread-self/schedstat`, the time a runnable thread waited for a
  core) of the worker at each of its stamps, and of the pusher and of the server process (the
  one listening on the URL's port) around each push.

Per task, the latency less the worker's run-queue wait (from its last stamp before the push to
the handler's start) and the server's (over the push) is about what the path itself costs: if
that stays small while the latency's tail grows with the machine's load, the tail is the
scheduler's. It is rough both ways: the two waits may overlap, and the worker may have waited
for a core on other work (the last task's acknowledgement) before the push. The pusher's wait
is printed apart (most of it falls after its write, off the task's path).

    python -m bench.hops --url redis://127.0.0.1:6379/0 --tasks 2000 --rate 200

Each run uses a fresh namespace and deletes its keys at the end. Wall-clock figures of a loaded
machine move run to run: compare old and new trees in interleaved runs.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .servercpu import listening_pid

__all__ = ["arguments", "main", "print_figures", "serve", "with_worker"]

T = TypeVar("T")


def _run_queue_wait(schedstat: Any) -> float:
    """Milliseconds this thread (or process) has waited on a run queue so far."""
    schedstat.seek(0)
    return int(schedstat.read().split()[1]) / 1e6


def _store(url: str, namespace: str) -> Any:
    from apalis_cli.backend import StoreSpec
    from apalis_redis.store import RedisStore

    return RedisStore.from_spec(StoreSpec(name="hops", kind="redis", url=url, options={"namespace": namespace}))


async def serve(store: Any, conc: int, starts: dict[float, tuple[float, float]], waits: Any, settle: float) -> None:
    """A worker process's run: `store` opened, one `Worker` of queue `hops` at concurrency `conc`
    whose handler stamps each task's start (and the run-queue wait so far, read from `waits`)
    into `starts` by its `enq_ts`; "ready" printed after `settle` seconds, stopped by a line on
    stdin."""
    from apalis_cli.codec import JsonCodec
    from apalis_cli.worker import Worker

    await store.open()

    async def handler(args: Any, task: Any) -> None:
        starts[args["enq_ts"]] = (time.time(), _run_queue_wait(waits))

    backend = store.backend("hops", codec=JsonCodec(), max_attempts=1)
    worker = Worker(name="hops", backend=backend, handler=handler, concurrency=conc)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(settle)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await running
    await store.close()


def print_figures(figures: dict[str, list[float]], width: int) -> None:
    """p50, p90, p99 and max of each list of milliseconds, one line a name."""
    print(f"{'ms':{width}} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for name, values in figures.items():
        if values:
            cells = " ".join(f"{_pct(values, p):7.3f}" for p in (50, 90, 99)) + f" {max(values):7.3f}"
            print(f"{name:{width}} {cells}")


def with_worker(module: str, spec: dict[str, Any], push: Callable[[int], T]) -> tuple[T, dict[str, Any]]:
    """Start `python -m module --worker SPEC` (its stamps go to `spec["out"]`), run `push(its
    pid)` once it is ready, stop it; what `push` returned and the stamps it wrote."""
    worker = subprocess.Popen(
        [sys.executable, "-m", module, "--worker", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdin is not None
        if worker.stdout.readline().strip() != "ready":
            raise SystemExit("the worker did not start")
        pushed = push(worker.pid)
        worker.stdin.write("\n")
        worker.stdin.flush()
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
    with open(spec["out"]) as stamps:
        recorded: dict[str, Any] = json.load(stamps)
    os.unlink(spec["out"])
    return pushed, recorded


def _worker(spec: dict[str, Any]) -> None:
    """The worker process: stamps written to `spec["out"]` when stdin says stop."""
    from apalis_cli import loops
    from apalis_redis import queue as queue_module
    from apalis_redis import wakeups

    waits = open("/proc/thread-self/schedstat", "rb", buffering=0)  # noqa: SIM115 - read at every stamp
    reads: list[tuple[float, float]] = []
    given: dict[float, float] = {}
    starts: dict[float, tuple[float, float]] = {}
    heard = wakeups.Hearing.data_received
    handed = queue_module.RedisQueue._handed

    def data_received(self: Any, data: bytes) -> None:
        reads.append((time.time(), _run_queue_wait(waits)))
        heard(self, data)

    def handed_over(self: Any, message: list[Any]) -> None:
        given[json.loads(message[2])["enq_ts"]] = time.time()  # [worker, id, payload, ...]
        handed(self, message)

    wakeups.Hearing.data_received = data_received  # type: ignore[method-assign]
    queue_module.RedisQueue._handed = handed_over  # type: ignore[method-assign]

    loops.run(serve(_store(spec["url"], spec["namespace"]), spec["conc"], starts, waits, settle=0.5))
    with open(spec["out"], "w") as out:
        json.dump({"reads": reads, "given": list(given.items()), "starts": list(starts.items())}, out)


async def _push(url: str, namespace: str, tasks: int, rate: float, server: Any) -> list[tuple[float, ...]]:
    """The paced stream: per push (stamp before, stamp after, pusher's wait, server's wait)."""
    from apalis_cli.codec import JsonCodec

    store = _store(url, namespace)
    await store.open()
    mine = open("/proc/thread-self/schedstat", "rb", buffering=0)  # noqa: SIM115, ASYNC230 - before timing
    pushes: list[tuple[float, ...]] = []
    try:
        queue = store.backend("hops", codec=JsonCodec(), max_attempts=1)
        for _ in range(20):  # the worker's first claims and listings
            await queue.push({"enq_ts": 0.0})
            await asyncio.sleep(0.005)
        t0 = time.perf_counter()
        for i in range(tasks):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            own, served = _run_queue_wait(mine), _run_queue_wait(server) if server else 0.0
            stamp = time.time()
            await queue.push({"enq_ts": stamp})
            returned = time.time()
            pushes.append(
                (stamp, returned, _run_queue_wait(mine) - own, (_run_queue_wait(server) - served) if server else 0.0)
            )
        await asyncio.sleep(1.0)
        keys = [key async for key in store.client.scan_iter(f"{namespace}:*", count=1000)]
        if keys:
            await store.client.delete(*keys)
    finally:
        await store.close()
    return pushes


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else float("nan")


def _report(pushes: list[tuple[float, ...]], worker: dict[str, Any]) -> None:
    given = dict(worker["given"])
    starts = {k: tuple(v) for k, v in worker["starts"]}
    reads = sorted(tuple(r) for r in worker["reads"])
    read_times = [r[0] for r in reads]
    stamps = sorted([*reads, *starts.values()])  # the worker's stamps with its run-queue wait, in time order
    stamp_times = [s[0] for s in stamps]
    rows: list[tuple[float, float, float | None, float | None, float, float, float, float]] = []
    for stamp, returned, pusher_wait, server_wait in pushes:
        start = starts.get(stamp)
        if start is None:
            continue
        at = given.get(stamp)
        read = None
        if at is not None:
            i = bisect.bisect_right(read_times, at) - 1
            read = read_times[i] if i >= 0 else None
        j = bisect.bisect_left(stamp_times, stamp) - 1
        worker_wait = start[1] - stamps[j][1] if j >= 0 else 0.0
        rows.append((stamp, returned, read, at, start[0], worker_wait, pusher_wait, server_wait))
    ms = 1e3
    lat = [(r[4] - r[0]) * ms for r in rows]
    own = [(r[4] - r[0]) * ms - r[5] - r[7] for r in rows]
    # (pushed, returned, read, given, started) of the tasks handed over, read and given known
    handed = [(r[0], r[1], r[2], r[3], r[4]) for r in rows if r[2] is not None and r[3] is not None]
    print(f"tasks {len(rows)} of {len(pushes)} started, {len(handed)} handed over (the rest woke the worker)")
    figures = {
        "latency": lat,
        "less worker+server waits": own,
        "push returned": [(r[1] - r[0]) * ms for r in handed],
        "push -> worker read": [(r[2] - r[0]) * ms for r in handed],
        "read -> given": [(r[3] - r[2]) * ms for r in handed],
        "given -> handler": [(r[4] - r[3]) * ms for r in handed],
        "wait: worker": [r[5] for r in rows],
        "wait: pusher": [r[6] for r in rows],
        "wait: server": [r[7] for r in rows],
    }
    print_figures(figures, 22)
    print("slowest 1%: latency | push returned, read, given, handler | waits: worker, pusher, server (ms)")
    for r in sorted(rows, key=lambda r: r[4] - r[0])[-max(1, len(rows) // 100) :]:
        hops = [r[1], r[2], r[3], r[4]]
        cells = " ".join("    - " if h is None else f"{(h - r[0]) * ms:6.2f}" for h in hops)
        print(f"  {(r[4] - r[0]) * ms:7.2f} | {cells} | {r[5]:6.2f} {r[6]:6.2f} {r[7]:6.2f}")


def arguments(module: str, doc: str, url: str, tasks: int, worker: Callable[[dict[str, Any]], None]) -> Any:
    """The options of `python -m module`; None when it ran as the worker process (`worker`)."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    ap.add_argument("--url", default=url)
    ap.add_argument("--tasks", type=int, default=tasks)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--conc", type=int, default=10)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return None
    return args


def main() -> None:
    args = arguments("bench.hops", __doc__, "redis://127.0.0.1:6379/0", 2000, _worker)
    if args is None:
        return
    from apalis_cli import loops

    namespace = f"hops_{os.getpid()}"
    out = f"/tmp/apalis-bench-hops-{os.getpid()}.json"
    spec = {"url": args.url, "namespace": namespace, "conc": args.conc, "out": out}
    port = urlsplit(args.url).port or 6379
    pid = listening_pid(port)
    server = open(f"/proc/{pid}/schedstat", "rb", buffering=0) if pid else None  # noqa: SIM115
    if server is None:
        print(f"no process found listening on port {port}: the server's waits are not counted")
    pushes, recorded = with_worker(
        "bench.hops", spec, lambda _: loops.run(_push(args.url, namespace, args.tasks, args.rate, server))
    )
    _report(pushes, recorded)


if __name__ == "__main__":
    main()
