"""The Redis store's own connection for its scripts (`apalis_redis.link`): calls in flight share
it and each gets its own reply, a cancelled call leaves it in step, and a server that stops
answering fails the calls instead of leaving them waiting."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.codec import JsonCodec
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore
from apalis_redis.link import Link
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError, TimeoutError

from ..services import need_binary
from .conftest import make_redis_store
from .running import run_until
from .test_redis_backend import _free_port, _start_redis

STORE_KINDS = ("redis",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


async def _connections_named(store: RedisStore) -> int:
    admin = Redis.from_url(store.config.url)
    try:
        listed = await admin.client_list()
    finally:
        await admin.aclose()
    return sum(1 for client in listed if client.get("name") == store.client_name)


async def test_pushes_in_flight_together_share_a_connection_and_each_gets_its_own_id(store: RedisStore) -> None:
    backend = store.backend("together", codec=JsonCodec())
    wanted = [f"t{n:04d}" for n in range(300)]
    ids = await asyncio.gather(*(backend.push({"n": n}, task_id=tid) for n, tid in enumerate(wanted)))
    assert ids == wanted
    for n in (0, 150, 299):
        task = await backend.get(wanted[n])
        assert task is not None
        assert JsonCodec().decode(task.args) == {"n": n}
    # One connection for the 300 calls (and the client's own, that checked the server at open).
    assert await _connections_named(store) <= 2


async def test_a_push_cancelled_in_flight_leaves_later_pushes_their_own_replies(store: RedisStore) -> None:
    backend = store.backend("cancelled", codec=JsonCodec())
    calls = [asyncio.ensure_future(backend.push({"n": n}, task_id=f"c{n:03d}")) for n in range(40)]
    await asyncio.sleep(0)  # written, their replies on their way
    for call in calls[::2]:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    for n in range(40, 60):
        assert await backend.push({"n": n}, task_id=f"c{n:03d}") == f"c{n:03d}"
    assert [await backend.push({"again": n}, idempotency_key=f"k{n}") for n in range(3)] == [
        await backend.push({"again": n}, idempotency_key=f"k{n}") for n in range(3)
    ]
    kept = [call.result() for call in calls[1::2]]
    assert kept == [f"c{n:03d}" for n in range(1, 40, 2)]


async def test_an_error_reply_fails_its_own_call_only(store: RedisStore) -> None:
    connection = store.client.connection_pool.make_connection()
    link = await Link.open(connection, 5.0)
    try:
        first = link.call(b"*3\r\n$4\r\nEVAL\r\n$14\r\nreturn 'first'\r\n$1\r\n0\r\n")
        bad = link.call(b"*3\r\n$4\r\nEVAL\r\n$22\r\nreturn redis.call('x')\r\n$1\r\n0\r\n")
        last = link.call(b"*1\r\n$4\r\nPING\r\n")
        assert await first == b"first"
        with pytest.raises(ResponseError):
            await bad
        assert await last == b"PONG"
        assert link.usable
    finally:
        link.close()


async def test_a_server_that_stops_answering_fails_the_calls_in_flight(tmp_path: Path) -> None:
    need_binary("redis-server")
    port = _free_port()
    server = _start_redis(port, tmp_path)
    client = Redis(host="127.0.0.1", port=port)
    link = await Link.open(client.connection_pool.make_connection(), 0.2)  # type: ignore[no-untyped-call]
    try:
        assert await link.call(b"*1\r\n$4\r\nPING\r\n") == b"PONG"
        os.kill(server.pid, signal.SIGSTOP)  # up, connected, and silent
        calls = [link.call(b"*1\r\n$4\r\nPING\r\n") for _ in range(3)]
        for call in calls:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call, 30)  # a guard: the link's own timer fails it first
        assert not link.usable
    finally:
        os.kill(server.pid, signal.SIGCONT)
        link.close()
        await client.aclose()
        server.terminate()
        server.wait(10)


class _ReaderOfItsOwn:
    """The reader of a redis-py release that reads through a class of its own, not asyncio's
    stream reader (whose private buffer `Link` takes over): every method there, delegated."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._inner = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _RenamedInternals(Connection):
    """A redis-py connection whose private stream attributes are not the ones `Link` takes over."""

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]
        assert self._reader is not None
        self._reader = _ReaderOfItsOwn(self._reader)  # type: ignore[assignment]


