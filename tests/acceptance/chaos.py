"""Helpers of the reliability (chaos) acceptance tests: a backend table per kind with its own
namespace, a handler that records each run with O_APPEND, and bounded waits.

Every run of a task appends one line `<n> <pid> <time>` to `runs.log` in the test's directory,
so how many times each task ran (and when, for a failure's message) is read from outside the
daemons, whatever the store can report. A task
pushed with `hold` ends only once the test removes the file `hold` from its directory.
"""

from __future__ import annotations

import collections
import contextlib
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.nats_streams import drop_stream
from tests.services import need_server

from .conftest import Apalis

__all__ = [
    "DURABLE",
    "RECORDER",
    "Backend",
    "all_settled",
    "kill",
    "make_backend",
    "push_numbers",
    "runs",
    "stop",
    "wait_for",
    "worker_table",
]

DURABLE = ("sqlite", "postgres", "mysql", "redis", "rsmq", "amqp", "pgmq", "nats")
"""The kinds whose tasks outlive a daemon (memory lives inside one process)."""

RECORDER = """
import os
import time

def record(args):
    # One write(2) with O_APPEND: lines of concurrent processes never interleave.
    fd = os.open("runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{args['n']} {os.getpid()} {time.time():.3f}\\n".encode())
    finally:
        os.close(fd)
    if args.get("sleep"):
        time.sleep(args["sleep"])
    # A held task ends only once the test removed its `hold` file: a fault lands before it ends.
    while args.get("hold") and os.path.exists("hold"):
        time.sleep(0.01)
    return args["n"]
"""


@dataclass(slots=True)
class Backend:
    """A `[backends.main]` table of one kind, isolated from every other test, and its cleanup."""

    kind: str
    table: str
    queue: str = field(default_factory=lambda: f"chaos_{uuid.uuid4().hex[:8]}")
    """The queue of the test's worker (also unique: brokers and pgmq share a namespace per server)."""
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def cleanup(self) -> None:
        """Drop what the test made on the server (best effort: a cleanup never fails a test)."""
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):  # a failed drop must not hide the test's result
                fn()


