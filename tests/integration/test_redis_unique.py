"""Redis unique keys: the list of a key's tasks (lua/unique.lua) lasts no longer than its windows
and its tasks, so keys used once leave nothing behind. The contract itself (skip, replace,
extend, states, windows) is proven on every store in tests/conformance/test_unique.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from apalis_cli.codec import JsonCodec
from apalis_cli.task import Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore

STORE_KINDS = ("redis",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


async def until(condition: Any, what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_keys_list_expires_with_its_last_window(store: RedisStore) -> None:
    backend = store.backend("windowed", codec=JsonCodec())
    client, base = store.client, backend.keys.base
    first = await backend.push({"n": 1}, unique={"key": "w", "period": "400ms"})
    assert await backend.push({"n": 2}, unique={"key": "w", "period": "400ms"}) == first
    ttl = await client.pttl(f"{base}u:w")
    assert 0 < ttl <= 1400, "the list expires with its window (and a second's margin)"
    assert await client.zscore(f"{base}uniques", "w") is None, "a windowed key needs no sweep"

    async def window_over() -> bool:
        return await backend.push({"n": 3}, unique={"key": "w", "period": "10m"}) != first

    await until(window_over, "the window to end")
    assert await client.zcard(f"{base}u:w") == 1, "the ended window's task left the list"
    ttl = await client.pttl(f"{base}u:w")
    assert 500_000 < ttl <= 601_000, "the list now lasts as long as the new window"


async def test_keys_of_no_window_are_forgotten_with_their_tasks(store: RedisStore) -> None:
    backend = store.backend("forgotten", codec=JsonCodec())
    client, base = store.client, backend.keys.base
    keys = [f"order-{n}" for n in range(45)]  # more than one beat looks over
    ids = [await backend.push({"n": n}, unique={"key": key}) for n, key in enumerate(keys)]
    assert await backend.push({"n": 0}, unique={"key": keys[0]}) == ids[0], "a waiting task holds its key"
    assert await client.zcard(f"{base}uniques") == len(keys)
    assert await client.pttl(f"{base}u:{keys[0]}") == -1, "a task of no window keeps its key while it lives"
    ran: set[str] = set()

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.add(task.id)

    stop = asyncio.Event()
    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.1, retention=0.3, poll_interval=0.05)
    running = asyncio.create_task(worker.run(stop))
    try:

        async def all_gone() -> bool:
            lists = await client.exists(*(f"{base}u:{key}" for key in keys))
            return len(ran) == len(ids) and not lists and not await client.exists(f"{base}uniques")

        await until(all_gone, "every key's list to go with its task (finished, then past retention)")
    finally:
        stop.set()
        await running
    again = await backend.push({"n": 0}, unique={"key": keys[0]})
    assert again not in ids, "the key is free once its task is gone"
