"""Redis global limits: what a limit keeps in the store lasts no longer than it carries anything
(the contract itself is proven on every store in tests/conformance/test_limits.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.codec import JsonCodec
from apalis_cli.layers import RateLimitLayer
from apalis_cli.task import Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore

STORE_KINDS = ("redis",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


async def test_a_per_key_rates_states_go_once_they_carry_nothing(store: RedisStore) -> None:
    backend = store.backend("rated", codec=JsonCodec())
    client, base = store.client, backend.keys.base
    accounts = [f"acct-{n}" for n in range(40)]  # one rate state each: keys used once
    for account in accounts:
        await backend.push({"account": account}, limit_key=account)
    ran: list[str] = []
    held: list[Any] = []

    async def rate_states() -> list[Any]:
        return [key async for key in client.scan_iter(match=f"{base}rate*")]

    async def handler(args: Any, task: Task[bytes]) -> None:
        if not ran:
            held.extend(await rate_states())  # read while the first start's state still counts
        ran.append(args["account"])

    stop = asyncio.Event()
    limit = RateLimitLayer(1, 0.5, scope="global", key="account")
    worker = Worker(name="w", backend=backend, handler=handler, layers=[limit], keep_alive=0.1, poll_interval=0.05)
    running = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 15
        while len(ran) < len(accounts):
            assert time.monotonic() < deadline, "timed out waiting for every task to run"
            await asyncio.sleep(0.05)
        assert held, "each key's rate is held while it matters"
        while await rate_states():
            assert time.monotonic() < deadline, "the rate states outlived their window"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await running
    assert sorted(ran) == sorted(accounts)
