"""The measurements for one backend, with the peers' definitions (peers-bench/harness.py).

- enqueue single: one awaited `push` at a time, no worker running -> tasks/s
- enqueue bulk: `push_bulk` in chunks of 1000 -> tasks/s (each drain's backlog; median)
- drain: a backlog drained by ONE worker at concurrency c; tasks/s from the first handler start to
  the last, both stamped by the handler; the worker's peak RSS and CPU per task, and the
  server's CPU per task where it can be told apart (bench.servercpu)
- latency: one worker (concurrency 10), proven up by one task; then one stream sent one push at a
  time at a fixed rate: rate/4 warm-up tasks then `lat_n` measured ones, each carrying the
  time.time() taken just before its push; latency = handler start - that stamp
- wake-up: same worker; 5 times: 2 s with nothing to do, then one task; its latency
- idle CPU: the worker's CPU time during those 2 s idle windows, in % of one core
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from apalis_cli.backend import Store, WorkerContext
from apalis_cli.service import Outcome

from .servercpu import ServerCpu, proc_cpu
from .stores import CODEC, Target
from .workerproc import Recorder, make_worker

__all__ = ["Settings", "measure_backend", "pct"]

WAKEUP_IDLE_S = 2.0
_ROOT = Path(__file__).resolve().parent.parent
_REPLY_LIMIT = 16 * 1024 * 1024  # one reply line: the latencies of a --lat-n 2000 stream pass 64 KiB
LOG_DIR = Path(os.environ.get("APALIS_BENCH_LOGS", "/tmp/apalis-bench/logs"))


@dataclass(slots=True)
class Settings:
    """How much to measure; the defaults keep a whole backend run under about a minute."""

    tasks: int = 20000
    single_max_s: float = 6.0
    bulk_max_s: float = 6.0
    concs: tuple[int, ...] = (1, 10, 50)
    drain_max_s: float = 10.0
    lat_n: int = 500
    lat_rate: float = 200.0
    lat_conc: int = 10
    wakeup_probes: int = 5
    bulk_chunk: int = 1000
    in_process: bool = False
    profile_dir: str | None = None
    store_loop: bool = False
    loop: str = "asyncio"
    handler: str = "async"  # or "thread" / "process": bench.probe:stamp with that isolation
    run_id: str = "run"
    interleaved: bool = False  # push, latency and wake-up left to bench.rounds (measured in rounds)
    notes: list[str] = field(default_factory=list)


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile, as peers-bench computes it."""
    if not xs:
        return math.nan
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


# ------------------------------------------------------------------------------------ workers
class WorkerHandle(Protocol):
    """A running worker under test, in its own process or in this one."""

    async def start(self) -> None: ...
    async def wait(self, n: int, within: float, stall: float = 10.0) -> dict[str, Any]: ...
    async def latencies(self) -> list[tuple[float, float]]: ...
    async def reset(self) -> None: ...
    def peak_rss_mb(self) -> float: ...
    def cpu_seconds(self) -> float: ...
    async def stop(self) -> None: ...


