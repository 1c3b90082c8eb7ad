"""Redis hands a pushed task to an idle worker: the push claims it for a worker whose last claim
found nothing and publishes the task itself, so the worker starts it without a claim of its own.

A handed task is an ordinary claim, so it keeps every promise a claim keeps: a worker that
vanished gives it back through the orphan sweep, a worker that stops gives back the one still on
its way, backpressure holds, and nothing is handed out of a paused queue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import msgpack
import pytest
from apalis_cli.backend import StoreSpec, WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task
from apalis_redis import RedisStore
from apalis_redis import queue as queue_module
from apalis_redis.queue import RedisQueue

from .test_redis_backend import until, worker

STORE_KINDS = ("redis",)
"""The store kind(s) the tests taking `store` run on (tests/integration/conftest.py)."""


async def list_idle(store: RedisStore, q: RedisQueue, worker_id: str, *, got: str = "", limit: int = 1) -> Any:
    """A claim by `worker_id` as its poll stream makes it: one that finds nothing lists it idle."""
    k = q.keys
    keys = [k.ready, k.scheduled, k.running, k.failed, k.idle, k.handed]
    now = time.time()
    return msgpack.unpackb(
        await store.scripts["claim"](keys=keys, args=[k.base, repr(now), limit, worker_id, got, int((now + 60) * 1000)])
    )


async def next_task(stream: Any) -> Task[bytes]:
    """The poll stream's next task (its idle ticks skipped)."""
    while (task := await asyncio.wait_for(anext(stream), 10)) is None:
        pass
    assert isinstance(task, Task)
    return task


async def status_of(q: RedisQueue, task_id: str) -> tuple[Status, str | None, int]:
    task = await q.get(task_id)
    assert task is not None
    return task.ctx.status, task.ctx.lock_by, task.ctx.attempts


