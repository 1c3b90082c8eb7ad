"""What is special to the Redis store: its key layout, retention, lost claims, wake-ups, config
errors, and surviving CLIENT KILL and a server restart (the worker re-registers and goes on)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import ConfigError
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker
from apalis_redis import RedisStore
from redis.asyncio import Redis

from ..acceptance.chaos_servers import spawn_server
from ..conformance.stores.redis import kill_clients
from ..services import need_binary
from .conftest import make_redis_store

STORE_KINDS = ("redis",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


class Running:
    """A worker run in the background, stopped by `stop()`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(worker.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        await self.task


def worker(backend: Any, handler: Any, **options: Any) -> Running:
    settings = {"keep_alive": 0.2, "poll_interval": 0.05, **options}
    return Running(Worker(name="w", backend=backend, handler=handler, **settings))


async def until(condition: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_every_key_of_a_queue_shares_its_hash_tag(store: RedisStore) -> None:
    backend = store.backend("tagged", codec=JsonCodec())
    await backend.push({"a": 1}, idempotency_key="k1")
    await backend.push({"a": 2}, delay=60)
    done = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        done.set()

    running = worker(backend, handler)
    await asyncio.wait_for(done.wait(), 10)
    ns = store.config.namespace
    keys = [k.decode() async for k in store.client.scan_iter(match=f"{ns}:*")]
    await running.stop()
    assert keys
    assert all(k.startswith(f"{ns}:{{tagged}}:") for k in keys), keys
    assert {f"{ns}:{{tagged}}:{name}" for name in ("scheduled", "done", "k:k1")} <= set(keys)


async def test_finished_tasks_expire_and_are_purged_after_retention(store: RedisStore) -> None:
    backend = store.backend("retained", codec=JsonCodec())
    ids = await backend.push_bulk(range(5))
    finished: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> int:
        finished.append(task.id)
        return int(args) * 2

    running = worker(backend, handler, keep_alive=0.1, retention=0.5)
    await until(lambda: len(finished) == 5)
    await asyncio.sleep(0.05)
    ttl = await store.client.pttl(backend.keys.task(ids[0]))
    assert 0 < ttl <= 500, "a finished task's hash expires with retention"
    for _ in range(100):  # the heartbeat (every 0.1 s) purges what finished 0.5 s ago
        if not (await backend.stats()).counts[Status.DONE]:
            break
        await asyncio.sleep(0.05)
    await running.stop()
    assert (await backend.stats()).counts[Status.DONE] == 0
    assert [await backend.get(task_id) for task_id in ids] == [None] * len(ids)


async def test_a_claim_whose_reply_was_lost_is_released_by_the_next_beat(store: RedisStore) -> None:
    backend = store.backend("lost", codec=JsonCodec())
    task_id = await backend.push({"a": 1})
    me = WorkerContext(id="w-lost", name="w", queue="lost", keep_alive=0.05, stale_after=10)
    beats = backend.heartbeat(me)
    await anext(beats)
    k = backend.keys
    # The claim runs on the server, but the worker never sees its reply.
    await store.scripts["claim"](
        keys=[k.ready, k.scheduled, k.running, k.failed, k.idle, k.handed], args=[k.base, time.time(), 1, me.id, "", 0]
    )
    claimed = await backend.get(task_id)
    assert claimed is not None
    assert (claimed.ctx.status, claimed.ctx.lock_by) == (Status.RUNNING, me.id)
    await asyncio.sleep(0.1)
    await anext(beats)
    await beats.aclose()  # type: ignore[attr-defined]
    back = await backend.get(task_id)
    assert back is not None
    assert (back.ctx.status, back.ctx.attempts, back.ctx.lock_by) == (Status.PENDING, 0, None)


async def test_an_idle_worker_wakes_on_push_not_by_polling(store: RedisStore) -> None:
    backend = store.backend("wake", codec=JsonCodec())
    started: list[float] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(time.perf_counter())

    running = worker(backend, handler, poll_interval=30.0)
    await asyncio.sleep(1.0)  # idle long enough for the poll backoff to reach its cap
    other = make_redis_store(store.config.url, store.config.namespace)  # a pusher elsewhere
    await other.open()
    pushed = time.perf_counter()
    await other.backend("wake", codec=JsonCodec()).push({"x": 1})
    await other.close()
    await until(lambda: started, 5.0)
    await running.stop()
    assert started[0] - pushed < 1.0, "woken by pub/sub, far sooner than the 30 s poll interval"


@pytest.mark.parametrize(
    ("url", "options", "key"),
    [
        ("postgresql://u:secret@h/db", {}, "url"),
        ("redis://localhost", {"nmespace": "x"}, "nmespace"),
        ("redis://localhost", {"namespace": "has space"}, "namespace"),
        # redis-py would read "notadb" as database 0: another application's data, silently.
        ("redis://u:secret@localhost/notadb", {}, "url"),
        ("redis://u:secret@localhost/0?socket_timeout=soon", {}, "url"),
    ],
)
def test_bad_config_names_the_key_and_hides_the_password(url: str, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisStore.from_spec(StoreSpec(name="x", kind="redis", url=url, options=options))
    assert caught.value.key == key
    assert "secret" not in str(caught.value)


async def test_client_kill_mid_run_loses_nothing_and_the_worker_stays_registered(store: RedisStore) -> None:
    backend = store.backend("killed", codec=JsonCodec())
    ids = await backend.push_bulk(range(400))
    seen: set[str] = set()

    async def handler(args: Any, task: Task[bytes]) -> None:
        await asyncio.sleep(0.002)
        seen.add(task.id)

    running = worker(backend, handler, concurrency=10, keep_alive=0.1)
    kills = 0
    while len(seen) < len(ids) and kills < 8:
        await asyncio.sleep(0.1)
        kills += await kill_clients(store.config.url, store.client_name)
    await until(lambda: len(seen) == len(ids), 30)
    await asyncio.sleep(0.3)
    registered = [w.id for w in await backend.workers()]
    await running.stop()
    assert kills > 0
    assert seen == set(ids)
    assert running.worker.context.id in registered
    counts = (await backend.stats()).counts
    assert (counts[Status.PENDING], counts[Status.RUNNING], counts[Status.DONE]) == (0, 0, len(ids))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    server = spawn_server(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise AssertionError("the private redis-server did not start")


def _start_redis_on_socket(sock: Path) -> subprocess.Popen[bytes]:
    server = spawn_server(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(sock.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            server.kill()
            raise AssertionError("the private redis-server did not start")
        time.sleep(0.05)
    return server


async def test_a_server_restart_is_survived_and_the_worker_re_registers(tmp_path: Path) -> None:
    need_binary("redis-server")
    port = _free_port()
    server = _start_redis(port, tmp_path)
    store = make_redis_store(f"redis://127.0.0.1:{port}/0")
    try:
        await store.open()
        backend = store.backend("restart", codec=JsonCodec())
        seen: list[str] = []

        async def handler(args: Any, task: Task[bytes]) -> None:
            seen.append(task.id)

        running = worker(backend, handler, keep_alive=0.1)
        first = await backend.push({"before": True})
        await until(lambda: first in seen)
        server.terminate()
        server.wait(10)
        await asyncio.sleep(0.5)  # the worker's poll, beat and wake-up listener all fail now
        server = _start_redis(port, tmp_path)  # empty: nothing was saved
        after = await backend.push({"after": True})
        await until(lambda: after in seen, 20)
        await asyncio.sleep(0.3)
        registered = [w.id for w in await backend.workers()]
        await running.stop()
        assert running.worker.context.id in registered, "the worker registered itself again"
    finally:
        await store.close()
        server.terminate()
        server.wait(10)


async def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    need_binary("redis-server")
    sock = tmp_path / "redis.sock"
    server = _start_redis_on_socket(sock)
    store = make_redis_store(f"unix://{sock}?db=2")
    try:
        await store.open()  # refused "socket_keepalive" (a TCP option) before
        backend = store.backend("unix", codec=JsonCodec())
        seen: list[Any] = []
        running = worker(backend, lambda args, task: seen.append(args))
        await backend.push({"over": "unix"})
        await until(lambda: seen == [{"over": "unix"}])
        await running.stop()
    finally:
        await store.close()
        server.terminate()
        server.wait(10)


async def test_pushes_in_bulk_are_one_round_trip_and_idempotent(store: RedisStore) -> None:
    backend = store.backend("bulk", codec=JsonCodec())
    ids = await backend.push_bulk(range(5000))
    assert len(set(ids)) == 5000
    assert (await backend.stats()).counts[Status.PENDING] == 5000
    first = await backend.push({"k": 1}, idempotency_key="same")
    assert await backend.push({"k": 2}, idempotency_key="same") == first
    client: Redis = store.client
    assert await client.get(f"{backend.keys.base}k:same") == first.encode()


async def test_a_lone_push_stores_what_a_batch_stores(store: RedisStore) -> None:
    """lua/push.lua (a lone push, its ready score reckoned by the client) and lua/enqueue.lua (a
    batch) leave the same hash and the same scores: due tasks at priorities 0, 7 and -3, and one
    not due yet."""
    lone, batch = store.backend("lone", codec=JsonCodec()), store.backend("batch", codec=JsonCodec())
    client: Redis = store.client
    now = time.time()
    for priority, at in ((0, now - 1.5), (7, now - 1.5), (-3, now - 1.5), (2, now + 3600)):
        ids = [await lone.push({"x": 1}, run_at=at, priority=priority)]
        ids += await batch.push_bulk([{"x": 1}, {"x": 1}], run_at=at, priority=priority)
        hashes = [await client.hgetall(f"{q.keys.base}t:{i}") for q, i in zip((lone, batch, batch), ids, strict=True)]
        for h in hashes:
            del h[b"c"]  # created_at: the push's own clock
        assert hashes[0] == hashes[1] == hashes[2]
        assert (hashes[0][b"s"], hashes[0][b"a"]) == (b"pending", b"0")
        due = at < now
        sets = [q.keys.ready if due else q.keys.scheduled for q in (lone, batch, batch)]
        scores = [await client.zscore(key, i) for key, i in zip(sets, ids, strict=True)]
        assert scores[0] is not None
        assert scores[0] == scores[1] == scores[2]
        assert await client.zscore(lone.keys.ready if not due else lone.keys.scheduled, ids[0]) is None


async def test_a_push_without_options_is_due_when_it_was_made(store: RedisStore) -> None:
    """A push with no option packs its own call (`lone.LonePush.now`): one reading of the clock
    is its run_at, its ready score and its creation time; the hash holds what a push with the
    same values given as options holds, and a server that forgot the script (SCRIPT FLUSH) is
    sent it again."""
    plain, given = store.backend("plain", codec=JsonCodec(), max_attempts=3), store.backend("given", codec=JsonCodec())
    client: Redis = store.client
    before = time.time()
    task_id = await plain.push({"x": 1})
    after = time.time()
    stored = await client.hgetall(f"{plain.keys.base}t:{task_id}")
    assert stored[b"c"] == stored[b"r"]
    run_at = float(stored[b"r"])
    assert before - 1e-6 <= run_at <= after + 1e-6
    assert await client.zscore(plain.keys.ready, task_id) == run_at
    other = await given.push({"x": 1}, run_at=run_at, max_attempts=3)
    twin = await client.hgetall(f"{given.keys.base}t:{other}")
    assert {k: v for k, v in stored.items() if k not in (b"c", b"r")} == {
        k: v for k, v in twin.items() if k not in (b"c", b"r")
    }
    assert float(twin[b"r"]) == run_at
    await client.script_flush()
    again = await plain.push({"x": 2})
    assert await client.zscore(plain.keys.ready, again) is not None
    assert [t.id for t in await plain.list_tasks()] == [task_id, again]


async def test_the_control_plane_keys_share_the_queue_hash_tag(store: RedisStore) -> None:
    backend = store.backend("ctl", codec=JsonCodec())
    doomed = await backend.push({"a": 1}, delay=60)
    waited = await backend.push({"a": 2}, delay=60)
    await backend.pause()
    assert (await backend.cancel(doomed, "no")).state.value == "cancelled"
    assert await backend.wait(waited, timeout=0.05) is None  # registers the wait
    ns = store.config.namespace
    keys = {k.decode() async for k in store.client.scan_iter(match=f"{ns}:*")}
    assert {f"{ns}:{{ctl}}:{name}" for name in ("paused", "waiting", "cancelled")} <= keys
    assert all(k.startswith(f"{ns}:{{ctl}}:") for k in keys), keys  # one Cluster slot per queue


async def test_bulk_actions_go_batch_by_batch_up_to_their_limit(store: RedisStore) -> None:
    from apalis_cli.control import BulkAction, BulkFilter
    from apalis_cli.task import Status

    backend = store.backend("bulky", codec=JsonCodec())
    count = 12_000  # two and a half batches of one script call each
    await backend.push_bulk([{"n": 1}] * count, delay=3600)
    killed = frozenset({Status.KILLED})

    assert await backend.bulk(BulkAction.KILL, BulkFilter(statuses=frozenset({Status.PENDING}))) == count
    assert await backend.bulk(BulkAction.RETRY, BulkFilter(statuses=killed, limit=7_777)) == 7_777
    assert await backend.bulk(BulkAction.RETRY, BulkFilter(statuses=killed), dry_run=True) == count - 7_777
    counts = (await backend.stats()).counts
    assert (counts[Status.PENDING], counts[Status.KILLED]) == (7_777, count - 7_777)


async def test_a_second_cancel_answers_that_the_task_is_already_cancelled(store: RedisStore) -> None:
    from apalis_cli.control import CancelResult
    from apalis_cli.task import Status

    backend = store.backend("twice", codec=JsonCodec())
    task_id = await backend.push({"a": 1}, delay=60)
    assert await backend.cancel(task_id, "first") == CancelResult.cancelled()
    assert await backend.cancel(task_id, "again") == CancelResult.already_final(Status.CANCELLED)
    assert await backend.cancel("no-such-task") == CancelResult.not_found()