async def test_a_redis_py_whose_connection_cannot_be_taken_over_still_runs_the_store(
    redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    redis_store.client.connection_pool.connection_class = _RenamedInternals
    backend = redis_store.backend("plain", codec=JsonCodec())
    with caplog.at_level(logging.DEBUG, logger="apalis_redis.link"):
        ids = await asyncio.gather(*(backend.push({"n": n}, task_id=f"p{n:03d}") for n in range(100)))
    assert ids == [f"p{n:03d}" for n in range(100)]
    assert any("used the ordinary way" in r.getMessage() for r in caplog.records)
    assert await backend.push({"n": 0}, idempotency_key="once") == await backend.push({"n": 1}, idempotency_key="once")
    ran: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append(args["n"])

    worker = Worker(name="w", backend=backend, handler=handler, concurrency=8, keep_alive=0.2, poll_interval=0.05)
    await run_until(worker, lambda: len(ran) == 101, within=30)
    assert sorted(ran) == [0, *range(100)]
    assert (await backend.stats()).counts[Status.DONE] == 101


async def test_pushes_to_a_server_that_stopped_reading_wait_instead_of_piling_up_in_memory(tmp_path: Path) -> None:
    need_binary("redis-server")
    port = _free_port()
    server = _start_redis(port, tmp_path)
    store = make_redis_store(f"redis://127.0.0.1:{port}/0")
    await store.open()
    try:
        backend = store.backend("stalled", codec=JsonCodec())
        await backend.push({"warm": True})  # the link is open
        os.kill(server.pid, signal.SIGSTOP)
        body = {"pad": "x" * 20000}
        pushes = [asyncio.ensure_future(backend.push(body, task_id=f"s{n:03d}")) for n in range(400)]  # ~8 MB
        lane: Any = store.connection._lane
        link: Any = lane._link  # the scripts' connection
        deadline = time.monotonic() + 30
        while not link.crowded:
            assert time.monotonic() < deadline, "the transport never filled up"
            await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0)  # every push has had its turns to write
        assert link._transport.get_write_buffer_size() < 1_000_000
        os.kill(server.pid, signal.SIGCONT)
        ids = await asyncio.wait_for(asyncio.gather(*pushes), 60)
        assert ids == [f"s{n:03d}" for n in range(400)]
        assert await backend.get("s399") is not None
    finally:
        os.kill(server.pid, signal.SIGCONT)
        await store.close()
        server.terminate()
        server.wait(10)


async def test_a_redis_py_whose_connection_cannot_be_taken_over_still_hears_wake_ups(redis_store: RedisStore) -> None:
    # The pub/sub connection is read by a protocol of its own too (apalis_redis.wakeups.Hearing);
    # on such a redis-py it is heard through redis-py's pub/sub instead.
    redis_store.client.connection_pool.connection_class = _RenamedInternals
    connection = redis_store.connection
    woken = connection.waker("heard").subscribe()
    await connection.listen()
    woken.clear()
    await redis_store.client.publish(f"{redis_store.config.namespace}:wake:heard", "")
    await asyncio.wait_for(woken.wait(), 10)
    assert connection.wakes("heard") == 2  # the subscription's, then the push's


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_worker_is_handed_its_task_over_either_protocol(redis_store: RedisStore, protocol: int) -> None:
    # The pub/sub protocol reads RESP2 messages (arrays) and RESP3 ones (pushes) alike.
    url = redis_store.config.url
    store = make_redis_store(f"{url}{'&' if '?' in url else '?'}protocol={protocol}", redis_store.config.namespace)
    await store.open()
    try:
        backend = store.backend("either", codec=JsonCodec())
        handed: list[bool] = []

        async def handler(args: Any, task: Task[bytes]) -> None:
            handed.append(backend._got.get(task.ctx.lock_by or "") == task.id)  # heard on the wake channel

        worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, poll_interval=30.0)
        listed = asyncio.Event()

        async def push_when_listed() -> None:
            deadline = time.monotonic() + 10
            while await store.client.zscore(backend.keys.idle, worker.context.id) is None:
                assert time.monotonic() < deadline, "the worker was never listed idle"
                await asyncio.sleep(0.01)
            listed.set()
            await backend.push({"n": 1})

        pushing = asyncio.ensure_future(push_when_listed())
        await run_until(worker, lambda: bool(handed), within=10)
        await pushing
        assert listed.is_set()
        assert handed == [True]
    finally:
        await store.close()


async def test_listening_takes_an_idle_connection_rather_than_greeting_a_new_one(store: RedisStore) -> None:
    # A wait subscribes within its own timeout: a new connection and its greeting cost more
    # round trips (a wait of 50 ms returned before it had registered, under load).
    await store.client.ping()  # the client's pool holds one idle connection now
    assert await _connections_named(store) == 1
    await store.connection.listen()
    assert await _connections_named(store) == 1  # that one, subscribed
    await store.client.ping()  # the pool connects again what it lent
    assert await _connections_named(store) == 2
