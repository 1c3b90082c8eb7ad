"""NATS that is down when a command starts: the first connect gives up and says so (nats-py
would retry it for ever), while a connected store keeps reconnecting for as long as it takes."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from apalis_cli.backend import StoreSpec
from apalis_cli.errors import ConnectionLost
from apalis_nats import NatsStore

from ..nats_streams import drop_stream
from ..services import need_server


async def test_a_store_that_cannot_reach_nats_says_so_instead_of_hanging() -> None:
    store = NatsStore.from_spec(StoreSpec(name="down", kind="nats", url="nats://127.0.0.1:1"))
    with pytest.raises(ConnectionLost, match=r"cannot reach NATS at nats://127\.0\.0\.1:1"):
        async with asyncio.timeout(30):  # a bound that proves it did not hang, not a benchmark
            await store.open()
    await store.close()


async def test_once_connected_the_client_reconnects_without_a_limit() -> None:
    tag = uuid.uuid4().hex[:10]
    options = {"stream": f"U{tag}", "prefix": f"u{tag}", "storage": "memory"}
    store = NatsStore.from_spec(StoreSpec(name="up", kind="nats", url=need_server("nats"), options=options))
    await store.open()
    try:
        client = store.connection.current
        assert client is not None
        assert client.options["max_reconnect_attempts"] == -1
        js = await store.connection.js()
        await drop_stream(js, f"U{tag}")
    finally:
        await store.close()
