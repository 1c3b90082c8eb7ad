"""Redis global limits: what a limit keeps in the store lasts no longer than it carries anything,
and a task with a limit key waits in its key's line (lua/lines.lua), out of the ready set, yet
every task is started in order, seen, counted and acted on (the contract itself is
proven on every store in tests/conformance/test_limits.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from apalis_cli.browsing import TaskSearch
from apalis_cli.codec import JsonCodec
from apalis_cli.control import BulkAction, BulkFilter
from apalis_cli.layers import ConcurrencyLayer, RateLimitLayer
from apalis_cli.layers.retry import Backoff
from apalis_cli.sink import new_task
from apalis_cli.task import Status, Task
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
        # A large COUNT: with SCAN's default of 10 keys a call, walking a shared server that holds
        # other tests' keys can outlast the half-second window whose state this reads.
        return [key async for key in client.scan_iter(match=f"{base}rate*", count=10_000)]

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


async def _run_all(backend: Any, handler: Any, count: int, **settings: Any) -> None:
    """Run a worker until `handler` has been called `count` times."""
    calls: list[Any] = []

    async def counted(args: Any, task: Task[bytes]) -> None:
        calls.append(args)
        await handler(args, task)

    stop = asyncio.Event()
    worker = Worker(name="w", backend=backend, handler=counted, keep_alive=0.1, poll_interval=0.05, **settings)
    running = asyncio.create_task(worker.run(stop))
    try:
        deadline = time.monotonic() + 20
        while len(calls) < count:
            assert time.monotonic() < deadline, f"timed out: {len(calls)} of {count} tasks ran"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await running


async def test_a_keys_backlog_waits_in_its_line_and_order_holds_across_keys(store: RedisStore) -> None:
    backend = store.backend("lines", codec=JsonCodec())
    base = backend.keys.base
    pushed = [("a", 0), ("a", 0), ("b", 0), ("a", 9), ("c", 5), ("b", 9), ("c", 0)]
    for n, (account, priority) in enumerate(pushed):
        await backend.push({"account": account, "n": n}, limit_key=account, priority=priority)
    for n in range(500):
        await backend.push({"account": "hot", "n": 100 + n}, limit_key="hot", priority=-1)
    assert await store.client.zcard(base + "ready") == 0, "tasks with a limit key wait in their lines"
    assert await store.client.zcard(base + "heads") == 4, "the claim meets one entry per key"
    assert (await backend.stats()).counts[Status.PENDING] == 507, "every waiting task is counted"

    order: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        order.append(args["n"])

    limit = ConcurrencyLayer(2, scope="global", key="account")
    await _run_all(backend, handler, 507, layers=[limit], concurrency=1)
    # One at a time: priority first, across keys and whatever their lines. Within a priority keys
    # take turns (conformance: test_keys_take_fair_turns_whatever_their_order_in_the_queue), to
    # the millisecond of the claim that gave a key its turn (a tie goes by the keys' names), so
    # the order of a, b and c at priority 0 depends on when the claims ran; within a key, the
    # order of pushing.
    assert order[:3] == [3, 5, 4]
    assert sorted(order[3:7]) == [0, 1, 2, 6]
    assert order.index(0) < order.index(1), "a's tasks of one priority in the order they were pushed"
    assert order[7:] == list(range(100, 600))
    left = [key async for key in store.client.scan_iter(match=f"{base}kp:*")]
    assert left == [], "the lines are gone"
    assert not await store.client.exists(base + "heads", base + "parked"), "and the keys' lists with them"


@pytest.mark.parametrize("others_below", [0, 70], ids=["read-at-once", "looked-up"])
async def test_a_keys_task_below_priority_0_waits_for_the_others_of_priority_0(
    store: RedisStore, others_below: int
) -> None:
    # After a key gives a task of priority 0, the claim lists it again at priority 0 without
    # reading its next task's score, unless the key is among those with a task below 0 (the set
    # `below`, lines.lua: read whole by each claim up to 64 keys, a key looked up past that).
    # Here a's next task is of priority -1: b's, pushed after a's first started (so listed after
    # a's turn, were a listed at priority 0), must run before it.
    backend = store.backend(f"below{others_below}", codec=JsonCodec())
    await backend.push({"account": "a", "n": "a0"}, limit_key="a")
    await backend.push({"account": "a", "n": "a-1"}, limit_key="a", priority=-1)
    for n in range(others_below):
        await backend.push({"account": f"o{n}", "n": f"o{n}"}, limit_key=f"o{n}", priority=-1)
    order: list[str] = []
    first_started, release, all_ran = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        order.append(args["n"])
        if len(order) == 3 + others_below:
            all_ran.set()
        if args["n"] == "a0":
            first_started.set()
            await release.wait()

    stop = asyncio.Event()
    limit = ConcurrencyLayer(1, scope="global", key="account")
    worker = Worker(
        name="w", backend=backend, handler=handler, layers=[limit], concurrency=1, keep_alive=0.1, poll_interval=0.05
    )
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(10):
            await first_started.wait()
            await asyncio.sleep(0.01)  # b's push comes after the claim that gave a its turn, in ms
            await backend.push({"account": "b", "n": "b0"}, limit_key="b")
            release.set()
            await all_ran.wait()
    finally:
        release.set()
        stop.set()
        await running
    assert order[:2] == ["a0", "b0"], "priority 0 before -1, across keys"
    assert sorted(order[2:]) == sorted(["a-1", *(f"o{n}" for n in range(others_below))])
    assert not await store.client.exists(backend.keys.base + "below"), "the key leaves the set with its last task"


async def test_every_task_of_a_line_is_listed_browsed_and_acted_on(store: RedisStore) -> None:
    backend = store.backend("acted", codec=JsonCodec())
    ids = [await backend.push({"account": "abc"[n % 3], "n": n}, limit_key="abc"[n % 3]) for n in range(30)]
    assert len(await backend.list_tasks(Status.PENDING, limit=100)) == 30
    page = await backend.browse_page(TaskSearch(status=Status.PENDING), limit=100)
    assert sorted(t.id for t in page.tasks) == sorted(ids), "a page of pending tasks holds the lines' too"
    assert await backend.cancel(ids[0], "head") is not None  # a line's head: the next one leads
    assert await backend.bulk(BulkAction.CANCEL, BulkFilter(statuses=frozenset({Status.PENDING}), limit=10)) == 10
    assert (await backend.stats()).counts[Status.PENDING] == 19
    assert await backend.bulk(BulkAction.CANCEL, BulkFilter(statuses=frozenset({Status.PENDING}))) == 19
    assert (await backend.stats()).counts[Status.CANCELLED] == 30
    assert await backend.bulk(BulkAction.RETRY, BulkFilter(statuses=frozenset({Status.CANCELLED}))) == 30
    assert (await backend.stats()).counts[Status.PENDING] == 30, "retried tasks join their lines again"

    ran: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append(args["n"])

    limit = ConcurrencyLayer(1, scope="global", key="account")
    await _run_all(backend, handler, 30, layers=[limit], concurrency=5)
    assert sorted(ran) == list(range(30))


async def test_a_worker_without_limits_runs_every_task_of_the_lines(store: RedisStore) -> None:
    backend = store.backend("unlimited", codec=JsonCodec())
    for n in range(20):
        await backend.push({"account": "ab"[n % 2], "n": n}, limit_key="ab"[n % 2])
    await backend.push({"account": "a", "n": 20}, limit_key="a", delay=0.2)  # joins its line when due
    ran: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append(args["n"])

    await _run_all(backend, handler, 21, concurrency=4)
    assert sorted(ran) == list(range(21))


async def test_a_worker_without_limits_takes_keyed_tasks_by_priority_among_its_ready_backlog(
    store: RedisStore,
) -> None:
    # Fewer lined tasks than the ready set holds are added to it one by one (claiming.lua's
    # unpark): each keeps its score, so the keyed tasks of a higher priority run first.
    backend = store.backend("unlimited-backlog", codec=JsonCodec())
    for n in range(30):
        await backend.push({"n": n})
    for n in range(30, 33):
        await backend.push({"account": "a", "n": n}, limit_key="a", priority=5)
    ran: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append(args["n"])

    await _run_all(backend, handler, 33, concurrency=1)
    assert ran[:3] == [30, 31, 32], "the keyed tasks of priority 5 first, in push order"
    assert sorted(ran) == list(range(33))


@pytest.mark.parametrize(("keyed", "keyless"), [(3, 30), (30, 3)])
async def test_a_worker_without_limits_takes_the_lines_tasks_in_their_place_in_time(
    store: RedisStore, keyed: int, keyless: int
) -> None:
    # The lines are scored in whole milliseconds, the ready set in seconds: the lines' tasks go
    # back into it converted, added one by one (fewer than it holds) or merged (more), and keep
    # their place among tasks pushed after them.
    backend = store.backend(f"unlimited-time-{keyed}", codec=JsonCodec())
    for n in range(keyed):
        await backend.push({"account": "ab"[n % 2], "n": n}, limit_key="ab"[n % 2])
    await asyncio.sleep(0.01)
    for n in range(keyed, keyed + keyless):
        await backend.push({"n": n})
    ran: list[int] = []

    async def handler(args: Any, task: Task[bytes]) -> None:
        ran.append(args["n"])

    await _run_all(backend, handler, keyed + keyless, concurrency=1)
    assert ran == list(range(keyed + keyless)), "every task in the order it was pushed"


async def test_a_delayed_or_retried_task_joins_its_keys_line_when_due(store: RedisStore) -> None:
    backend = store.backend("due", codec=JsonCodec())
    for n in range(4):
        await backend.push({"account": "a", "n": n}, limit_key="a", delay=0.1 * n, max_attempts=2)
    ran: list[int] = []
    most, now = 0, 0

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal most, now
        now += 1
        most = max(most, now)
        try:
            ran.append(args["n"])
            if args["n"] == 1 and task.ctx.attempts == 1:
                raise RuntimeError("once more")
            await asyncio.sleep(0.05)
        finally:
            now -= 1

    limit = ConcurrencyLayer(1, scope="global", key="account")
    backoff = Backoff(kind="constant", base=0.05, max=0.05, jitter=False)
    await _run_all(backend, handler, 5, layers=[limit], concurrency=4, backoff=backoff)
    assert sorted(ran) == [0, 1, 1, 2, 3], "every task ran, the failed one twice"
    assert most == 1, "one at a time"


async def test_many_keys_at_their_limit_at_once_each_run_one_at_a_time(store: RedisStore) -> None:
    # More keys at their limit than a claim passes over (limited.lua's PASS_OVER): the
    # ones past that are parked, and come back when their slot frees.
    backend = store.backend("parked", codec=JsonCodec())
    accounts = [f"acct-{n}" for n in range(150)]
    for round_ in range(3):
        for account in accounts:
            await backend.push({"account": account, "n": round_}, limit_key=account)
    now: dict[str, int] = {}
    most, parked, ran = 0, 0, set()

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal most, parked
        ran.add(task.id)
        account = args["account"]
        now[account] = now.get(account, 0) + 1
        most = max(most, now[account])
        try:
            parked = max(parked, await store.client.zcard(backend.keys.base + "parked"))
            await asyncio.sleep(0.02)
        finally:
            now[account] -= 1

    limit = ConcurrencyLayer(1, scope="global", key="account")
    await _run_all(backend, handler, 450, layers=[limit], concurrency=200)
    assert parked > 0, "keys past those a claim passes over were parked"
    assert most == 1, "never two tasks of one key at once"
    assert len(ran) == 450, "every task ran once"


async def test_a_busy_limited_worker_claims_with_the_acknowledgements_of_its_runs(store: RedisStore) -> None:
    # Its next claim rides on the call that acknowledges its runs (ack.lua as ack_limited), as a
    # worker's without limits does: one round trip per batch, not two; and the limit holds.
    backend = store.backend("carried", codec=JsonCodec())
    accounts = [f"acct-{n}" for n in range(40)]
    await backend.enqueue(
        [
            new_task(JsonCodec().encode({"account": account}), default_max_attempts=1, limit_key=account)
            for _ in range(10)
            for account in accounts
        ]
    )
    scripts = store.connection.scripts
    calls = {"claim_limited": 0, "ack_limited": 0}

    def counted(name: str) -> Any:
        script = scripts[name]

        async def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return await script(*args, **kwargs)

        return call

    for name in calls:
        if name in scripts:
            scripts[name] = counted(name)
    now: dict[str, int] = {}
    most = 0

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal most
        account = args["account"]
        now[account] = now.get(account, 0) + 1
        most = max(most, now[account])
        await asyncio.sleep(0.002)
        now[account] -= 1

    limit = ConcurrencyLayer(1, scope="global", key="account")
    await _run_all(backend, handler, 400, layers=[limit], concurrency=20)
    assert most == 1, "never two tasks of one key at once"
    assert calls["ack_limited"] > 10, f"the acknowledgements claimed: {calls}"
    assert calls["claim_limited"] < calls["ack_limited"] / 2, f"few claims of its own: {calls}"
