"""Redis and rsmq ride out a server that is away within the core's retry budget, and say so in
one line once it is spent (apalis_cli.retrying): each test runs its own redis-server on a port
of its own (the shared one on 6379 is never stopped), stops it and starts it again.

The budget is shortened for the tests (`Connection.patience.budget`); RECONNECT_BUDGET is 30 s.
A push made once the server is stopped waits until its store has read that the scripts'
connection was closed (`seen_gone`): written before, rsmq's send was sent as far as the client
can tell, and is rightly not sent again (the test of that line says why).
The last test drops only its store's connections to the shared server (CLIENT KILL)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import ConnectionLost
from apalis_cli.events import BackendUnavailable, Event
from apalis_cli.task import Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore
from apalis_rsmq import RsmqStore

from ..acceptance.chaos_servers import PrivateServer, free_port, private_redis
from ..conformance.stores.redis import kill_clients
from ..redis_cluster import PrivateCluster
from .conftest import redis_cluster_spec

PASSWORD = "s3cret-Outage"


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    with private_redis(free_port(), persist=False, password=PASSWORD) as made:
        yield made


def _spec(kind: str, port: int) -> StoreSpec:
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    options: dict[str, Any] = {"namespace": f"outage-{uuid.uuid4().hex[:8]}"}
    if kind == "rsmq":
        options["vt"] = 1
    return StoreSpec(name="t", kind=kind, url=url, options=options)


class Running:
    """A worker run in the background, its events kept."""

    def __init__(self, backend: Any, handler: Callable[[Any, Task[bytes]], Any]) -> None:
        self.events: list[Event] = []
        settings: dict[str, Any] = {"keep_alive": 0.2, "poll_interval": 0.05}
        self.worker = Worker(name="w", backend=backend, handler=handler, on_event=[self.events.append], **settings)
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self.worker.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        await self.task


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def seen_gone(backend: Any) -> None:
    """Until the store has read the end of its scripts' connection (`scripts.Lane`), closed by
    the server it stopped: the stopped server's close is already on the socket, but the loop
    reads it on a later turn than the one that hears the stop."""
    lane: Any = backend.connection._lane
    await until(lambda: lane._link is None or not lane._link.usable)


@contextlib.asynccontextmanager
async def working(kind: str, server: PrivateServer, budget: float) -> AsyncIterator[tuple[Any, list[int], Running]]:
    """A store on `server` whose commands are tried again for `budget` seconds, its queue, the
    numbers its worker has run, and that worker, once it has run the first."""
    spec = _spec(kind, server.port)
    store: RedisStore | RsmqStore = (RedisStore if kind == "redis" else RsmqStore).from_spec(spec)
    store.connection.patience.budget = budget
    await store.open()
    try:
        backend, seen = store.backend("q", codec=JsonCodec()), list[int]()
        running = Running(backend, lambda args, task: seen.append(args["n"]))
        await backend.push({"n": 1})
        await until(lambda: seen == [1])
        yield backend, seen, running
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["redis", "rsmq"])
async def test_a_push_and_a_worker_ride_out_a_restart_within_the_budget(kind: str, server: PrivateServer) -> None:
    async with working(kind, server, budget=20.0) as (backend, seen, running):
        await asyncio.to_thread(server.stop)
        await seen_gone(backend)
        push = asyncio.create_task(backend.push({"n": 2}))  # refused, and tried again meanwhile

        # An operator's commands and reads too: plain commands, pipelines, scripts.
        async def pause() -> bool:
            await backend.pause()
            paused: bool = await backend.paused()
            return paused

        asked = [asyncio.create_task(pause()), asyncio.create_task(backend.stats())]
        await asyncio.sleep(1.0)
        assert not push.done(), "the push waits for the server instead of failing"
        assert not any(ask.done() for ask in asked), "so do the operator's commands"
        await asyncio.to_thread(server.start)

        await push
        paused, stats = await asyncio.gather(*asked)
        assert paused is True
        assert stats.queue == "q"
        await backend.resume()
        await until(lambda: seen == [1, 2])
        await backend.push({"n": 3})
        await until(lambda: seen == [1, 2, 3])
        await asyncio.sleep(0.5)  # a beat or two
        registered = {w.id for w in await backend.workers()}
        await running.stop()
        if kind == "redis":  # rsmq keeps no registry of workers
            assert running.worker.context.id in registered, "the worker registered itself again"
        assert not [e for e in running.events if isinstance(e, BackendUnavailable)], (
            "the worker's claims rode the restart out without failing its poll"
        )


@pytest.mark.parametrize("kind", ["redis", "rsmq"])
async def test_a_store_that_stays_away_fails_in_one_line_after_its_budget(kind: str, server: PrivateServer) -> None:
    async with working(kind, server, budget=1.0) as (backend, seen, running):
        await asyncio.to_thread(server.stop)
        await seen_gone(backend)
        started = time.monotonic()
        with pytest.raises(ConnectionLost) as lost:
            await backend.push({"n": 2})
        took = time.monotonic() - started
        line, head = str(lost.value), f"{kind} at redis://:***@127.0.0.1:{server.port}/0: ConnectionError: "
        assert line.startswith(head), line
        assert line.endswith(" s, gave up)"), line
        assert "\n" not in line
        assert PASSWORD not in line
        assert took >= 0.3, "it was tried again first (the waits before giving up are at least 0.375 s)"

        await until(lambda: any(isinstance(e, BackendUnavailable) for e in running.events))
        told = next(e for e in running.events if isinstance(e, BackendUnavailable))
        assert told.error.startswith(f"ConnectionLost: {head}"), told.error
        assert told.error.endswith(" s, gave up)"), told.error

        await asyncio.to_thread(server.start)  # empty: it kept nothing
        await backend.push({"n": 3})
        await until(lambda: 3 in seen)
        await running.stop()


async def test_an_rsmq_send_written_before_the_store_saw_its_server_go_is_not_sent_again(
    server: PrivateServer,
) -> None:
    # The server is stopped without the loop turning: the send is written onto the connection
    # before the client has read its close. From the client, that is a send whose reply was lost
    # (the server could have stored it and gone before replying), and the server makes rsmq's
    # ids: sent again, it could be stored twice. It fails at once, in one line saying so.
    async with working("rsmq", server, budget=1.0) as (backend, _, running):
        server.stop()
        with pytest.raises(ConnectionLost) as lost:
            await backend.push({"n": 2})
        line = str(lost.value)
        assert line.startswith(f"rsmq at redis://:***@127.0.0.1:{server.port}/0: ConnectionError: "), line
        assert line.endswith(" (not sent again: it may have been done)"), line
        assert "\n" not in line
        await running.stop()


async def test_a_listener_whose_connection_dropped_wakes_every_poller(redis_store: RedisStore) -> None:
    # What was published while the pub/sub connection was away is lost: whoever waits for a
    # wake-up must look again. redis-py's own retry reconnected it in silence, waking no one.
    waker = redis_store.connection.waker("q")
    await redis_store.connection.listen()
    woken = waker.subscribe()
    woken.clear()
    assert await kill_clients(redis_store.config.url, redis_store.client_name) > 0
    await until(woken.is_set, within=10)


async def test_a_cluster_rides_out_a_restart_and_fails_in_one_line_once_away_past_its_budget() -> None:
    # A cluster client counts tries, not time (as many as the budget holds), and gives up early
    # once no node answers: what is left of the budget is spent on it all the same.
    cluster = PrivateCluster()
    await asyncio.to_thread(cluster.start)
    store = RedisStore.from_spec(redis_cluster_spec(cluster.url, namespace=f"outage-{uuid.uuid4().hex[:8]}"))
    store.connection.patience.budget = 20.0
    try:
        await store.open()
        backend = store.backend("q", codec=JsonCodec())
        await backend.push({"n": 1})

        for server in cluster.servers:
            await asyncio.to_thread(server.stop)
        push = asyncio.create_task(backend.push({"n": 2}))
        await asyncio.sleep(1.0)
        assert not push.done(), "the push waits for the cluster instead of failing"
        for server in cluster.servers:
            await asyncio.to_thread(server.start)  # its slots are kept in nodes.conf
        await push

        store.connection.patience.budget = 1.0  # a new client counts its tries from it
        await store.close()
        await store.open()
        for server in cluster.servers:
            await asyncio.to_thread(server.stop)
        with pytest.raises(ConnectionLost) as lost:
            await store.backend("q", codec=JsonCodec()).push({"n": 3})
        line = str(lost.value)
        assert line.startswith(f"redis at {cluster.url}: "), line
        assert line.endswith(" s, gave up)"), line
        assert "\n" not in line
    finally:
        await store.close()
        await asyncio.to_thread(cluster.stop)
