"""RSMQ wire compatibility with real second clients: PyPI `pyrsmq` always, npm `rsmq@0.12.4` when
npm is present. Messages they send are tasks to our workers; tasks we push are messages they
receive with the same body; dead letters are a plain rsmq queue they can read."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import Abort, BadPayload
from apalis_cli.task import Task
from apalis_cli.worker import Worker
from apalis_rsmq import RsmqStore
from redis import Redis

from ..services import need_binary

ID = re.compile(r"^[a-z0-9]{10}[A-Za-z0-9]{22}$")


STORE_KINDS = ("rsmq",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


def pyrsmq(store: RsmqStore, queue: str) -> Any:
    """A pyrsmq client on the same server and namespace."""
    from rsmq import RedisSMQ

    parts = urlsplit(store.config.url)
    return RedisSMQ(host=parts.hostname, port=parts.port or 6379, qname=queue, ns=store.config.namespace)


async def run_until(worker: Worker, done: asyncio.Event, within: float = 10.0) -> None:
    """Run `worker` until `done` is set, then stop it; a worker that will not stop fails the
    test with the stack of every asyncio task."""
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(within):
            await done.wait()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(running), 20)
        except TimeoutError:
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(file=stacks)
            worker.hurry()
            raise AssertionError(f"the worker did not stop:\n{stacks.getvalue()}") from None


async def test_a_message_sent_by_pyrsmq_is_a_task_to_our_worker(store: RsmqStore) -> None:
    client = pyrsmq(store, "from_py")
    client.createQueue(vt=5).execute()
    sent = client.sendMessage(message=json.dumps({"to": "ada", "n": 1})).execute()
    backend = store.backend("from_py", codec=JsonCodec())
    seen: list[tuple[str, Any, int]] = []
    done = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append((task.id, args, task.ctx.attempts))
        done.set()

    await run_until(Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, poll_interval=0.05), done)
    assert seen == [(sent, {"to": "ada", "n": 1}, 1)]
    await asyncio.sleep(0.05)
    raw = Redis.from_url(store.config.url)
    try:
        ns = store.config.namespace
        assert raw.zcard(f"{ns}:from_py") == 0, "done deletes the message"
        assert not raw.hexists(f"{ns}:from_py:Q", sent)
        assert client.getQueueAttributes().execute()["totalrecv"] == 1
    finally:
        raw.close()


async def test_a_pushed_task_is_a_message_pyrsmq_receives(store: RsmqStore) -> None:
    backend = store.backend("to_py", codec=JsonCodec())
    task_id = await backend.push({"hello": "wörld"})
    assert ID.match(task_id)
    client = pyrsmq(store, "to_py")
    message = client.receiveMessage(vt=5).execute()
    assert message["id"] == task_id
    assert message["message"] == JsonCodec().encode({"hello": "wörld"}).decode()
    assert message["rc"] == 1
    attributes = client.getQueueAttributes().execute()
    assert attributes["totalsent"] == 1
    assert attributes["maxsize"] == -1
    assert client.deleteMessage(id=task_id).execute()


async def test_the_layout_is_rsmqs(store: RsmqStore) -> None:
    backend = store.backend("layout", codec=JsonCodec())
    task_id = await backend.push({"a": 1}, delay=60)
    ns = store.config.namespace
    raw = Redis.from_url(store.config.url, decode_responses=True)
    try:
        assert raw.smembers(f"{ns}:QUEUES") == {"layout", "layout-dead"}
        fields = raw.hgetall(f"{ns}:layout:Q")
        assert {"vt", "delay", "maxsize", "created", "modified", "totalsent", task_id} <= set(fields)
        assert fields[task_id] == '{"a":1}'
        server_ms = int(raw.time()[0]) * 1000
        score = raw.zscore(f"{ns}:layout", task_id)
        assert score is not None
        assert server_ms + 55_000 < score < server_ms + 65_000, "score = visible-at ms from Redis TIME"
        assert abs(int(task_id[:10], 36) / 1e6 - server_ms / 1000) < 5
    finally:
        raw.close()


async def test_retry_rc_and_dead_letters_are_visible_to_pyrsmq(store: RsmqStore) -> None:
    backend = store.backend("dlq", codec=JsonCodec(), max_attempts=5)
    task_id = await backend.push({"job": "doomed"})
    attempts: list[int] = []
    done = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        attempts.append(task.ctx.attempts)
        if task.ctx.attempts < 2:
            raise RuntimeError("first try fails")
        done.set()
        raise Abort("second try gives up")

    worker = Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, poll_interval=0.05)
    await run_until(worker, done)
    assert attempts == [1, 2], "attempts = rc"
    dead = pyrsmq(store, "dlq-dead").receiveMessage(vt=5).execute()
    assert dead["id"] == task_id
    assert dead["message"] == '{"job":"doomed"}'
    stored = await backend.get(task_id)
    assert stored is not None
    assert stored.ctx.last_error is not None
    assert "second try gives up" in stored.ctx.last_error
    assert stored.ctx.attempts == 2


async def test_an_operator_retry_brings_a_dead_letter_back(store: RsmqStore) -> None:
    backend = store.backend("revive", codec=JsonCodec())
    task_id = await backend.push({"job": 1})
    assert await backend.kill(task_id, "not now")
    assert (await backend.stats()).counts
    assert await backend.retry(task_id)
    message = pyrsmq(store, "revive").receiveMessage(vt=5).execute()
    assert (message["id"], message["rc"]) == (task_id, 1)


async def test_maxsize_of_a_queue_made_by_another_client_is_honoured(store: RsmqStore) -> None:
    pyrsmq(store, "small").createQueue(maxsize=1024).execute()
    backend = store.backend("small", codec=JsonCodec())
    await backend.push("x" * 100)
    with pytest.raises(BadPayload):
        await backend.push("x" * 2000)


def _npm_rsmq(tmp: Path) -> Path:
    need_binary("npm")
    need_binary("node")
    (tmp / "package.json").write_text('{"name":"rsmq-peer","version":"1.0.0","private":true}\n')
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent", "rsmq@0.12.4"],
        cwd=tmp,
        check=True,
        capture_output=True,
        timeout=100,
    )
    return tmp


@pytest.fixture(scope="module")
def npm_rsmq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = os.environ.get("APALIS_TEST_NPM_RSMQ")  # a directory with rsmq installed, to skip npm
    if cached:
        return Path(cached)
    return _npm_rsmq(tmp_path_factory.mktemp("npm-rsmq"))


def node(directory: Path, store: RsmqStore, script: str) -> Any:
    parts = urlsplit(store.config.url)
    prelude = (
        'const R=require("rsmq");'
        f'const r=new R({{host:"{parts.hostname}",port:{parts.port or 6379},ns:"{store.config.namespace}"}});'
    )
    done = subprocess.run(
        [
            "node",
            "-e",
            prelude + "(async()=>{const out=await (async()=>{" + script + "})();"
            "console.log(JSON.stringify(out));r.quit()})()",
        ],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


async def test_npm_rsmq_sends_and_receives(store: RsmqStore, npm_rsmq: Path) -> None:
    sent = await asyncio.to_thread(
        node,
        npm_rsmq,
        store,
        'await r.createQueueAsync({qname:"js"});return await r.sendMessageAsync({qname:"js",message:"{\\"n\\":7}"});',
    )
    backend = store.backend("js", codec=JsonCodec())
    seen: list[tuple[str, Any]] = []
    done = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        seen.append((task.id, args))
        done.set()

    await run_until(Worker(name="w", backend=backend, handler=handler, keep_alive=0.2, poll_interval=0.05), done)
    assert seen == [(sent, {"n": 7})]

    task_id = await backend.push({"back": "to node"})
    got = await asyncio.to_thread(node, npm_rsmq, store, 'return await r.receiveMessageAsync({qname:"js"});')
    assert (got["id"], got["message"], got["rc"]) == (task_id, '{"back":"to node"}', 1)
    assert abs(got["sent"] / 1000 - int(task_id[:10], 36) / 1e6) < 0.01


async def test_client_kill_mid_run_loses_nothing(store: RsmqStore) -> None:
    from ..conformance.stores.redis import kill_clients

    backend = store.backend("killed", codec=JsonCodec())
    ids = await backend.push_bulk(range(300))
    seen: set[str] = set()
    done = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        await asyncio.sleep(0.002)
        seen.add(task.id)
        if len(seen) == len(ids):
            done.set()

    stop = asyncio.Event()
    worker = Worker(name="w", backend=backend, handler=handler, concurrency=10, keep_alive=0.1, poll_interval=0.05)
    running = asyncio.create_task(worker.run(stop))
    kills = 0
    while not done.is_set() and kills < 8:
        await asyncio.sleep(0.1)
        kills += await kill_clients(store.config.url, store.client_name)
    async with asyncio.timeout(30):
        await done.wait()
    stop.set()
    await running
    assert kills > 0
    assert seen == set(ids)
    raw = Redis.from_url(store.config.url)
    try:
        assert raw.zcard(f"{store.config.namespace}:killed") == 0, "every message was deleted once done"
    finally:
        raw.close()


async def test_a_cancelled_message_is_gone_for_every_rsmq_client(store: RsmqStore) -> None:
    backend = store.backend("cancelled_py", codec=JsonCodec())
    doomed = await backend.push({"n": 1})
    kept = await backend.push({"n": 2})

    assert (await backend.cancel(doomed, "not wanted")).state.value == "cancelled"

    client = pyrsmq(store, "cancelled_py")
    received = client.receiveMessage(vt=30).exceptions(False).execute()
    assert received, "pyrsmq received nothing"
    assert received["id"] == kept, "pyrsmq received the cancelled message"
    assert not client.receiveMessage(vt=30).exceptions(False).execute()
    found = await backend.get(doomed)
    assert found is not None
    assert (found.ctx.status.value, found.ctx.last_error) == ("cancelled", "not wanted")
    dead = pyrsmq(store, "cancelled_py-dead").receiveMessage(vt=30).exceptions(False).execute()
    assert dead, "a cancelled task is a dead letter, as a killed one"
    assert dead["id"] == doomed


async def test_a_waiter_in_another_process_gets_the_result_rsmq_deleted(store: RsmqStore) -> None:
    other = RsmqStore.from_spec(
        StoreSpec(name="it", kind="rsmq", url=store.config.url, options={"namespace": store.config.namespace})
    )
    await other.open()
    try:
        backend = store.backend("waited", codec=JsonCodec())
        task_id = await backend.push({"n": 21})
        waiting = asyncio.create_task(other.backend("waited", codec=JsonCodec()).wait(task_id, timeout=10))
        finished = asyncio.Event()

        async def double(args: Any, task: Task[bytes]) -> int:
            await asyncio.sleep(0.2)  # the waiter is registered by now
            finished.set()
            return int(args["n"]) * 2

        await run_until(Worker(name="w", backend=backend, handler=double, poll_interval=0.05), finished)
        task = await waiting
        assert task is not None
        assert (task.ctx.status.value, task.ctx.result) == ("done", "42")
        assert not await store.client.zscore(backend.keys.zset, task_id), "rsmq deleted the message"
    finally:
        await other.close()


async def test_a_wait_right_after_the_push_sees_a_task_done_before_it_began(store: RsmqStore) -> None:
    """A hot worker may receive, run and delete a message before the waiter registers: the
    queue that pushed it knows it was sent, so its wait answers done, not 'no such task'."""
    backend = store.backend("hot", codec=JsonCodec())
    ran = asyncio.Event()

    async def instant(args: Any, task: Task[bytes]) -> None:
        ran.set()

    worker = Worker(name="w", backend=backend, handler=instant, poll_interval=0.01, concurrency=4)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        for n in range(30):
            task_id = await backend.push({"n": n})
            if n % 2:
                await asyncio.sleep(0.05)  # the odd ones surely ended before the wait began
                assert await backend.get(task_id) is None, "rsmq kept a done message"
            task = await backend.wait(task_id, timeout=10)
            assert task is not None, f"task {n}: wait answered 'no such task'"
            assert task.ctx.status.value == "done"
        assert await backend.wait("0123456789abcdefghijABCDEFGHIJ01", timeout=0.2) is None
    finally:
        stop.set()
        await running


async def test_a_second_cancel_answers_that_the_task_is_already_cancelled(store: RsmqStore) -> None:
    from apalis_cli.control import CancelResult
    from apalis_cli.task import Status

    backend = store.backend("twice", codec=JsonCodec())
    task_id = await backend.push({"a": 1}, delay=60)
    assert await backend.cancel(task_id, "first") == CancelResult.cancelled()
    assert await backend.cancel(task_id, "again") == CancelResult.already_final(Status.CANCELLED)
    assert await backend.cancel("no-such-task") == CancelResult.not_found()
