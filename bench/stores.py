"""Which store to measure: default local URLs, a fresh namespace per run, and how to open it.

Stores are built exactly as the daemon builds them: through the entry-point group
`apalis_cli.backends`, `cls.from_spec(StoreSpec(...))`, `await store.open()`. A backend whose
package (or driver) is not installed yet is reported as unavailable, never an error.

Each run gets its own place so that it neither sees nor leaves behind other runs' tasks: a temp
SQLite file, a fresh PostgreSQL schema, a fresh Redis key namespace, fresh queue names. What a
run creates on a server is dropped at the end (best effort) by `Target.cleanup()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from apalis_cli.backend import Store, StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import ApalisError

__all__ = ["DEFAULT_URLS", "KINDS", "Target", "Unavailable", "open_store", "prepare", "store_class"]

DEFAULT_URLS: dict[str, str] = {
    "memory": "memory://",
    "sqlite": "",  # a temp file per run
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
    "pgmq": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
    "redis": "redis://127.0.0.1:6379/0",
    "rsmq": "redis://127.0.0.1:6379/0",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "nats": "nats://127.0.0.1:4222",
}
KINDS = tuple(DEFAULT_URLS)

# The options that isolate a run, per kind, as each backend's config.py names them ("{ns}" is the
# run's namespace). A kind not listed (pgmq) is isolated by its fresh queue names alone.
_NAMESPACE_OPTIONS: dict[str, dict[str, str]] = {
    "postgres": {"schema": "{ns}"},
    "mysql": {"table_prefix": "{ns}_"},
    "redis": {"namespace": "{ns}"},
    "rsmq": {"namespace": "{ns}"},
    "amqp": {"prefix": "{ns}"},
    "nats": {"stream": "{NS}", "prefix": "{ns}"},
}


class Unavailable(Exception):
    """The backend cannot be measured here (package or driver missing, server down)."""


@dataclass(slots=True)
class Target:
    """One store to measure: how to build it, and what to drop afterwards."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    namespace: str = ""
    temp_dir: str | None = None
    scratch_db: str | None = None  # a database this run created (pgmq's SQL install), dropped after
    queues: list[str] = field(default_factory=list)
    application_name: str | None = None  # PostgreSQL: names this run's connections (bench.servercpu)

    def queue(self, phase: str) -> str:
        """A fresh queue name for one phase (a-z, 0-9 and _ only: pgmq's rule, the strictest)."""
        name = f"{self.namespace}_{phase}"
        self.queues.append(name)
        return name

    def spec(self) -> StoreSpec:
        """The `[backends.bench]` table this target stands for."""
        return StoreSpec(name="bench", kind=self.kind, url=self.url, options=dict(self.options))

    async def cleanup(self) -> None:
        """Drop what this run created (schema, tables, keys, queues, stream, file); never raises."""
        with contextlib.suppress(Exception):  # best effort: the figures are already out
            await asyncio.wait_for(_cleanup(self), 30)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def store_class(kind: str) -> type[Any]:
    """The store class registered under `kind`, or `Unavailable` saying why not."""
    found = [ep for ep in importlib.metadata.entry_points(group="apalis_cli.backends") if ep.name == kind]
    if not found:
        raise Unavailable(f'no backend "{kind}" in the entry-point group apalis_cli.backends')
    try:
        cls: type[Any] = found[0].load()
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"backend package not there yet ({found[0].value}: {exc})") from None
    return cls


def prepare(kind: str, url: str | None, run_id: str) -> Target:
    """A target for `kind` at `url` (or the local default), isolated under `run_id`."""
    if kind not in DEFAULT_URLS:
        raise Unavailable(f'unknown kind "{kind}" (one of {", ".join(KINDS)})')
    namespace = f"bench_{run_id}"
    target = Target(kind=kind, url=url or DEFAULT_URLS[kind], namespace=namespace)
    if kind == "sqlite" and not url:
        target.temp_dir = tempfile.mkdtemp(prefix="apalis-bench-")
        target.url = f"sqlite:///{os.path.join(target.temp_dir, 'bench.db')}"
    for option, value in _NAMESPACE_OPTIONS.get(kind, {}).items():
        target.options[option] = value.format(ns=namespace, NS=namespace.upper())
    return target