def _toml_table(kind: str, url: str, **options: object) -> str:
    lines = ["[backends.main]", f'kind = "{kind}"', f'url = "{url}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


def make_backend(
    kind: str, tmp_path: Path, *, server: str | None = None, options: Mapping[str, object] | None = None
) -> Backend:
    """A table for `kind` on `server` (default: the shared test server, skipped if absent), with
    extra `options` for that kind (e.g. rsmq's `vt`)."""
    tag = uuid.uuid4().hex[:10]
    options = options or {}
    if kind == "sqlite":
        return Backend(kind, _toml_table("sqlite", "sqlite:///jobs.db", **options))
    if kind == "postgres":
        url = server or need_server("postgres")
        schema = f"apalis_chaos_{tag}"
        backend = Backend(kind, _toml_table("postgres", url, schema=schema, **options))
        backend.cleanups.append(lambda: _pg_execute(url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        return backend
    if kind == "pgmq":
        from tests.integration.pgmq_install import scratch_database

        url = server or scratch_database(need_server("postgres"))
        return Backend(kind, _toml_table("pgmq", url, **options))  # queue names keep tests apart
    if kind == "mysql":
        url = server or need_server("mysql")
        prefix = f"chaos_{tag}_"
        backend = Backend(kind, _toml_table("mysql", url, table_prefix=prefix, **options))
        backend.cleanups.append(lambda: _mysql_drop_prefix(url, prefix))
        return backend
    if kind in ("redis", "rsmq"):
        url = server or need_server("redis")
        namespace = f"chaos-{tag}"
        backend = Backend(kind, _toml_table(kind, url, namespace=namespace, **options))
        backend.cleanups.append(lambda: _redis_drop(url, namespace))
        return backend
    if kind == "amqp":
        url = server or need_server("amqp")
        prefix = f"chaos-{tag}"
        backend = Backend(kind, _toml_table("amqp", url, prefix=prefix, **options))
        # Delay queues expire by themselves (x-expires); the work and dead-letter queues, the
        # control plane's queues and exchange do not (for the queue and the `_ok`/`_boom` ones
        # the control CLI tests add).
        works = [f"{prefix}.{backend.queue}{suffix}" for suffix in ("", "_ok", "_boom")]
        names = [f"{work}{part}" for work in works for part in ("", ".dead", ".paused", ".finals")]
        exchanges = [f"{work}.control" for work in works]
        backend.cleanups.append(lambda: _amqp_delete(url, names, exchanges))
        return backend
    if kind == "nats":
        url = server or need_server("nats")
        stream = f"CHAOS{tag}"
        backend = Backend(kind, _toml_table("nats", url, stream=stream, prefix=f"chaos{tag}", **options))
        backend.cleanups.append(lambda: _nats_drop(url, stream))
        return backend
    raise ValueError(f"no chaos table for kind {kind!r}")


def worker_table(
    *,
    queue: str | None = None,
    handler: str = "chaos_handlers:record",
    concurrency: int = 8,
    keep_alive: str = "500ms",
    stale_after: str = "1500ms",
    codec: str = "json",
    max_attempts: int = 5,
) -> str:
    """The one `[[workers]]` table of the chaos tests, on `queue` (the backend's; default: a new one)."""
    queue = queue or f"chaos_{uuid.uuid4().hex[:8]}"
    return (
        "[[workers]]\n"
        'name = "chaos"\n'
        f'queue = "{queue}"\n'
        f'handler = "{handler}"\n'
        f'codec = "{codec}"\n'
        f"concurrency = {concurrency}\n"
        f'keep_alive = "{keep_alive}"\n'
        f'stale_after = "{stale_after}"\n'
        'poll_interval = "100ms"\n'
        'shutdown_timeout = "5s"\n'
        f"max_attempts = {max_attempts}\n"
    )


def push_numbers(apalis: Apalis, numbers: Iterable[int], **extra: object) -> None:
    """Push one task `{"n": i, **extra}` per number with `apalis push --file`."""
    path = apalis.cwd / "tasks.jsonl"
    path.write_text("".join(json.dumps({"n": n, **extra}) + "\n" for n in numbers))
    result = apalis("push", "--file", str(path), timeout=120)
    assert result.code == 0, result.err


def runs(apalis: Apalis) -> collections.Counter[int]:
    """How many times each task number ran, from `runs.log`."""
    return collections.Counter(n for n, _ in run_lines(apalis))


def run_lines(apalis: Apalis) -> list[tuple[int, int]]:
    """Every `(n, pid)` line of `runs.log`, in order."""
    return [(n, pid) for n, pid, _ in timed_run_lines(apalis)]


def timed_run_lines(apalis: Apalis) -> list[tuple[int, int, float]]:
    """Every `(n, pid, time)` line of `runs.log`, in order."""
    log = apalis.cwd / "runs.log"
    text = log.read_text() if log.exists() else ""
    # Handlers append while this reads: a last line without its newline is still being written.
    complete = text[: text.rfind("\n") + 1]
    lines = []
    for line in complete.splitlines():
        n, pid, at = line.split()
        lines.append((int(n), int(pid), float(at)))
    return lines


def wait_for(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    daemons: Iterable[subprocess.Popen[str]] = (),
    interval: float = 0.2,
) -> None:
    """Poll `check` until true; fail after `timeout` seconds or when a daemon exits early."""
    watched = list(daemons)
    deadline = time.monotonic() + timeout
    while not check():
        for daemon in watched:
            if daemon.poll() is not None:
                _, err = daemon.communicate()
                raise AssertionError(f"a daemon exited ({daemon.returncode}) while waiting for {what}:\n{err[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def all_settled(apalis: Apalis) -> bool:
    """True when `apalis stats` shows nothing pending, running or failed (counts a store cannot
    give are null and ignored)."""
    result = apalis("stats", "--json")
    if result.code != 0:
        return False
    rows = result.json()
    return all(not row.get(status) for row in rows for status in ("pending", "running", "failed"))


def stop(daemons: Iterable[subprocess.Popen[str]], timeout: float = 30) -> list[str]:
    """SIGTERM every daemon still running, wait (SIGKILL after `timeout`); their stderr."""
    daemons = list(daemons)
    for daemon in daemons:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
    errors = []
    for daemon in daemons:
        try:
            _, err = daemon.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, err = daemon.communicate()
        errors.append(err or "")
    return errors


def kill(daemon: subprocess.Popen[str]) -> str:
    """SIGKILL `daemon` (no farewell, no release, unflushed acks lost); its stderr."""
    if daemon.poll() is None:
        daemon.kill()
    _, err = daemon.communicate(timeout=10)
    return err or ""


def _pg_execute(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.encode())


def _mysql_drop_prefix(url: str, prefix: str) -> None:
    import asyncio
    from urllib.parse import unquote, urlsplit

    import asyncmy

    parts = urlsplit(url)

    async def drop() -> None:
        conn = await asyncmy.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            db=parts.path.lstrip("/"),
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute("SHOW TABLES LIKE %s", (prefix.replace("_", "\\_") + "%",))
                tables = [row[0] for row in await cur.fetchall()]
                if tables:
                    await cur.execute("DROP TABLE IF EXISTS " + ", ".join(f"`{t}`" for t in tables))
        finally:
            conn.close()

    asyncio.run(drop())


def _redis_drop(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def _amqp_delete(url: str, names: list[str], exchanges: list[str] = []) -> None:  # noqa: B006 - never changed
    import asyncio

    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        try:
            for name in names:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(name)
                if not channel.is_closed:
                    await channel.close()
            for name in exchanges:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(name)
                if not channel.is_closed:
                    await channel.close()
        finally:
            await connection.close()

    asyncio.run(delete())


def _nats_drop(url: str, stream: str) -> None:
    import asyncio

    import nats

    async def drop() -> None:
        client = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=1)
        try:
            await drop_stream(client.jetstream(), stream)
        finally:
            await client.close()

    asyncio.run(drop())
