"""Raw-driver ceilings measured in the same run (`--baseline`), for the ratios.

Each one is a loop in this process with the plain driver, no queue library: what a Python queue
on that store could reach at best on this machine right now. None of them keeps attempts,
results, leases or heartbeats, so they bound rather than compete.

- raw sqlite3: claim 100 with `UPDATE … RETURNING` (status, lock, attempts), decode each payload,
  then one ack `UPDATE … SET status='done'` for the 100; WAL, synchronous=NORMAL, autocommit.
- raw psycopg: peers-bench's raw-pg `k100`: `DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP
  LOCKED LIMIT 100) RETURNING payload` (delete on claim, no ack), one autocommit connection.
- raw redis-py: peers-bench's raw-redis `k100`: asyncio redis-py, `RPOP q 100` then json.loads.
- raw aio-pika: a durable queue, prefetch 100, one `ack(multiple=True)` per 100 messages (the
  batched ceiling of an AMQP consumer in Python; no confirms, no republish).
- raw nats-py: a JetStream WorkQueue stream, a durable pull consumer, `fetch(100)` then one ack
  per message (JetStream has no multiple-ack on WorkQueue streams).

Drain rate = tasks / (time of the last decoded task - time of the first), like the drains.
For psycopg and redis-py, the drain's CPU per task too: this process's (`cpu_us_per_task`, the
client's) and the server's (`server_cpu_us_per_task`, as bench.servercpu: PostgreSQL the backend
of the baseline's own connection, Redis the whole server process), to set beside ours.
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import tempfile
import time
from typing import Any

from .servercpu import ServerCpu

__all__ = ["BASELINES", "raw_psycopg", "raw_redis", "raw_sqlite"]


def _rate(n: int, first: float, last: float) -> float:
    return round(n / (last - first), 1) if last > first else float("nan")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Cpu:
    """This process's and the server's CPU over one drain, per task in microseconds."""

    def __init__(self, server: ServerCpu) -> None:
        self.server = server
        self.t0 = 0.0

    def start(self) -> None:
        self.server.start()
        self.t0 = _cpu()

    def stop(self, done: int) -> dict[str, Any]:
        client = _cpu() - self.t0
        return {
            "cpu_us_per_task": round(client / done * 1e6, 1) if done else None,
            "server_cpu_us_per_task": self.server.per_task_us(done),
            "server_cpu_scope": self.server.scope,
        }


def raw_sqlite(n: int = 20000, k: int = 100) -> dict[str, Any]:
    """sqlite3: claim `k` with UPDATE … RETURNING, ack them with one UPDATE, until drained."""
    with tempfile.TemporaryDirectory(prefix="apalis-bench-raw-") as tmp:
        db = sqlite3.connect(os.path.join(tmp, "raw.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE q (id INTEGER PRIMARY KEY, payload BLOB NOT NULL, status TEXT NOT NULL,"
            " run_at REAL NOT NULL, priority INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
            " lock_by TEXT, lock_at REAL)"
        )
        db.execute("CREATE INDEX q_ready ON q (status, priority DESC, run_at)")
        body = json.dumps({"enq_ts": 0.0}).encode()
        now = time.time()
        t0 = time.perf_counter()
        db.execute("BEGIN")
        db.executemany("INSERT INTO q (payload, status, run_at) VALUES (?, 'pending', ?)", [(body, now)] * n)
        db.execute("COMMIT")
        bulk = n / (time.perf_counter() - t0)
        claim = (
            "UPDATE q SET status='running', lock_by=?, lock_at=?, attempts=attempts+1 WHERE id IN"
            " (SELECT id FROM q WHERE status='pending' AND run_at<=? ORDER BY priority DESC, run_at LIMIT ?)"
            " RETURNING id, payload"
        )
        loads = json.loads
        done, first, last = 0, 0.0, 0.0
        while True:
            t = time.time()
            rows = db.execute(claim, ("raw", t, t, k)).fetchall()
            if not rows:
                break
            for _, payload in rows:
                loads(payload)
                done += 1
                last = time.time()
                if done == 1:
                    first = last
            marks = ",".join("?" * len(rows))
            db.execute(f"UPDATE q SET status='done', lock_by=NULL WHERE id IN ({marks})", [r[0] for r in rows])
        db.close()
    return {
        "name": "raw sqlite3",
        "store": "sqlite",
        "k": k,
        "n": done,
        "rate": _rate(done, first, last),
        "enqueue_bulk_rate": round(bulk, 1),
    }


def raw_psycopg(url: str, n: int = 20000, k: int = 100) -> dict[str, Any]:
    """psycopg 3: peers-bench's raw-pg consumer (SKIP LOCKED delete of `k`), in a scratch schema."""
    import psycopg
    from psycopg.types.json import Jsonb

    schema = f"apalis_bench_raw_{os.getpid()}"
    cpu = _Cpu(ServerCpu("postgres", url, schema))
    with psycopg.connect(url, autocommit=True, prepare_threshold=0, connect_timeout=3, application_name=schema) as c:
        c.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        c.execute(f"SET search_path = {schema}")
        try:
            c.execute("CREATE TABLE q (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
            body = Jsonb({"enq_ts": 0.0})
            t0 = time.perf_counter()
            for i in range(0, n, 1000):
                c.execute("INSERT INTO q (payload) SELECT unnest(%s::jsonb[])", ([body] * min(1000, n - i),))
            bulk = n / (time.perf_counter() - t0)
            pop = (
                "DELETE FROM q WHERE id IN (SELECT id FROM q ORDER BY id FOR UPDATE SKIP LOCKED LIMIT %s)"
                " RETURNING payload"
            )
            done, first, last = 0, 0.0, 0.0
            cpu.start()
            while True:
                rows = c.execute(pop, (k,)).fetchall()
                if not rows:
                    break
                for (p,) in rows:
                    _ = p["enq_ts"]
                    done += 1
                    last = time.time()
                    if done == 1:
                        first = last
            cpus = cpu.stop(done)
        finally:
            c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return {
        "name": "raw psycopg SKIP LOCKED",
        "store": "postgres",
        "k": k,
        "n": done,
        "rate": _rate(done, first, last),
        "enqueue_bulk_rate": round(bulk, 1),
        **cpus,
    }


async def raw_redis(url: str, n: int = 50000, k: int = 100) -> dict[str, Any]:
    """asyncio redis-py: peers-bench's raw-redis consumer (`RPOP q k`), on a scratch key."""
    from redis.asyncio import Redis

    r = Redis.from_url(url)
    key = f"apalis_bench_raw_{os.getpid()}"
    try:
        await r.delete(key)
        body = json.dumps({"enq_ts": 0.0})
        t0 = time.perf_counter()
        for i in range(0, n, 1000):
            await r.lpush(key, *([body] * min(1000, n - i)))
        bulk = n / (time.perf_counter() - t0)
        loads = json.loads
        done, first, last = 0, 0.0, 0.0
        cpu = _Cpu(ServerCpu("redis", url))
        cpu.start()
        while True:
            items = await r.rpop(key, k)
            if not items:
                break
            for it in items:
                _ = loads(bytes(it))["enq_ts"]  # type: ignore[arg-type]
                done += 1
                last = time.time()
                if done == 1:
                    first = last
        cpus = cpu.stop(done)
    finally:
        await r.delete(key)
        await r.aclose()
    return {
        "name": "raw redis-py RPOP",
        "store": "redis",
        "k": k,
        "n": done,
        "rate": _rate(done, first, last),
        "enqueue_bulk_rate": round(bulk, 1),
        **cpus,
    }


async def raw_amqp(url: str, n: int = 20000, k: int = 100) -> dict[str, Any]:
    """aio-pika: drain a backlog with prefetch `k`, acking every `k` messages at once."""
    import asyncio

    import aio_pika

    name = f"apalis_bench_raw_{os.getpid()}"
    conn = await aio_pika.connect(url, timeout=5)
    async with conn:
        channel = await conn.channel(publisher_confirms=False)
        queue = await channel.declare_queue(name, durable=True)
        try:
            body = json.dumps({"enq_ts": 0.0}).encode()
            t0 = time.perf_counter()
            for _ in range(n):
                await channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)
            bulk = n / (time.perf_counter() - t0)
            await asyncio.sleep(0.5)  # let the broker take in the last published messages
            await channel.set_qos(prefetch_count=k)
            loads = json.loads
            done, first, last = 0, 0.0, 0.0
            async with queue.iterator() as it:
                async for message in it:
                    _ = loads(message.body)["enq_ts"]
                    done += 1
                    last = time.time()
                    if done == 1:
                        first = last
                    if done % k == 0 or done == n:
                        await message.ack(multiple=True)
                    if done == n:
                        break
        finally:
            await queue.delete(if_unused=False, if_empty=False)
    return {
        "name": "raw aio-pika prefetch",
        "store": "amqp",
        "k": k,
        "n": done,
        "rate": _rate(done, first, last),
        "enqueue_bulk_rate": round(bulk, 1),
    }