def _proc_status(pid: int | str, field_name: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    return math.nan


class ProcessWorker:
    """The worker in its own process (`python -m bench.workerproc`), driven over stdin/stdout;
    `settings` are Worker keyword arguments beyond the daemon's defaults (keep_alive, ...)."""

    def __init__(
        self,
        target: Target,
        queue: str,
        concurrency: int,
        profile: str | None = None,
        loop: str = "asyncio",
        handler: str = "async",
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.spec = {
            "settings": settings or {},
            "handler": handler,
            "kind": target.kind,
            "url": target.url,
            "options": target.options,
            "queue": queue,
            "concurrency": concurrency,
            "profile": profile,
            "loop": loop,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = LOG_DIR / f"worker-{target.kind}-{queue}.log"

    async def start(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per worker, before timing
        with open(self.log_path, "ab") as log:  # noqa: ASYNC230
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.workerproc",
                json.dumps(self.spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=_ROOT,
                limit=_REPLY_LIMIT,
            )
        reply = await self._read(60.0)
        if not reply.get("started"):
            raise RuntimeError(f"worker did not start: {reply}")

    async def _read(self, within: float) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        if not line:
            await self.proc.wait()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"worker exited rc={self.proc.returncode}: {' | '.join(tail)}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def _call(self, cmd: dict[str, Any], within: float) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._read(within)

    async def wait(self, n: int, within: float, stall: float = 10.0) -> dict[str, Any]:
        return await self._call({"cmd": "wait", "n": n, "within": within, "stall": stall}, within + 10)

    async def latencies(self) -> list[tuple[float, float]]:
        return [(e, d) for e, d in (await self._call({"cmd": "lat"}, 10))["lat"]]

    async def reset(self) -> None:
        await self._call({"cmd": "reset"}, 10)

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        return _proc_status(self.proc.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return proc_cpu(self.proc.pid)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            await self._call({"cmd": "stop"}, 15)
            await asyncio.wait_for(self.proc.wait(), 5)
        except (TimeoutError, RuntimeError, BrokenPipeError, ConnectionResetError):
            if self.proc.returncode is None:
                self.proc.kill()  # our own child, by its pid
                await self.proc.wait()


class InProcessWorker:
    """The worker on this process's event loop (the memory store lives in one process)."""

    def __init__(self, store: Store, queue: str, concurrency: int) -> None:
        self.recorder = Recorder()
        backend = store.backend(queue, codec=CODEC, max_attempts=1)
        # One listener, as in the worker process (and the daemon: console, logs, metrics), so the
        # per-task TaskFinished event is built in both modes.
        self.worker = make_worker(backend, self.recorder, concurrency, [lambda event: None])
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop_event))
        await asyncio.sleep(0)

    async def wait(self, n: int, within: float, stall: float = 10.0) -> dict[str, Any]:
        return await self.recorder.wait(n, within, stall)

    async def latencies(self) -> list[tuple[float, float]]:
        return list(self.recorder.lat)

    async def reset(self) -> None:
        self.recorder.reset()

    def peak_rss_mb(self) -> float:
        return _proc_status("self", "VmHWM")

    def cpu_seconds(self) -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)


# ------------------------------------------------------------------------------- measurements
def _payload(enq_ts: float) -> dict[str, float]:
    return {"enq_ts": enq_ts}


async def enqueue_single(queue: Any, n: int, max_s: float) -> dict[str, Any]:
    """`n` awaited pushes one at a time (stopping early after `max_s`)."""
    push = queue.push
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    deadline = t0 + max_s
    done = 0
    while done < n:
        await push(_payload(0.0))
        done += 1
        if done % 100 == 0 and time.perf_counter() > deadline:
            break
    secs = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    # this process's CPU per push (a memory store's worker, in-process, is idle meanwhile)
    return {"n": done, "secs": round(secs, 3), "rate": round(done / secs, 1), "cpu_us": round(cpu / done * 1e6, 1)}


async def enqueue_bulk(queue: Any, n: int, chunk: int, max_s: float) -> dict[str, Any]:
    """`n` tasks through `push_bulk`, `chunk` per call (stopping early after `max_s`)."""
    body = _payload(0.0)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        size = min(chunk, n - done)
        await queue.push_bulk([body] * size)
        done += size
        if time.perf_counter() - t0 > max_s:
            break
    secs = time.perf_counter() - t0
    return {"n": done, "secs": round(secs, 3), "rate": round(done / secs, 1)}


def _handle(store: Store, target: Target, queue: str, conc: int, s: Settings, tag: str) -> WorkerHandle:
    if s.in_process:
        if s.handler != "async":
            raise ValueError("--isolation needs the worker in its own process (not memory, not --in-process)")
        return InProcessWorker(store, queue, conc)
    profile = os.path.join(s.profile_dir, f"{target.kind}-{tag}.prof") if s.profile_dir else None
    return ProcessWorker(target, queue, conc, profile, s.loop, s.handler)


async def drain(store: Store, target: Target, conc: int, s: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bulk-enqueue a backlog into a fresh queue, then drain it with one worker at `conc`."""
    queue_name = target.queue(f"drain_c{conc}")
    queue: Any = store.backend(queue_name, codec=CODEC, max_attempts=1)  # a TaskSink too
    bulk = await enqueue_bulk(queue, s.tasks, s.bulk_chunk, s.bulk_max_s)
    n = bulk["n"]  # the backlog: fewer than --tasks when the bulk enqueue was cut
    worker = _handle(store, target, queue_name, conc, s, f"drain-c{conc}")
    server = ServerCpu(target.kind, target.url, target.application_name)
    await worker.start()
    try:
        await asyncio.to_thread(server.start)
        cpu0 = worker.cpu_seconds()
        res = await worker.wait(n, s.drain_max_s, stall=5.0)
        cpu1 = worker.cpu_seconds()
        served = await asyncio.to_thread(server.spent)
        extra = await worker.wait(n + 1, 0.3, stall=0.3) if res["count"] >= n else res
        rss = worker.peak_rss_mb()
    finally:
        await worker.stop()
    done = res["count"]
    span = res["last"] - res["first"] if done > 1 else math.nan
    rate = done / span if span and span > 0 else math.nan  # as peers-bench computes it
    out = {
        "conc": conc,
        "n": n,
        "done": done,
        "complete": done >= n,
        "duplicates": max(0, extra["count"] - n),
        "secs": round(span, 3),
        "rate": round(rate, 1),
        "rss_mb": round(rss, 1),
        "cpu_us_per_task": round((cpu1 - cpu0) / done * 1e6, 1) if done else None,
        # the server's, as bench.servercpu.scope_of(kind) says; None where it cannot be told apart
        "server_cpu_us_per_task": round(served / done * 1e6, 1) if done and served is not None else None,
    }
    return out, bulk


async def store_loop(store: Store, target: Target, s: Settings, k: int = 50) -> dict[str, Any]:
    """The store alone: a backlog drained through its `poll_compact` and `ack_batch` in this
    process, `k` per claim, with no Worker, layers or handler. Next to the c50 drain this splits
    the per-task cost between the store and the core (`--store-loop`; QueueBase stores only)."""
    queue: Any = store.backend(target.queue("loop"), codec=CODEC, max_attempts=1)
    if not hasattr(queue, "ack_batch"):
        return {"error": "the store has no ack_batch (not a QueueBase store)"}
    bulk = await enqueue_bulk(queue, s.tasks, s.bulk_chunk, s.bulk_max_s)
    n = bulk["n"]
    ctx = WorkerContext(id=f"{s.run_id}-loop", name="loop", queue=queue.queue, concurrency=k, free_slots=lambda: k)
    beats = queue.heartbeat(ctx)
    await anext(beats)
    stream = queue.poll_compact(ctx)
    done_outcome, decode = Outcome.done(None), CODEC.decode
    batch: list[tuple[Any, Outcome]] = []
    done, t0 = 0, time.perf_counter()
    deadline = t0 + s.drain_max_s
    try:
        while done < n and time.perf_counter() < deadline:
            task = await anext(stream)
            if task is not None:
                decode(task.args)
                batch.append((task, done_outcome))
                done += 1
            if batch and (task is None or len(batch) >= k):
                await queue.ack_batch(batch)
                batch = []
        if batch:
            await queue.ack_batch(batch)
    finally:
        await stream.aclose()
        await beats.aclose()
    secs = time.perf_counter() - t0
    return {"k": k, "n": n, "done": done, "rate": round(done / secs, 1)}


async def latency_and_wakeup(store: Store, target: Target, s: Settings) -> dict[str, Any]:
    """Paced stream at `lat_rate` to a running worker, then wake-up probes and idle CPU."""
    queue_name = target.queue("lat")
    queue: Any = store.backend(queue_name, codec=CODEC, max_attempts=1)  # a TaskSink too
    worker = _handle(store, target, queue_name, s.lat_conc, s, "lat")
    await worker.start()
    out: dict[str, Any] = {}
    try:
        await queue.push(_payload(time.time()))
        if (await worker.wait(1, 15))["count"] < 1:
            return {"error": "the worker never ran the warm-up task"}
        await worker.reset()
        warm = max(10, int(s.lat_rate / 4))
        total = warm + s.lat_n
        t0 = time.perf_counter()
        t_mark = math.inf
        for i in range(total):
            d = t0 + i / s.lat_rate - time.perf_counter()
            if d > 0:
                await asyncio.sleep(d)
            ts = time.time()
            if i == warm:
                t_mark = ts
            await queue.push(_payload(ts))
        send_s = time.perf_counter() - t0
        await worker.wait(total, 20, stall=10)
        lat = [d * 1000 for e, d in await worker.latencies() if e >= t_mark]
        out["latency"] = {
            "conc": s.lat_conc,
            "rate": s.lat_rate,
            "n": s.lat_n,
            "received": len(lat),
            "send_secs": round(send_s, 3),
            "p50_ms": round(pct(lat, 50), 3),
            "p90_ms": round(pct(lat, 90), 3),
            "p99_ms": round(pct(lat, 99), 3),
            "max_ms": round(max(lat), 3) if lat else None,
        }
        wake: list[float] = []
        idle_cpu: list[float] = []
        for _ in range(s.wakeup_probes):
            await worker.reset()
            c0, t_idle = worker.cpu_seconds(), time.perf_counter()
            await asyncio.sleep(WAKEUP_IDLE_S)
            idle_cpu.append((worker.cpu_seconds() - c0) / (time.perf_counter() - t_idle) * 100)
            await queue.push(_payload(time.time()))
            await worker.wait(1, 10, stall=10)
            got = await worker.latencies()
            if got:
                wake.append(got[0][1] * 1000)
        out["wakeup"] = {
            "idle_s": WAKEUP_IDLE_S,
            "n": s.wakeup_probes,
            "received": len(wake),
            "p50_ms": round(pct(wake, 50), 3),
            "max_ms": round(max(wake), 3) if wake else None,
            "values_ms": [round(x, 2) for x in wake],
        }
        # In-process, the driver's own (sleeping) loop is counted too: an upper bound.
        out["idle_cpu_pct"] = round(statistics.mean(idle_cpu), 2) if idle_cpu else None
    finally:
        await worker.stop()
    return out


async def measure_backend(store: Store, target: Target, s: Settings, log: Any) -> dict[str, Any]:
    """Every measurement for one opened store, in the order peers-bench runs them."""
    result: dict[str, Any] = {
        "kind": target.kind,
        "worker": "in-process (driver and worker share one process)" if s.in_process else "own process",
        "loop": "asyncio" if s.in_process else s.loop,
        "rss_method": "peak RSS (VmHWM) of the whole process, queue held in it"
        if s.in_process
        else "peak RSS (VmHWM) of the worker process",
        "server_cpu_scope": ServerCpu(target.kind, target.url, target.application_name).scope,
    }
    if not s.interleaved:
        log(f"{target.kind}: enqueue single")
        result["enqueue_single"] = await enqueue_single(
            store.backend(target.queue("single"), codec=CODEC, max_attempts=1), s.tasks, s.single_max_s
        )
    drains, bulks = [], []
    for conc in s.concs:
        log(f"{target.kind}: drain c{conc} ({s.tasks} tasks)")
        d, b = await drain(store, target, conc, s)
        drains.append(d)
        bulks.append(b)
    result["enqueue_bulk"] = {
        "n": [b["n"] for b in bulks],
        "chunk": s.bulk_chunk,
        "rate": round(statistics.median(b["rate"] for b in bulks), 1) if bulks else None,
        "runs": [b["rate"] for b in bulks],
    }
    result["drain"] = drains
    rates = [d["rate"] for d in drains if d["rate"] == d["rate"]]
    result["drain_best"] = max(rates) if rates else None
    result["rss_mb"] = max((d["rss_mb"] for d in drains), default=None)
    if s.store_loop:
        log(f"{target.kind}: store loop (poll_compact + ack_batch, no Worker)")
        result["store_loop"] = await store_loop(store, target, s)
    if not s.interleaved:
        log(f"{target.kind}: latency at {s.lat_rate:.0f}/s, wake-up, idle CPU")
        result.update(await latency_and_wakeup(store, target, s))
    return result
