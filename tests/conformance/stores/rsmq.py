"""The RSMQ backend in the conformance suite: one namespace per test, deleted afterwards.

A short `vt` (0.5 s) keeps orphan recovery quick; realtime is on, so pushes wake idle workers
through `ns:rt:<q>`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from apalis_cli.backend import Store, StoreSpec

from ...services import need_server
from ..factory import StoreFactory
from .redis import drop_namespace, kill_clients


class RsmqFactory(StoreFactory):
    """A new rsmq namespace per test on the test Redis server."""

    kind = "rsmq"

    async def create(self, tmp_path: Path) -> Store:
        from apalis_rsmq import RsmqStore

        url = need_server("redis")
        options = {"namespace": f"conf-rsmq-{uuid.uuid4().hex}", "vt": 0.5, "realtime": True}
        store = RsmqStore.from_spec(StoreSpec(name="conformance", kind="rsmq", url=url, options=options))
        await store.open()
        return store

    async def destroy(self, store: Store) -> None:
        from apalis_rsmq import RsmqStore

        assert isinstance(store, RsmqStore)
        await store.close()
        await drop_namespace(store.config.url, store.config.namespace)

    async def drop_connections(self, store: Store) -> None:
        from apalis_rsmq import RsmqStore

        assert isinstance(store, RsmqStore)
        await kill_clients(store.config.url, store.client_name)


FACTORY = RsmqFactory()
