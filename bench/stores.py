"""Which store to measure: default local URLs, a fresh namespace per run, and how to open it.

Stores are built exactly as the daemon builds them: through the entry-point group
`apalis_cli.backends`, `cls.from_spec(StoreSpec(...))`, `await store.open()`. A backend whose
package (or driver) is not installed yet is reported as unavailable, never an error.

Each run gets its own place so that it neither sees nor leaves behind other runs' tasks: a temp
SQLite file, a fresh PostgreSQL schema, a fresh Redis key namespace, fresh queue names. What a
run creates on a server is dropped at the end (best effort) by `Target.cleanup()`.
"""

from __future__ import annotations

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

# The option that isolates a run, per kind, as each backend's config.py names it. A kind not
# listed here is isolated by its fresh queue names alone.
_NAMESPACE_OPTION: dict[str, str] = {
    "postgres": "schema",
    "pgmq": "schema",
    "redis": "namespace",
    "rsmq": "namespace",
    "amqp": "prefix",
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

    def spec(self) -> StoreSpec:
        """The `[backends.bench]` table this target stands for."""
        return StoreSpec(name="bench", kind=self.kind, url=self.url, options=dict(self.options))

    def cleanup(self) -> None:
        """Drop what this run created (schema, keys, temp file); never raises."""
        with contextlib.suppress(Exception):  # best effort: the figures are already out
            _cleanup(self)
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
    option = _NAMESPACE_OPTION.get(kind)
    if option:
        target.options[option] = namespace
    return target


async def open_store(target: Target) -> Store:
    """Build and open the store for `target` through the registry, as the daemon does."""
    cls = store_class(target.kind)
    spec = target.spec()
    try:
        store: Store = cls.from_spec(spec)
    except ApalisError as exc:
        key = getattr(exc, "key", None)
        if key and key in target.options:
            # This backend isolates runs some other way: drop the guess and rely on queue names.
            target.options.pop(key)
            store = cls.from_spec(target.spec())
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


def _cleanup(target: Target) -> None:
    """Drop the per-run schema or keys with the plain drivers (the store API has no 'drop all')."""
    if target.kind in ("postgres", "pgmq") and "schema" in target.options:
        import psycopg

        with psycopg.connect(_pg_dsn(target.url), autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{target.options["schema"]}" CASCADE')
    elif target.kind in ("redis", "rsmq") and "namespace" in target.options:
        import redis

        client = redis.Redis.from_url(target.url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"*{target.namespace}*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        finally:
            client.close()


def _pg_dsn(url: str) -> str:
    """A libpq URL (psycopg accepts postgresql:// URLs as they are; drop our own scheme tweaks)."""
    parts = urlsplit(url)
    if parts.scheme.startswith("postgres"):
        return parts._replace(scheme="postgresql").geturl()
    return url