async def open_store(target: Target) -> Store:
    """Build and open the store for `target` through the registry, as the daemon does."""
    cls = store_class(target.kind)
    if target.kind == "pgmq" and target.url.split("?")[0] == DEFAULT_URLS["pgmq"]:  # options kept
        await _pgmq_database(target)
    spec = target.spec()
    try:
        store: Store = cls.from_spec(spec)
    except ApalisError as exc:
        key = getattr(exc, "key", None)
        if key and key in target.options:
            # This backend isolates runs some other way: drop the guess and rely on queue names.
            target.options.pop(key)
            try:
                store = cls.from_spec(target.spec())
            except ApalisError as again:
                raise Unavailable(str(again)) from None
        else:
            raise Unavailable(str(exc)) from None
    try:
        await store.open()
    except ApalisError as exc:
        raise Unavailable(f"cannot open: {exc}") from None
    except OSError as exc:
        raise Unavailable(f"server not reachable: {exc}") from None
    return store


CODEC = JsonCodec()


async def _pgmq_database(target: Target) -> None:
    """pgmq's install script cannot run twice in one database: load it into a scratch one."""
    import importlib.resources

    import psycopg

    try:
        sql = (importlib.resources.files("pgmq") / "sql" / "pgmq.sql").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        raise Unavailable("pgmq's SQL comes from the pgmq package (dev extra): pip install pgmq") from None
    base = urlsplit(target.url)
    try:
        async with await psycopg.AsyncConnection.connect(target.url, autocommit=True, connect_timeout=3) as conn:
            await conn.execute(f'CREATE DATABASE "{target.namespace}"')
        target.scratch_db = target.namespace
        target.url = base._replace(path=f"/{target.namespace}").geturl()
        async with await psycopg.AsyncConnection.connect(target.url, connect_timeout=3) as conn:
            await conn.execute(sql.encode())
    except psycopg.Error as exc:
        raise Unavailable(f"cannot prepare a pgmq database: {exc}") from None


async def _cleanup(target: Target) -> None:
    """Drop what the run made with the plain drivers (the store API has no 'drop everything')."""
    kind, opts = target.kind, target.options
    if target.scratch_db:
        import psycopg

        admin = urlsplit(target.url)._replace(path="/" + urlsplit(DEFAULT_URLS[kind]).path.lstrip("/")).geturl()
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True, connect_timeout=3) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{target.scratch_db}" WITH (FORCE)')
    elif kind in ("postgres", "pgmq"):
        import psycopg

        url = urlsplit(target.url)._replace(scheme="postgresql").geturl()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=3) as conn:
            if "schema" in opts:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{opts["schema"]}" CASCADE')
            if kind == "pgmq":
                for queue in target.queues:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("SELECT pgmq.drop_queue(%s)", (queue,))
    elif kind in ("redis", "rsmq"):
        from redis.asyncio import Redis

        client = Redis.from_url(target.url, socket_timeout=5)
        try:
            keys = [k async for k in client.scan_iter(match=f"*{target.namespace}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await client.delete(*keys[i : i + 1000])
        finally:
            await client.aclose()
    elif kind == "mysql" and "table_prefix" in opts:
        import asyncmy

        u = urlsplit(target.url)
        my = await asyncmy.connect(
            host=u.hostname or "127.0.0.1",
            port=u.port or 3306,
            user=u.username or "root",
            password=u.password or "",
            database=u.path.lstrip("/") or "test",
        )
        try:
            async with my.cursor() as cur:
                await cur.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
                    " AND table_name LIKE %s",
                    (opts["table_prefix"].replace("_", "\\_") + "%",),
                )
                for (name,) in await cur.fetchall():
                    await cur.execute(f"DROP TABLE IF EXISTS `{name}`")
        finally:
            my.close()
    elif kind == "amqp" and "prefix" in opts:
        import aio_pika

        amqp = await aio_pika.connect(target.url, timeout=5)
        async with amqp:
            channel = await amqp.channel()
            for queue in target.queues:
                work = f"{opts['prefix']}.{queue}"
                for name in (work, f"{work}.dead", f"{work}.paused", f"{work}.finals"):
                    with contextlib.suppress(Exception):
                        await channel.queue_delete(name)
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(f"{work}.control")
    elif kind == "nats" and "stream" in opts:
        import nats

        nc = await nats.connect(target.url, connect_timeout=3, max_reconnect_attempts=0)
        try:
            for name in (opts["stream"], f"KV_{opts['stream']}_CTL", f"KV_{opts['stream']}_FIN"):
                with contextlib.suppress(Exception):  # the stream and the control buckets beside it
                    await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()
