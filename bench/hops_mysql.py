"""`python -m bench.hops_mysql`: a lone task's hops on MySQL/MariaDB (the hand-over's path).

One worker process (concurrency `--conc`) and a stream of `--tasks` pushes at `--rate` from this
process, as `bench.hops` does on Redis. Stamps, by the wall clock of both processes:

- the pusher: before each push; when the hand-over's script answered which listener to wake
  (`Database.wake_listener` called); when that KILL QUERY was answered; when the push returned;
- the worker: when its listener's sleep ended (`Listener._sleep`), the start and end of its read
  of the tasks handed to it (`handed`), and the handler's start;
- the run-queue wait (`/proc/thread-self/schedstat`) of the worker at each of its stamps and of
  the pusher around each push (not the server's: MariaDB serves each connection on a thread of
  its own; its CPU over the stream is printed instead, other clients' included);
- each push's path: handed over, passed by a listing another transaction held, no worker listed
  with a free slot, or a plain insert within `NONE_IDLE_FOR` of the last; and the latency of the
  tasks handed over, of those whose KILL woke no sleeping listener, and of those not handed.

    python -m bench.hops_mysql --url mysql://root@127.0.0.1:3306/test --tasks 1000 --rate 200

Each run uses its own table prefix and drops its tables at the end.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import time
from typing import Any
from urllib.parse import urlsplit

from .hops import _run_queue_wait, arguments, print_figures, serve, with_worker
from .servercpu import listening_pid, proc_cpu

__all__ = ["main"]


def _store(url: str, prefix: str) -> Any:
    from apalis_cli.backend import StoreSpec
    from apalis_mysql.store import MysqlStore

    return MysqlStore.from_spec(StoreSpec(name="hops", kind="mysql", url=url, options={"table_prefix": prefix}))


def _worker(spec: dict[str, Any]) -> None:
    """The worker process: stamps written to `spec["out"]` when stdin says stop."""
    from apalis_cli import loops
    from apalis_mysql import connection, listener

    waits = open("/proc/thread-self/schedstat", "rb", buffering=0)  # noqa: SIM115 - read at every stamp
    woken: list[tuple[float, float]] = []
    reads: list[tuple[float, float, int]] = []
    starts: dict[float, tuple[float, float]] = {}
    sleep = listener.Listener._sleep
    fetch = connection.Database.fetch

    async def stamped_sleep(self: Any, cursor: Any) -> bool:
        woke = await sleep(self, cursor)
        woken.append((time.time(), _run_queue_wait(waits)))
        return woke

    async def stamped_fetch(self: Any, name: str, params: Any) -> list[Any]:
        if name != "handed":
            return await fetch(self, name, params)
        at = time.time()
        rows = await fetch(self, name, params)
        reads.append((at, time.time(), len(rows)))
        return rows

    listener.Listener._sleep = stamped_sleep  # type: ignore[method-assign]
    connection.Database.fetch = stamped_fetch  # type: ignore[method-assign]

    loops.run(serve(_store(spec["url"], spec["prefix"]), spec["conc"], starts, waits, settle=1.0))
    with open(spec["out"], "w") as out:
        json.dump({"woken": woken, "reads": reads, "starts": list(starts.items())}, out)


async def _push(
    url: str, prefix: str, tasks: int, rate: float, pids: tuple[int, int, int | None]
) -> tuple[list[tuple[Any, ...]], list[float]]:
    """The paced stream: per push (before, KILL sent, KILL answered, returned, pusher's wait),
    the KILL's stamps None when the push woke no listener; and the CPU seconds
    the pusher, the worker and the server process spent over the stream."""
    from apalis_cli.codec import JsonCodec
    from apalis_mysql import connection, handing

    store = _store(url, prefix)
    await store.open()
    kills: list[tuple[float, float | None]] = []
    wake = connection.Database.wake_listener

    async def stamped_wake(self: Any, listener: int) -> None:
        stamp: list[Any] = [time.time(), None]
        kills.append(stamp)  # type: ignore[arg-type]
        try:
            await wake(self, listener)
        finally:
            stamp[1] = time.time()

    connection.Database.wake_listener = stamped_wake  # type: ignore[method-assign]
    hand = handing.hand_push
    paths: list[str] = []

    async def noted_hand(*args: Any) -> Any:
        handed = await hand(*args)
        paths.append("handed" if handed.worker else "held listing" if handed.listed else "none listed")
        return handed

    connection.hand_push = noted_hand  # type: ignore[attr-defined,assignment]  # what _hand calls
    mine = open("/proc/thread-self/schedstat", "rb", buffering=0)  # noqa: SIM115, ASYNC230 - before timing
    pushes: list[tuple[Any, ...]] = []
    try:
        queue = store.backend("hops", codec=JsonCodec(), max_attempts=1)
        for _ in range(20):  # the worker's first claims and listings
            await queue.push({"enq_ts": 0.0})
            await asyncio.sleep(0.005)
        cpu = [proc_cpu(p) if p else 0.0 for p in pids]
        paths.clear()
        t0 = time.perf_counter()
        for i in range(tasks):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            own = _run_queue_wait(mine)
            kills.clear()
            stamp = time.time()
            await queue.push({"enq_ts": stamp})
            returned = time.time()
            kill = kills[0] if kills else [None, None]
            pushes.append((stamp, kill[0], kill[1], returned, _run_queue_wait(mine) - own))
        await asyncio.sleep(0.1)
        cpu = [(proc_cpu(p) if p else 0.0) - c for p, c in zip(pids, cpu, strict=True)]
        counts = {path: paths.count(path) for path in ("handed", "held listing", "none listed")}
        print("pushes:", ", ".join(f"{path} {n}" for path, n in counts.items()), end=", ")
        print(f"plain within NONE_IDLE_FOR {tasks - len(paths)}")
        await asyncio.sleep(0.9)
    finally:
        await store.close()
    return pushes, cpu


async def _drop(url: str, prefix: str) -> None:
    import asyncmy

    parts = urlsplit(url)
    conn = await asyncmy.connect(
        host=parts.hostname, port=parts.port or 3306, user=parts.username or "root", database=parts.path.lstrip("/")
    )
    try:
        cursor = conn.cursor()
        await cursor.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE %s",
            (prefix.replace("_", "\\_") + "%",),
        )
        for (name,) in await cursor.fetchall():
            await cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
    finally:
        conn.close()


def _report(pushes: list[tuple[Any, ...]], worker: dict[str, Any]) -> None:
    starts = {k: tuple(v) for k, v in worker["starts"]}
    woken = sorted(tuple(w) for w in worker["woken"])
    woken_times = [w[0] for w in woken]
    reads = sorted(tuple(r) for r in worker["reads"] if r[2])
    read_ends = [r[1] for r in reads]
    stamps = sorted([*woken, *starts.values()])
    stamp_times = [s[0] for s in stamps]
    ms = 1e3
    rows: list[tuple[Any, ...]] = []
    for stamp, kill_at, kill_done, returned, pusher_wait in pushes:
        start = starts.get(stamp)
        if start is None:
            continue
        j = bisect.bisect_left(stamp_times, stamp) - 1
        worker_wait = start[1] - stamps[j][1] if j >= 0 else 0.0
        i = bisect.bisect_right(read_ends, start[0]) - 1
        read = reads[i] if i >= 0 and reads[i][0] >= stamp else None
        k = bisect.bisect_left(woken_times, stamp)
        woke = woken_times[k] if k < len(woken_times) and woken_times[k] <= start[0] else None
        rows.append((stamp, kill_at, kill_done, returned, woke, read, start[0], worker_wait, pusher_wait))
    handed = [r for r in rows if r[1] is not None and r[4] is not None and r[5] is not None]
    print(f"tasks {len(rows)} of {len(pushes)} started, {len(handed)} handed over and woken by the push")
    killed = sum(r[1] is not None for r in rows)
    print(f"  (a KILL sent for {killed}; of those, no wake-up stamped for {killed - len(handed)})")
    figures = {
        "latency": [(r[6] - r[0]) * ms for r in rows],
        "latency (handed)": [(r[6] - r[0]) * ms for r in handed],
        "latency (KILL, no wake)": [(r[6] - r[0]) * ms for r in rows if r[1] is not None and r not in handed],
        "latency (not handed)": [(r[6] - r[0]) * ms for r in rows if r[1] is None],
        "less worker's wait": [(r[6] - r[0]) * ms - r[7] for r in rows],
        "push -> KILL sent": [(r[1] - r[0]) * ms for r in handed],
        "KILL sent -> answered": [(r[2] - r[1]) * ms for r in handed if r[2] is not None],
        "push returned": [(r[3] - r[0]) * ms for r in handed],
        "KILL sent -> woken": [(r[4] - r[1]) * ms for r in handed],
        "woken -> read sent": [(r[5][0] - r[4]) * ms for r in handed],
        "read sent -> rows": [(r[5][1] - r[5][0]) * ms for r in handed],
        "rows -> handler": [(r[6] - r[5][1]) * ms for r in handed],
        "wait: worker": [r[7] for r in rows],
        "wait: pusher": [r[8] for r in rows],
    }
    print_figures(figures, 26)
    print("slowest 1%: latency | KILL sent, answered, returned, woken, read sent, rows | waits: worker, pusher")
    for r in sorted(rows, key=lambda r: r[6] - r[0])[-max(1, len(rows) // 100) :]:
        hops = [r[1], r[2], r[3], r[4], r[5][0] if r[5] else None, r[5][1] if r[5] else None]
        cells = " ".join("    - " if h is None else f"{(h - r[0]) * ms:6.2f}" for h in hops)
        print(f"  {(r[6] - r[0]) * ms:7.2f} | {cells} | {r[7]:6.2f} {r[8]:6.2f}")


def main() -> None:
    args = arguments("bench.hops_mysql", __doc__, "mysql://root@127.0.0.1:3306/test", 1000, _worker)
    if args is None:
        return
    from apalis_cli import loops

    prefix = f"hops{os.getpid()}_"
    out = f"/tmp/apalis-bench-hops-{os.getpid()}.json"
    spec = {"url": args.url, "prefix": prefix, "conc": args.conc, "out": out}
    pid = listening_pid(urlsplit(args.url).port or 3306)
    if pid is None:
        print("no process found listening on the URL's port: the server's CPU is not counted")

    def push(worker: int) -> tuple[list[tuple[Any, ...]], list[float]]:
        return loops.run(_push(args.url, prefix, args.tasks, args.rate, (os.getpid(), worker, pid)))

    try:
        (pushes, cpu), recorded = with_worker("bench.hops_mysql", spec, push)
    finally:
        loops.run(_drop(args.url, prefix))
    per = 1e6 / max(len(pushes), 1)
    print(f"load {os.getloadavg()[0]:.2f}; CPU us a task over the stream:", end=" ")
    print(f"pusher {cpu[0] * per:.0f}, worker {cpu[1] * per:.0f}, server {cpu[2] * per:.0f} (other clients' too)")
    _report(pushes, recorded)


if __name__ == "__main__":
    main()
