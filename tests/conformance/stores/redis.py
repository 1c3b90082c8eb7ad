"""The Redis backend in the conformance suite: one namespace per test, deleted afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from apalis_cli.backend import Store, StoreSpec

from ...services import need_server
from ..factory import StoreFactory


async def drop_namespace(url: str, namespace: str) -> None:
    """Delete every key under `namespace:`."""
    from redis.asyncio import Redis

    admin = Redis.from_url(url)
    try:
        doomed = [key async for key in admin.scan_iter(match=f"{namespace}:*", count=1000)]
        for start in range(0, len(doomed), 1000):
            await admin.delete(*doomed[start : start + 1000])
    finally:
        await admin.aclose()


async def kill_clients(url: str, client_name: str) -> int:
    """`CLIENT KILL` every connection named `client_name`, as a network failure would."""
    from redis.asyncio import Redis

    admin = Redis.from_url(url)
    try:
        clients: list[dict[str, Any]] = await admin.client_list()
        killed = 0
        for client in clients:
            if client.get("name") == client_name:
                killed += int(await admin.execute_command("CLIENT", "KILL", "ID", client["id"]))  # type: ignore[no-untyped-call]
        return killed
    finally:
        await admin.aclose()


class RedisFactory(StoreFactory):
    """A new namespace per test on the test Redis server."""

    kind = "redis"

    async def create(self, tmp_path: Path) -> Store:
        from apalis_redis import RedisStore

        url = need_server("redis")
        spec = StoreSpec(name="conformance", kind="redis", url=url, options={"namespace": f"conf-{uuid.uuid4().hex}"})
        store = RedisStore.from_spec(spec)
        await store.open()
        return store

    async def destroy(self, store: Store) -> None:
        from apalis_redis import RedisStore

        assert isinstance(store, RedisStore)
        await store.close()
        await drop_namespace(store.config.url, store.config.namespace)

    async def drop_connections(self, store: Store) -> None:
        from apalis_redis import RedisStore

        assert isinstance(store, RedisStore)
        await kill_clients(store.config.url, store.client_name)


FACTORY = RedisFactory()