async def raw_nats(url: str, n: int = 20000, k: int = 100) -> dict[str, Any]:
    """nats-py JetStream: drain a WorkQueue stream with `fetch(k)`, acking each message."""
    import nats
    from nats.js.api import RetentionPolicy

    name = f"APALIS_BENCH_RAW_{os.getpid()}"
    subject = f"apalis_bench_raw_{os.getpid()}"
    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    js = nc.jetstream()
    try:
        await js.add_stream(name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE)
        body = json.dumps({"enq_ts": 0.0}).encode()
        t0 = time.perf_counter()
        for i in range(0, n, 1000):  # published without waiting for each ack, 1000 in flight
            futures = [await js.publish_async(subject, body) for _ in range(min(1000, n - i))]
            for f in futures:
                await f
        bulk = n / (time.perf_counter() - t0)
        sub = await js.pull_subscribe(subject, durable="raw")
        loads = json.loads
        done, first, last = 0, 0.0, 0.0
        while done < n:
            msgs = await sub.fetch(k, timeout=5)
            for m in msgs:
                _ = loads(m.data)["enq_ts"]
                done += 1
                last = time.time()
                if done == 1:
                    first = last
                await m.ack()
    finally:
        try:
            await js.delete_stream(name)
        finally:
            await nc.close()
    return {
        "name": "raw nats-py JetStream fetch",
        "store": "nats",
        "k": k,
        "n": done,
        "rate": _rate(done, first, last),
        "enqueue_bulk_rate": round(bulk, 1),
    }


BASELINES = ("sqlite", "postgres", "redis", "amqp", "nats")
