"""The Redis store on a Redis Cluster (`cluster = true`): three masters started by the tests on
free loopback ports for the session, one namespace per test (so each test's queue hashes to
some node of the three), deleted afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path

from apalis_cli.backend import Store, StoreSpec

from ...redis_cluster import PrivateCluster
from ..factory import StoreFactory
from .redis import kill_clients


class RedisClusterFactory(StoreFactory):
    """A new namespace per test on a private three-master cluster, started on first use."""

    kind = "redis-cluster"

    def __init__(self) -> None:
        self.cluster: PrivateCluster | None = None

    def url(self) -> str:
        """The cluster's URL, starting the cluster the first time."""
        if self.cluster is None:
            cluster = PrivateCluster()
            cluster.start()
            self.cluster = cluster
        return self.cluster.url

    async def create(self, tmp_path: Path) -> Store:
        from apalis_redis import RedisStore

        options = {"namespace": f"conf-{uuid.uuid4().hex}", "cluster": True}
        store = RedisStore.from_spec(StoreSpec(name="conformance", kind="redis", url=self.url(), options=options))
        await store.open()
        return store

    async def destroy(self, store: Store) -> None:
        from apalis_redis import RedisStore

        assert isinstance(store, RedisStore)
        await store.close()
        from redis.asyncio.cluster import RedisCluster

        admin = RedisCluster(host="127.0.0.1", port=self._ports()[0])
        try:
            doomed = [key async for key in admin.scan_iter(match=f"{store.config.namespace}:*", count=1000)]
            if doomed:
                await admin.delete(*doomed)  # redis-py splits it by slot
        finally:
            await admin.aclose()

    async def drop_connections(self, store: Store) -> None:
        from apalis_redis import RedisStore

        assert isinstance(store, RedisStore)
        for port in self._ports():
            await kill_clients(f"redis://127.0.0.1:{port}/0", store.client_name)

    def _ports(self) -> list[int]:
        return self.cluster.ports if self.cluster is not None else []

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


FACTORY = RedisClusterFactory()