async def test_an_idle_worker_starts_a_pushed_task_without_claiming_it(store: RedisStore) -> None:
    q = store.backend("handed", codec=JsonCodec())
    started: list[Task[bytes]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(task)

    running = worker(q, handler, poll_interval=30.0)
    await until(lambda: running.worker.context.id in q._got)
    await asyncio.sleep(0.3)  # its first claims found nothing: it is listed idle
    claims = 0

    async def no_claim(**kwargs: Any) -> bytes:
        nonlocal claims
        claims += 1
        return bytes(msgpack.packb([]))

    store.scripts["claim"] = no_claim  # from now on the worker's own claims find nothing
    task_id = await q.push({"x": 1})
    await until(lambda: started)
    await running.stop()
    assert [t.id for t in started] == [task_id]
    assert (started[0].ctx.attempts, started[0].ctx.lock_by) == (1, running.worker.context.id)
    assert (await status_of(q, task_id))[0] is Status.DONE


@pytest.mark.parametrize("beat_after", [False, True], ids=["killed-idle", "killed-after-a-beat"])
async def test_a_task_handed_to_a_worker_that_vanished_comes_back(store: RedisStore, beat_after: bool) -> None:
    q = store.backend("ghost", codec=JsonCodec(), max_attempts=3)
    ghost = WorkerContext(id="ghost", name="ghost", queue="ghost", keep_alive=0.1, stale_after=0.3)
    beats = q.heartbeat(ghost)
    await anext(beats)  # registered (its stream is left open: no farewell)
    await list_idle(store, q, "ghost")
    task_id = await q.push({"x": 1})
    assert await status_of(q, task_id) == (Status.RUNNING, "ghost", 1)
    if beat_after:
        await anext(beats)  # alive after the hand-over: the task reached it, then it vanished
    started: list[Task[bytes]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(task)

    running = worker(q, handler, keep_alive=0.1, stale_after=0.3)
    await until(lambda: started)
    await running.stop()
    # The sweep counts the attempt of a worker seen alive after the hand-over, not of one
    # killed while idle (never received by a handler).
    assert [(t.id, t.ctx.attempts) for t in started] == [(task_id, 2 if beat_after else 1)]


async def test_a_worker_that_stops_gives_back_the_tasks_on_their_way(store: RedisStore) -> None:
    q = store.backend("leaving", codec=JsonCodec())
    me = WorkerContext(id="leaving", name="leaving", queue="leaving")
    beats = q.heartbeat(me)
    await anext(beats)
    await list_idle(store, q, "leaving", limit=3)
    task_ids = [await q.push({"x": n}) for n in range(2)]
    for task_id in task_ids:
        assert await status_of(q, task_id) == (Status.RUNNING, "leaving", 1)
    await beats.aclose()  # type: ignore[attr-defined]  # the farewell: it never received the tasks
    for task_id in task_ids:
        assert await status_of(q, task_id) == (Status.PENDING, None, 0)
    assert await store.client.zscore(q.keys.idle, "leaving") is None


async def test_a_task_on_its_way_takes_one_of_the_free_slots_the_worker_counted(store: RedisStore) -> None:
    q = store.backend("slots", codec=JsonCodec())
    await list_idle(store, q, "w1")
    first = await q.push({"n": 1})
    assert (await status_of(q, first))[:2] == (Status.RUNNING, "w1")
    # w1 claims again before the message reached it, with the one slot it thinks free: that slot
    # is the task on its way, so it claims nothing and is not listed idle again.
    await list_idle(store, q, "w1", got="")
    second = await q.push({"n": 2})
    assert (await status_of(q, second))[:2] == (Status.PENDING, None)
    # Once it has the first task, its claim takes the second.
    claimed = await list_idle(store, q, "w1", got=first)
    assert claimed[0] == second


async def test_a_worker_is_handed_as_many_tasks_as_it_has_free_slots(store: RedisStore) -> None:
    # Listed for its free slots, a worker running some tasks is handed the next pushes too: no
    # wake-up and claim of its own. Never more than those slots: backpressure holds.
    q = store.backend("several", codec=JsonCodec())
    await list_idle(store, q, "w1", limit=2)
    first, second, third = [await q.push({"n": n}) for n in range(3)]
    assert (await status_of(q, first))[:2] == (Status.RUNNING, "w1")
    assert (await status_of(q, second))[:2] == (Status.RUNNING, "w1")  # the first not received yet
    assert (await status_of(q, third))[:2] == (Status.PENDING, None)
    # Both on their way: a claim with its two slots counted free finds them taken.
    assert await list_idle(store, q, "w1", limit=2) == []
    assert await store.client.zscore(q.keys.idle, "w1") is None
    # It received the first only: one slot for the third.
    assert (await list_idle(store, q, "w1", got=first, limit=2))[0] == third


async def test_a_run_that_ends_gives_its_slot_back_to_the_listing(store: RedisStore) -> None:
    # A lone task's acknowledgement finds nothing to claim ahead: its slot goes back to the
    # worker's listing, whose other slots it kept, so the next pushes are handed over too.
    q = store.backend("back", codec=JsonCodec())
    me = WorkerContext(id="w1", name="w1", queue="back", concurrency=2, free_slots=lambda: 2)
    stream = q.poll_compact(me)
    assert await anext(stream) is None  # its claim found nothing: listed for its two slots
    first = await q.push({"n": 1})
    task = await next_task(stream)
    assert task.id == first  # handed
    second = await q.push({"n": 2})
    assert (await status_of(q, second))[:2] == (Status.RUNNING, "w1")  # its other slot
    assert (await next_task(stream)).id == second
    await q.ack_batch([(task, Outcome.done())])  # the first's run ended: one slot free
    third = await q.push({"n": 3})
    assert (await status_of(q, third))[:2] == (Status.RUNNING, "w1")
    fourth = await q.push({"n": 4})
    assert (await status_of(q, fourth))[:2] == (Status.PENDING, None)
    await stream.aclose()  # type: ignore[attr-defined]


async def test_nothing_is_handed_out_of_a_paused_queue_or_to_a_listing_past_its_time(store: RedisStore) -> None:
    q = store.backend("held", codec=JsonCodec())
    await list_idle(store, q, "w1")
    await q.pause()
    paused = await q.push({"n": 1})
    assert (await status_of(q, paused))[0] is Status.PENDING
    await q.resume()
    await q.cancel(paused, "out of the way")  # a ready task is served before any handing
    k = q.keys
    await store.client.zadd(k.idle, {"w1": int((time.time() - 1) * 1000) * 1000 + 1})  # one slot, a second ago
    late = await q.push({"n": 2})
    assert (await status_of(q, late))[0] is Status.PENDING
    assert await store.client.zcard(k.idle) == 0


async def test_a_task_whose_message_comes_late_runs_once(store: RedisStore) -> None:
    # The message handing a task over is on its way for longer than a beat (a busy process, a
    # slow network): the worker's beat must not give the task back as a lost claim, or it runs
    # twice (once from the message, once more from the queue).
    q = store.backend("late", codec=JsonCodec(), max_attempts=3)
    pusher = store.backend("late", codec=JsonCodec())
    loop = asyncio.get_running_loop()
    deliver = q._handed
    q._handed = lambda message: loop.call_later(0.6, deliver, message)  # type: ignore[method-assign,assignment]
    started: list[tuple[str, int]] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append((task.id, task.ctx.attempts))

    running = worker(q, handler, keep_alive=0.1, stale_after=2.0, poll_interval=5.0)
    deadline = time.monotonic() + 10
    while await store.client.zscore(q.keys.idle, running.worker.context.id) is None:  # its claim found nothing
        assert time.monotonic() < deadline, "the worker was never listed idle"
        await asyncio.sleep(0.01)
    task_id = await pusher.push({"x": 1})
    await until(lambda: started)
    await asyncio.sleep(1.0)  # beats, and a second run if the task was given back
    await running.stop()
    assert started == [(task_id, 1)]
    assert (await status_of(q, task_id))[0] is Status.DONE


async def test_pushes_with_a_key_or_meta_are_handed_over_as_plain_ones_are(store: RedisStore) -> None:
    # A plain push goes through lua/push.lua, any other through lua/enqueue.lua: both hand over.
    q = store.backend("either", codec=JsonCodec())
    pushes: list[dict[str, Any]] = [{}, {"idempotency_key": "k"}, {"meta": {"m": 1}}, {"priority": 5}]
    for n, options in enumerate(pushes):
        await list_idle(store, q, f"w{n}")
        task_id = await q.push({"n": n}, **options)
        assert await status_of(q, task_id) == (Status.RUNNING, f"w{n}", 1)
        assert msgpack.unpackb(await store.client.hget(q.keys.handed, f"w{n}")) == [task_id]


async def test_a_delayed_push_waits_and_a_plain_push_made_again_inserts_nothing(store: RedisStore) -> None:
    q = store.backend("again", codec=JsonCodec())
    await list_idle(store, q, "w1")
    later = await q.push({"n": 1}, delay=60)
    assert await status_of(q, later) == (Status.PENDING, None, 0)
    assert await store.client.zscore(q.keys.idle, "w1") is not None  # still listed: nothing handed
    first = await q.push({"n": 2}, task_id="same")
    assert await q.push({"n": 3}, task_id="same") == first  # a call made again after a lost reply
    task = await q.get(first)
    assert task is not None
    assert JsonCodec().decode(task.args) == {"n": 2}
    assert (await q.stats()).counts[Status.RUNNING] == 1  # handed once, to w1


async def test_a_worker_handed_its_tasks_makes_no_claim_of_its_own(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a handed task starts, a claim would find nothing (the push found nothing ready), and
    # the task's acknowledgement claims for its slot and lists the worker idle again: the worker
    # makes no claim of its own, one round trip less per lone task.
    monkeypatch.setattr(queue_module, "_LISTED_IDLE_WAIT", 30.0)  # no idle timer claims meanwhile
    q = store.backend("lone", codec=JsonCodec())
    claims = 0
    claim = store.scripts["claim"]

    async def counted(**kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await claim(**kwargs)

    store.scripts["claim"] = counted
    ran: list[str] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append(task.id)

    running = worker(q, handler, concurrency=4, poll_interval=30.0)
    wid = running.worker.context.id
    deadline = time.monotonic() + 10
    while await store.client.zscore(q.keys.idle, wid) is None:  # its first claim found nothing
        assert time.monotonic() < deadline, "the worker was never listed idle"
        await asyncio.sleep(0.01)
    before = claims
    pushed = []
    for n in range(10):
        pushed.append(await q.push({"n": n}))
        await until(lambda: len(ran) == len(pushed))
        while (await status_of(q, pushed[-1]))[0] is not Status.DONE:  # acknowledged: listed again
            assert time.monotonic() < deadline + 20, "never acknowledged"
            await asyncio.sleep(0.005)
    after = claims
    await running.stop()
    assert ran == pushed
    assert [(await status_of(q, task_id))[2] for task_id in pushed] == [1] * 10  # each handed once
    assert after - before == 0


async def test_a_task_made_ready_as_another_is_handed_over_starts_at_once(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker skips its claim after a handed task only when nothing woke the queue since: a
    # task pushed right after (not handed: the worker's listing had one slot left) wakes it,
    # even when both messages reach it in one read, and starts while the first still runs.
    monkeypatch.setattr(queue_module, "_LISTED_IDLE_WAIT", 30.0)  # only a wake-up can start it in time
    q = store.backend("pair", codec=JsonCodec())
    release = asyncio.Event()
    started: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.append(args["n"])
        if args["n"] == 1:
            await release.wait()

    running = worker(q, handler, concurrency=2, poll_interval=30.0)
    wid = running.worker.context.id
    deadline = time.monotonic() + 10
    while (listed := await store.client.zscore(q.keys.idle, wid)) is None:
        assert time.monotonic() < deadline, "the worker was never listed idle"
        await asyncio.sleep(0.01)
    # Listed for one of its two free slots (as an acknowledgement lists the slot its run freed).
    await store.client.zadd(q.keys.idle, {wid: listed - listed % 1000 + 1})

    async def push_both() -> list[str]:
        pusher = RedisStore.from_spec(
            StoreSpec(name="p", kind="redis", url=store.config.url, options={"namespace": store.config.namespace})
        )
        await pusher.open()
        try:
            other = pusher.backend("pair", codec=JsonCodec())
            return [await other.push({"n": 1}), await other.push({"n": 2})]
        finally:
            await pusher.close()

    # Pushed from another thread while this loop is blocked: both messages wait in the socket.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first, second = pool.submit(asyncio.run, push_both()).result(30)
    assert (await status_of(q, first))[:2] == (Status.RUNNING, running.worker.context.id)  # handed
    await until(lambda: started == [1, 2], within=5)
    release.set()
    await running.stop()
    assert (await status_of(q, second))[0] is Status.DONE


async def test_a_daemon_of_the_first_handing_format_and_this_one_never_read_each_others_listings(
    store: RedisStore,
) -> None:
    # During a rolling upgrade old and new daemons share a queue. The first format listed a worker
    # in `idle` scored by until_ms and kept one id per worker in `handed`: an old push read a new
    # listing (until_ms * 1000 + slots) as live for ever, handing tasks to dead workers, and wrote
    # one id over a worker's list of tasks on their way (which the heartbeat's grace against a
    # second run reads); a new push took an old listing for one past its time and dropped it.
    # Each format now has keys of its own (keys.HANDING_FORMAT).
    q = store.backend("upgrade", codec=JsonCodec())
    k = q.keys
    first_idle, first_handed = k.base + "idle", k.base + "handed"
    await list_idle(store, q, "new", limit=2)
    handed = await q.push({"n": 1})
    assert await status_of(q, handed) == (Status.RUNNING, "new", 1)
    # An old push finds no listing to hand to, and no list of this format to write over.
    assert await store.client.exists(first_idle, first_handed) == 0
    # An old worker's listing and the task on its way to it: a new push leaves them as they are.
    old_until = int((time.time() + 60) * 1000)
    await store.client.zadd(first_idle, {"old": old_until})
    await store.client.hset(first_handed, "old", "an-old-id")
    await store.client.zrem(k.idle, "new")
    plain = await q.push({"n": 2})
    assert await status_of(q, plain) == (Status.PENDING, None, 0)  # ready: the old worker is woken and claims it
    assert await store.client.zscore(first_idle, "old") == old_until
    assert await store.client.hget(first_handed, "old") == b"an-old-id"
    assert msgpack.unpackb(await store.client.hget(k.handed, "new")) == [handed]


async def test_a_heartbeat_drops_the_first_formats_entries_of_workers_gone(store: RedisStore) -> None:
    # The first format's `idle` and `handed` are read only by its own daemons; entries of its
    # workers that this format's sweep found stale stayed there for ever. A beat drops the entries
    # of workers no longer registered, and leaves a live old worker's as they are.
    q = store.backend("leftovers", codec=JsonCodec())
    k = q.keys
    first_idle, first_handed = k.earlier_handing
    until_ms = int((time.time() + 60) * 1000)
    await store.client.zadd(first_idle, {"gone": until_ms, "alive": until_ms})
    await store.client.hset(first_handed, mapping={"gone": "id-1", "alive": "id-2"})
    await store.client.zadd(k.workers, {"alive": time.time()})
    beat = q.heartbeat(WorkerContext(id="new", name="new", queue="leftovers"))
    await anext(beat)
    assert await store.client.zrange(first_idle, 0, -1) == [b"alive"]
    assert await store.client.hgetall(first_handed) == {b"alive": b"id-2"}
    await store.client.zrem(k.workers, "alive")  # it stopped: its farewell would have unregistered it
    await beat.aclose()  # type: ignore[attr-defined]
    await anext(beat2 := q.heartbeat(WorkerContext(id="new", name="new", queue="leftovers")))
    await beat2.aclose()  # type: ignore[attr-defined]
    assert await store.client.exists(first_idle, first_handed) == 0


@pytest.mark.parametrize("pushes", ["through", "stopping"], ids=["pushed-through", "idle-before-due"])
async def test_a_delayed_task_starts_near_its_time_while_tasks_are_handed_over(store: RedisStore, pushes: str) -> None:
    # A handed task starts in the pub/sub callback (ClaimsAhead.start) and does not wake the poll
    # stream, whose idle timer alone claims work nobody signals: a delayed task falling due. It
    # must start near its time while pushes keep handing tasks over (`through`), and when they
    # stop just before it is due (`stopping`: then only the timer of a worker idle between
    # handed tasks claims it).
    q = store.backend("due", codec=JsonCodec())
    started: dict[str, float] = {}

    async def handler(args: Any, task: Task[bytes]) -> None:
        started[task.id] = time.time()

    running = worker(q, handler, concurrency=2, poll_interval=1.0, keep_alive=0.5)
    wid = running.worker.context.id
    deadline = time.monotonic() + 10
    while await store.client.zscore(q.keys.idle, wid) is None:  # its first claim found nothing
        assert time.monotonic() < deadline, "the worker was never listed idle"
        await asyncio.sleep(0.01)
    holder = q._ahead.holder(wid)
    assert holder is not None
    at_once = 0
    start = holder.start

    def counted(task: Task[bytes]) -> bool:
        nonlocal at_once
        begun = start(task)
        at_once += begun
        return begun

    holder.start = counted
    delayed = await q.push({"delayed": True}, delay=1.5)
    got = await q.get(delayed)
    assert got is not None
    due = got.ctx.run_at
    until_due = due - 0.3 if pushes == "stopping" else due + 1.5
    pushed: list[str] = []
    while time.time() < until_due:
        pushed.append(await q.push({"n": len(pushed)}))
        await asyncio.sleep(0.05)
    await until(lambda: delayed in started and all(task_id in started for task_id in pushed), within=15)
    await running.stop()
    assert at_once >= len(pushed) // 2  # most of them handed over and started as they came
    assert started[delayed] - due < 2.5, f"started {started[delayed] - due:.2f} s after its time"
