"""The AMQP backend in the conformance suite: a queue-name prefix of its own per test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from apalis_amqp import AmqpStore
from apalis_cli.backend import Store, StoreSpec

from ...services import need_server
from ..factory import StoreFactory


def abort_connection(connection: Any) -> None:
    """Cut a live aio-pika connection's socket with no goodbye, as a network failure would.

    aiormq keeps its stream only in the reader task's frame, so it is found there."""
    reader_task = connection.transport.connection._reader_task
    receiver = reader_task.get_coro().cr_frame.f_locals["frame_receiver"]
    receiver.reader._transport.abort()


class AmqpFactory(StoreFactory):
    """A store whose queues are all named under a fresh prefix, deleted afterwards."""

    kind = "amqp"

    async def create(self, tmp_path: Path) -> Store:
        url = need_server("amqp")
        prefix = f"t{uuid.uuid4().hex[:12]}"
        store = AmqpStore.from_spec(StoreSpec(name="conformance", kind="amqp", url=url, options={"prefix": prefix}))
        await store.open()
        return store

    async def destroy(self, store: Store) -> None:
        assert isinstance(store, AmqpStore)
        names = set(store.connection.created)
        exchanges = set(store.connection.exchanges)
        await store.close()
        channel = await store.connection.channel()
        for name in sorted(names):
            await channel.queue_delete(name)
        for name in sorted(exchanges):
            await channel.exchange_delete(name)
        await store.connection.close()

    async def drop_connections(self, store: Store) -> None:
        assert isinstance(store, AmqpStore)
        abort_connection(store.connection.current)


FACTORY = AmqpFactory()
