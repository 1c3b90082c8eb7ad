"""Benchmark of the redis and rsmq stores beside a raw redis-py baseline, in the same run.

    .venv/bin/python bench/redis_rsmq.py [--kinds redis,rsmq] [--tasks 20000] [--url redis://...]

Drain (no-op handler, one worker process) at concurrency 1/10/50, bulk enqueue, and latency from
push to handler start on an idle worker; the raw baseline is LPUSH then RPOP 100 per round trip.
Figures are printed as rates and as ratios to the baseline (absolute figures drift on shared
machines, ratios less so).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.worker import Worker


async def raw_baseline(url: str, n: int) -> float:
    """Tasks per second through bare LPUSH / RPOP, 100 per round trip."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    key = f"bench-raw-{uuid.uuid4().hex}"
    payload = b'{"n":1}'
    started = time.perf_counter()
    for _ in range(0, n, 100):
        await client.lpush(key, *([payload] * 100))
    got = 0
    while got < n:
        got += len(await client.rpop(key, 100) or [])
    elapsed = time.perf_counter() - started
    await client.delete(key)
    await client.aclose()
    return n / elapsed


def make_store(kind: str, url: str) -> Any:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    spec = StoreSpec(name="bench", kind=kind, url=url, options={"namespace": namespace})
    if kind == "redis":
        from apalis_redis import RedisStore

        return RedisStore.from_spec(spec)
    from apalis_rsmq import RsmqStore

    return RsmqStore.from_spec(spec)


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
    finished = asyncio.Event()

    async def handler(args: Any, task: Any) -> None:
        nonlocal count
        count += 1
        if count >= n:
            finished.set()

    worker = Worker(name="bench", backend=queue, handler=handler, concurrency=concurrency, keep_alive=5.0)
    stop = asyncio.Event()
    started = time.perf_counter()
    running = asyncio.create_task(worker.run(stop))
    await finished.wait()
    elapsed = time.perf_counter() - started
    stop.set()
    await running
    await store.close()
    await cleanup(url, store.settings.namespace)
    return enqueue_rate, n / elapsed


async def latency(kind: str, url: str, rounds: int) -> tuple[float, float]:
    """p50 and p99 (ms) from push to handler start, on an idle worker."""
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
    stop.set()
    await running
    await store.close()
    await cleanup(url, store.settings.namespace)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kinds", default="redis,rsmq")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()
    raw = await raw_baseline(options.url, options.tasks * 5)
    print(f"raw redis-py LPUSH/RPOP x100: {raw:,.0f}/s")
    for kind in options.kinds.split(","):
        for concurrency in (1, 10, 50):
            enqueue_rate, rate = await drain(kind, options.url, options.tasks, concurrency)
            print(
                f"{kind:5} drain c={concurrency:<3} {rate:>9,.0f}/s  ({rate / raw:.3f} of raw)"
                f"   bulk enqueue {enqueue_rate:>9,.0f}/s ({enqueue_rate / raw:.3f} of raw)"
            )
        p50, p99 = await latency(kind, options.url, 200)
        print(f"{kind:5} latency push->start p50 {p50:.2f} ms  p99 {p99:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
