"""The NATS JetStream backend in the conformance suite: a stream and subject prefix per test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from apalis_cli.backend import Store, StoreSpec
from apalis_nats import NatsStore

from ...nats_streams import drop_stream
from ...services import need_server
from ..factory import StoreFactory


def abort_connection(client: Any) -> None:
    """Cut a nats-py client's socket with no goodbye, as a network failure would."""
    client._transport._io_writer.transport.abort()


class NatsFactory(StoreFactory):
    """A store on a stream of its own (subjects under a fresh prefix) and its control buckets,
    deleted afterwards."""

    kind = "nats"
    stall_redelivers = (
        "JetStream redelivers a message once ack_wait (= stale_after) passes without an "
        "in_progress, and a stalled process sends none"
    )

    async def create(self, tmp_path: Path) -> Store:
        url = need_server("nats")
        tag = uuid.uuid4().hex[:12]
        options = {"stream": f"T{tag}", "prefix": f"t{tag}", "storage": "memory"}
        store = NatsStore.from_spec(StoreSpec(name="conformance", kind="nats", url=url, options=options))
        await store.open()
        return store

    async def destroy(self, store: Store) -> None:
        assert isinstance(store, NatsStore)
        await drop_stream(await store.connection.js(), store.config.stream)
        await store.close()

    async def drop_connections(self, store: Store) -> None:
        assert isinstance(store, NatsStore)
        abort_connection(store.connection.current)


FACTORY = NatsFactory()
