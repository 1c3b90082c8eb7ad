"""Benchmark of the redis and rsmq stores beside a raw redis-py baseline, in the same run.

    .venv/bin/python bench/redis_rsmq.py [--kinds redis,rsmq] [--tasks 20000] [--url redis://...]

Drain (no-op handler, one worker process) at concurrency 1/10/50, bulk enqueue, and latency from
push to handler start on an idle worker; the raw baseline is bare redis-py: LPUSH 1000 values per call, then RPOP 100
per round trip (as in ../shared/peers-bench/bench_raw_redis.py).
Figures are printed as rates and as ratios to the baseline (absolute figures drift on shared
machines, ratios less so).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
import uuid
from typing import Any, cast

from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.worker import Worker


async def raw_baseline(url: str, n: int) -> tuple[float, float]:
    """(bulk LPUSH rate, drain rate) of bare redis-py: LPUSH 1000 values per call, then one
    consumer popping `RPOP q 100` and decoding each JSON value (the peers' raw ceiling)."""
    import json

    from redis.asyncio import Redis

    client = Redis.from_url(url)
    key = f"bench-raw-{uuid.uuid4().hex}"
    payload = b'{"n":1}'
    started = time.perf_counter()
    for _ in range(0, n, 1000):
        await client.lpush(key, *([payload] * 1000))
    enqueue_rate = n / (time.perf_counter() - started)
    started = time.perf_counter()
    got = 0
    while got < n:
        for item in await client.rpop(key, 100) or []:
            json.loads(cast(bytes, item))  # bytes: the client does not decode replies
            got += 1
    drain_rate = n / (time.perf_counter() - started)
    await client.delete(key)
    await client.aclose()
    return enqueue_rate, drain_rate


def make_store(kind: str, url: str) -> Any:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    spec = StoreSpec(name="bench", kind=kind, url=url, options={"namespace": namespace})
    if kind == "redis":
        from apalis_redis import RedisStore

        return RedisStore.from_spec(spec)
    from apalis_rsmq import RsmqStore

    # realtime: idle workers wake by pub/sub, as they would for a push from another process
    return RsmqStore.from_spec(dataclasses.replace(spec, options={**spec.options, "realtime": True}))


async def cleanup(url: str, namespace: str) -> None:
    from redis.asyncio import Redis

    admin = Redis.from_url(url)
    keys = [k async for k in admin.scan_iter(match=f"{namespace}:*", count=1000)]
    for i in range(0, len(keys), 1000):
        await admin.delete(*keys[i : i + 1000])
    await admin.aclose()


async def drain(kind: str, url: str, n: int, concurrency: int) -> tuple[float, float]:
    """(enqueue rate, drain rate) for `n` tasks at `concurrency`."""
    store = make_store(kind, url)
    await store.open()
    queue = store.backend("bench", codec=JsonCodec())
    started = time.perf_counter()
    for i in range(0, n, 10000):
        await queue.push_bulk([{"n": j} for j in range(i, min(i + 10000, n))])
    enqueue_rate = n / (time.perf_counter() - started)
    count = 0
    first = 0.0
    finished = asyncio.Event()

    async def handler(args: Any, task: Any) -> None:
        nonlocal count, first
        count += 1
        if count == 1:
            first = time.perf_counter()
        if count >= n:
            finished.set()

    worker = Worker(name="bench", backend=queue, handler=handler, concurrency=concurrency, keep_alive=5.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await finished.wait()
    elapsed = time.perf_counter() - first  # first start to last start, as the peers count
    stop.set()
    await running
    await store.close()
    await cleanup(url, store.config.namespace)
    return enqueue_rate, n / elapsed


async def latency(kind: str, url: str, rounds: int) -> tuple[float, float, float]:
    """p50 and p99 (ms) from push to handler start, one push every 20 ms; then the median
    wake-up (ms) of a push after 2 s of idleness (3 probes)."""
    store = make_store(kind, url)
    await store.open()
    queue = store.backend("bench", codec=JsonCodec())
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def handler(args: Any, task: Any) -> None:
        arrived.put_nowait(time.perf_counter())

    worker = Worker(name="bench", backend=queue, handler=handler, concurrency=1, keep_alive=5.0)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.3)
    samples = []
    for _ in range(rounds):
        await asyncio.sleep(0.02)  # let the worker go idle
        sent = time.perf_counter()
        await queue.push({"t": 1})
        samples.append((await arrived.get() - sent) * 1000)
    wakes = []
    for _ in range(3):
        await asyncio.sleep(2.0)
        sent = time.perf_counter()
        await queue.push({"t": 2})
        wakes.append((await arrived.get() - sent) * 1000)
    stop.set()
    await running
    await store.close()
    await cleanup(url, store.config.namespace)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1], statistics.median(wakes)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="redis,rsmq")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()
    raw_enqueue, raw = await raw_baseline(options.url, options.tasks * 5)
    print(f"raw redis-py: bulk LPUSH x1000 {raw_enqueue:,.0f}/s, drain RPOP x100 {raw:,.0f}/s")
    for kind in options.kinds.split(","):
        for concurrency in (1, 10, 50):
            enqueue_rate, rate = await drain(kind, options.url, options.tasks, concurrency)
            print(
                f"{kind:5} drain c={concurrency:<3} {rate:>9,.0f}/s  ({rate / raw:.3f} of raw)"
                f"   bulk enqueue {enqueue_rate:>9,.0f}/s ({enqueue_rate / raw_enqueue:.3f} of raw)"
            )
        p50, p99, wake = await latency(kind, options.url, 200)
        print(f"{kind:5} latency push->start p50 {p50:.2f} ms  p99 {p99:.2f} ms; after 2 s idle {wake:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
