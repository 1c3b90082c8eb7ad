"""What is special to the Redis store on a Redis Cluster (`cluster = true`): the URL names seed
nodes, every queue lives in one slot (its hash tag), queues on every master work side by side,
and an idle worker is woken by a push whose node is not the one its subscription is on.
(The whole contract runs on a cluster in the conformance suite, as `redis-cluster`.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from apalis_cli.browsing import TaskSearch
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import BackendError, ConfigError
from apalis_cli.retrying import RECONNECT_BUDGET
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore
from apalis_redis.config import cluster_seeds
from redis.asyncio.cluster import RedisCluster

from ..redis_cluster import PrivateCluster
from .conftest import redis_cluster_spec
from .running import run_until

STORE_KINDS = ("redis_cluster",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


@pytest.mark.parametrize(
    ("url", "first", "others"),
    [
        ("redis://h:7000", "redis://h:7000", []),
        ("redis://:pw@a:7000, b:7001,c/0", "redis://:pw@a:7000", [("b", 7001), ("c", 6379)]),
        ("rediss://u:p@[::1]:7000,[fe80::1]:7001/", "rediss://u:p@[::1]:7000", [("fe80::1", 7001)]),
        ("redis://a:7000/?socket_timeout=3", "redis://a:7000?socket_timeout=3", []),
    ],
)
def test_a_cluster_url_names_its_seed_nodes(url: str, first: str, others: list[tuple[str, int]]) -> None:
    assert cluster_seeds(url) == (first, others)


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("redis://h:7000/1", {}, "only database 0"),
        ("unix:///tmp/redis.sock", {}, "over TCP"),
        ("redis://:S3cr3tPw@h:7000,h:notaport", {}, '"host:port" seed nodes'),
        ("redis://h:7000", {"cluster": "yes"}, "must be true or false"),
    ],
)
def test_cluster_settings_are_checked_naming_the_key(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisStore.from_spec(redis_cluster_spec(url, **options))
    assert caught.value.key in ("url", "cluster")
    assert message in str(caught.value)
    assert "S3cr3tPw" not in str(caught.value)


async def test_an_unreachable_cluster_is_one_error_at_once(redis_cluster: PrivateCluster) -> None:
    # `apalis check` or a push on a wrong address says so at once: the reconnect budget (30 s) is
    # for a cluster lost while running. Opening spent all of it in its first PING (29 s).
    store = RedisStore.from_spec(redis_cluster_spec("redis://:S3cr3tPw@127.0.0.1:1,127.0.0.1:2"))
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await store.open()
    assert time.monotonic() - started < RECONNECT_BUDGET / 3, "opening waited out the reconnect budget"
    assert str(caught.value).startswith("cannot reach redis cluster at redis://:***@127.0.0.1:1,127.0.0.1:2: ")


def queues_on_every_master(count: int = 3) -> list[str]:
    """Queue names whose hash tags fall on each master (the slots are split in thirds)."""
    from redis.crc import key_slot

    found: dict[int, str] = {}
    for n in range(1000):
        name = f"q{n}-{uuid.uuid4().hex[:6]}"
        found.setdefault(key_slot(name.encode()) * count // 16384, name)
        if len(found) == count:
            return [found[third] for third in range(count)]
    raise AssertionError("no queue name for every master")


async def test_queues_on_every_master_are_served_side_by_side(store: RedisStore, redis_cluster: PrivateCluster) -> None:
    names = queues_on_every_master()
    client: RedisCluster = store.client
    homes = {getattr(client.get_node_from_key(f"x:{{{name}}}:ready"), "port", None) for name in names}
    assert homes == set(redis_cluster.ports), "one queue on each master"
    backends = [store.backend(name, codec=JsonCodec()) for name in names]
    for backend in backends:
        await backend.push_bulk([{"n": n} for n in range(50)])
    ran: list[Any] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append((task.ctx.queue, args["n"]))

    for backend in backends:
        worker = Worker(name="w", backend=backend, handler=handler, concurrency=8, keep_alive=0.2, poll_interval=0.05)
        await run_until(worker, lambda queue=backend.queue: sum(q == queue for q, _ in ran) == 50)
    assert sorted(ran) == sorted((name, n) for name in names for n in range(50))
    for backend in backends:
        assert (await backend.stats()).counts[Status.DONE] == 50


async def test_a_push_of_many_batches_works_on_masters_that_never_ran_its_script(store: RedisStore) -> None:
    # More than one enqueue batch (2,000 tasks) goes out as one pipeline; a cluster pipeline
    # does not load a script a node has not seen, so the first such push answered NOSCRIPT.
    client: RedisCluster = store.client
    await client.execute_command("SCRIPT", "FLUSH", target_nodes=RedisCluster.PRIMARIES)
    for name in queues_on_every_master():
        backend = store.backend(name, codec=JsonCodec())
        ids = await backend.push_bulk(range(2500))
        assert len(set(ids)) == 2500
        assert (await backend.stats()).counts[Status.PENDING] == 2500


async def test_an_idle_worker_is_woken_by_a_push_on_any_master(store: RedisStore) -> None:
    # Idle workers of queues on each master, polling at most every 30 s: each starts its task
    # within a second of the push only if the PUBLISH (from the node of its queue's slot)
    # reaches the store's one subscription (held on one node).
    names = queues_on_every_master()
    started: dict[str, float] = {}

    all_started = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        started[task.ctx.queue] = time.monotonic()
        if len(started) == len(names):
            all_started.set()

    backends = [store.backend(name, codec=JsonCodec()) for name in names]
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(Worker(name="idle", backend=b, handler=handler, keep_alive=5, poll_interval=30).run(stop))
        for b in backends
    ]
    await asyncio.sleep(3.0)  # idle long enough for the poll backoff to be seconds apart
    pushed = time.monotonic()
    for backend in backends:
        await backend.push({"wake": backend.queue})
    async with asyncio.timeout(30):
        await all_started.wait()
    stop.set()
    await asyncio.gather(*workers)
    late = {name: round(at - pushed, 3) for name, at in started.items() if at - pushed >= 1.0}
    assert not late, f"not woken by the push: {late}"


async def test_the_boards_pages_and_activity_read_a_queue_on_each_master(store: RedisStore) -> None:
    for name in queues_on_every_master():
        backend = store.backend(name, codec=JsonCodec())
        ids = await backend.push_bulk([{"n": n} for n in range(70)])
        await backend.kill(ids[3], "OSError: disk full")
        first = await backend.browse_page(TaskSearch(status=Status.PENDING), limit=50)
        assert first.next is not None
        rest = await backend.browse_page(TaskSearch(status=Status.PENDING), after=first.next, limit=50)
        assert rest.next is None
        assert sorted(t.id for t in first.tasks + rest.tasks) == sorted(set(ids) - {ids[3]})
        # A search by error text reads for at most SCAN_SECONDS a page, so on a loaded machine
        # its first page may end short, before the killed set: the answer is across its pages.
        found: list[str] = []
        cursor: str | None = None
        for _ in range(20):
            page = await backend.browse_page(TaskSearch(text="disk full"), after=cursor)
            found += [t.id for t in page.tasks]
            if (cursor := page.next) is None:
                break
        assert found == [ids[3]]
        activity = await backend.activity(time.time() - 3600)
        assert activity.oldest_ready_at is not None
        assert sum(m.failed for m in activity.per_minute.values()) == 1
