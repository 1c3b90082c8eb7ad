"""Global limits (`scope = "global"`) on every store that holds them in its claim: several
workers together never pass a per-key limit, tasks over a limit wait unclaimed while other keys
run, a rate holds across workers, and a vanished worker's slots come back with its leases."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from apalis_cli.backend import Capability, WorkerContext
from apalis_cli.layers import ConcurrencyLayer, RateLimitLayer
from apalis_cli.task import Status, Task

from .conftest import Calls, Harness
from .controls import status_of


class Gauge:
    """Runs in flight per key, and the most ever seen at once."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    def handler(self, calls: Calls, hold: float | asyncio.Event = 0.05) -> Any:
        async def run(args: Any, task: Task[bytes]) -> None:
            key = args["account"]
            self.now[key] += 1
            self.most[key] = max(self.most[key], self.now[key])
            try:
                if isinstance(hold, asyncio.Event):
                    await hold.wait()
                else:
                    await asyncio.sleep(hold)
            finally:
                self.now[key] -= 1

        return calls.handler(run)


async def test_a_per_key_concurrency_holds_across_workers(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    for n in range(30):
        account = "abc"[n % 3]
        await backend.push({"account": account, "n": n}, limit_key=account)
    gauge = Gauge()
    limit = ConcurrencyLayer(2, scope="global", key="account")
    for name in ("w1", "w2", "w3"):
        await harness.worker(backend, gauge.handler(calls), name=name, concurrency=10, layers=[limit]).start()
    await harness.wait_until(lambda: len(calls.finished) >= 30, within=20, what="every task to run")

    assert dict(gauge.most) == {"a": 2, "b": 2, "c": 2}, "each key ran at its limit, never above it"
    assert sorted(c.args["n"] for c in calls.calls) == list(range(30)), "every task ran once"


async def test_tasks_over_a_limit_wait_unclaimed_while_other_keys_run(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    # The saturated key comes first in every order the store knows (pushed first, higher priority).
    hot = [await backend.push({"account": "hot", "n": n}, limit_key="hot", priority=5) for n in range(40)]
    for n in range(20):
        await backend.push({"account": f"c{n}", "n": n}, limit_key=f"c{n}")
    release = asyncio.Event()

    async def run(args: Any, task: Task[bytes]) -> None:
        if args["account"] == "hot":
            await release.wait()

    limit = ConcurrencyLayer(1, scope="global", key="account")
    worker = harness.worker(backend, calls.handler(run), concurrency=8, layers=[limit])
    await worker.start()
    await harness.wait_until(lambda: len(calls.finished) >= 20, what="every other key's task to run")

    assert Counter(c.args["account"] == "hot" for c in calls.calls) == {False: 20, True: 1}, (
        "one task of the saturated key runs; the others wait while every other key runs"
    )
    # Runs that returned are acknowledged in a batch just after: wait for that, not a sleep.
    await harness.wait_until(lambda: worker.worker.running == 1, what="the other keys' runs to be acknowledged")
    await asyncio.sleep(0.2)  # time enough to claim a second task of the saturated key, were it let
    assert worker.worker.running == 1, "the waiting tasks take no slot of the worker"
    if harness.store.capabilities.has(Capability.INSPECT):
        running = next(c.id for c in calls.calls if c.args["account"] == "hot")
        waiting = await harness.inspector(backend).list_tasks(Status.PENDING, limit=100)
        assert sorted(t.id for t in waiting) == sorted(set(hot) - {running}), "the rest of the key waits, pending"
    release.set()
    await harness.wait_until(lambda: len(calls.finished) >= 60, within=20, what="the saturated key to drain")
    assert len(set(calls.ids())) == 60, "every task ran once"


async def test_keys_take_fair_turns_whatever_their_order_in_the_queue(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    # Pushed key after key: a claim that took the queue's order (or any fixed order of the keys,
    # such as a hash's, from its start at every claim) would run a's and b's tasks to the end
    # before c, d and e had one.
    keys = "abcde"
    for account in keys:
        await backend.push_bulk([{"account": account, "n": n} for n in range(6)], limit_key=account)
    limit = ConcurrencyLayer(1, scope="global", key="account")
    started: list[str] = []

    async def run(args: Any, task: Task[bytes]) -> None:
        started.append(args["account"])
        await asyncio.sleep(0.02)

    await harness.worker(backend, calls.handler(run), concurrency=2, layers=[limit]).start()
    await harness.wait_until(lambda: len(calls.finished) >= 30, within=20, what="every task to run")

    assert set(started[:10]) == set(keys), f"every key had a turn in the first two rounds of turns: {started[:10]}"
    most_ahead = max(max(Counter(started[:n]).values()) - min(Counter(started[:n])[k] for k in keys) for n in (10, 20))
    assert most_ahead <= 2, f"no key ran ahead of another by more than two turns: {started}"


async def test_tasks_without_a_key_run_past_a_deep_backlog_of_a_key_at_its_limit(
    harness: Harness, calls: Calls
) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    # Ahead of everything else in the queue's order: far more tasks of the saturated key than
    # a claim reads at once, so stepping over them one claim at a time cannot find the rest.
    await backend.push_bulk([{"account": "hot", "n": n} for n in range(300)], limit_key="hot", priority=5)
    for n in range(3):
        await backend.push({"n": n})  # pushed by a producer that knows of no key
        await backend.push({"account": f"c{n}", "n": n}, limit_key=f"c{n}")
    release = asyncio.Event()

    async def run(args: Any, task: Task[bytes]) -> None:
        if args.get("account") == "hot":
            await release.wait()

    limit = ConcurrencyLayer(1, scope="global", key="account")
    await harness.worker(backend, calls.handler(run), concurrency=4, layers=[limit]).start()
    try:
        await harness.wait_until(lambda: len(calls.finished) >= 6, what="the tasks of no key and of other keys to run")
        ran = Counter(c.args.get("account", "-") for c in calls.calls)
        assert ran == {"hot": 1, "-": 3, "c0": 1, "c1": 1, "c2": 1}, "one of the saturated key, all the others"
    finally:
        release.set()


async def test_a_queue_wide_rate_holds_across_workers(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    await backend.push_bulk([{"account": "x", "n": n} for n in range(40)])
    limit = RateLimitLayer(20, 1.0, scope="global")
    start = time.time()
    for name in ("w1", "w2"):
        await harness.worker(backend, calls.handler(), name=name, concurrency=20, layers=[limit]).start()
    await harness.wait_until(lambda: len(calls.finished) >= 40, within=20, what="every task to run")

    starts = sorted(c.at for c in calls.calls)
    for i, at in enumerate(starts):
        # A burst of `rate`, then `rate` per second: the (i+1)th start is no earlier than that allows.
        assert i + 1 <= 20 + 20 * (at - start) + 1, f"start {i + 1} came {at - start:.2f}s in: over 20/s"
    assert starts[-1] - start >= 0.9, "40 starts at 20/s with a burst of 20 take about a second"


async def test_a_queue_wide_rate_holds_beside_a_per_key_concurrency(harness: Harness, calls: Calls) -> None:
    """ "At most 20 calls a second to the API, one import per customer at a time": the rate is
    the queue's, the concurrency each key's, and every claim spends the rate."""
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    for n in range(40):
        await backend.push({"account": f"k{n}", "n": n}, limit_key=f"k{n}")
    layers: list[Any] = [RateLimitLayer(20, 1.0, scope="global"), ConcurrencyLayer(1, scope="global", key="account")]
    start = time.time()
    for name in ("w1", "w2"):
        await harness.worker(backend, calls.handler(), name=name, concurrency=20, layers=layers).start()
    await harness.wait_until(lambda: len(calls.finished) >= 40, within=20, what="every task to run")

    starts = sorted(c.at for c in calls.calls)
    for i, at in enumerate(starts):
        assert i + 1 <= 20 + 20 * (at - start) + 1, f"start {i + 1} came {at - start:.2f}s in: over 20/s"
    assert starts[-1] - start >= 0.9, "40 starts at 20/s with a burst of 20 take about a second"


async def test_a_per_key_rate_holds_and_other_keys_keep_theirs(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    for n in range(30):
        await backend.push({"account": "slow", "n": n}, limit_key="slow")
    for n in range(30):
        await backend.push({"account": f"k{n}", "n": n}, limit_key=f"k{n}")
    limit = RateLimitLayer(5, 1.0, scope="global", key="account")
    start = time.time()
    for name in ("w1", "w2"):
        await harness.worker(backend, calls.handler(), name=name, concurrency=10, layers=[limit]).start()
    await harness.wait_until(
        lambda: sum(1 for c in calls.calls if c.args["account"] != "slow") >= 30, what="the other keys to run"
    )
    others_done = time.time() - start
    await asyncio.sleep(max(0.0, 1.0 - others_done))
    slow = [c.at - start for c in calls.calls if c.args["account"] == "slow"]
    assert others_done < 1.0, f"keys under their rate ran at once ({others_done:.2f}s), not behind the slow key"
    assert 5 <= len(slow) <= 5 + 5 * (max(slow) + 0.05), f"the slow key kept to 5/s: {len(slow)} starts"


async def test_a_vanished_workers_slots_come_back_with_its_leases(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS, Capability.ORPHANS)
    backend = harness.backend(max_attempts=3)
    first = await backend.push({"account": "a", "n": 0}, limit_key="a")
    second = await backend.push({"account": "a", "n": 1}, limit_key="a")
    limit = ConcurrencyLayer(1, scope="global", key="account")
    from apalis_cli.fleet import fleet_limits

    ghost = WorkerContext(
        id=f"ghost-{time.monotonic_ns()}",
        name="ghost",
        queue=backend.get_queue(),
        concurrency=2,
        keep_alive=0.1,
        stale_after=0.4,
        poll_interval=0.05,
        free_slots=lambda: 2,
        limits=fleet_limits([limit]),
    )
    heartbeat = backend.heartbeat(ghost)
    last_beat = time.time()  # the ghost's one beat is no earlier than this
    await anext(heartbeat)
    stream = backend.poll_compact(ghost)
    try:
        async with asyncio.timeout(10):
            claimed = await anext(stream)
            while claimed is None:
                claimed = await anext(stream)
        assert claimed.id == first
        # The ghost holds the key's one slot and stops beating: a live worker waits, then runs both.
        rescuer = harness.worker(backend, calls.handler(), name="rescuer", stale_after=0.4, layers=[limit])
        await rescuer.start()
        await harness.wait_until(lambda: len(calls.finished) >= 2, what="the key's slot to come back")
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await heartbeat.aclose()  # type: ignore[attr-defined]
    assert sorted(calls.ids()) == sorted([first, second])
    # Not before the ghost's lease went stale (stale_after 0.4 s after its last beat).
    assert min(c.at for c in calls.calls) >= last_beat + 0.4 - 0.05, "the slot came back with the lease, not before"


async def test_a_store_without_global_limits_refuses_them(harness: Harness, calls: Calls) -> None:
    if harness.store.capabilities.has(Capability.FLEET_LIMITS):
        return
    from apalis_cli.errors import Unsupported

    backend = harness.backend()
    with pytest.raises(Unsupported, match="cannot hold a global limit"):
        harness.worker(backend, calls.handler(), layers=[ConcurrencyLayer(1, scope="global")])


async def test_a_paused_queue_hands_out_nothing_to_a_limited_worker(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS, Capability.PAUSE)
    from apalis_cli.control import Pausable

    backend = harness.backend()
    assert isinstance(backend, Pausable)
    await backend.pause()
    for n in range(3):
        await backend.push({"account": f"a{n}", "n": n}, limit_key=f"a{n}")
    limit = ConcurrencyLayer(1, scope="global", key="account")
    await harness.worker(backend, calls.handler(), concurrency=3, layers=[limit]).start()
    await asyncio.sleep(0.3)
    assert calls.calls == [], "a paused queue's limited claim hands out nothing"
    await backend.resume()
    await harness.wait_until(lambda: len(calls.finished) == 3, what="the tasks to run once resumed")


async def test_a_task_waiting_over_a_limit_can_be_cancelled_and_is_counted_as_pending(
    harness: Harness, calls: Calls
) -> None:
    harness.require(Capability.FLEET_LIMITS, Capability.CANCEL, Capability.INSPECT)
    from apalis_cli.control import Canceller

    backend = harness.backend()
    assert isinstance(backend, Canceller)
    release = asyncio.Event()

    async def run(args: Any, task: Task[bytes]) -> None:
        if args["n"] == 0:
            await release.wait()

    ids = [await backend.push({"account": "a", "n": n}, limit_key="a") for n in range(3)]
    limit = ConcurrencyLayer(1, scope="global", key="account")
    await harness.worker(backend, calls.handler(run), concurrency=3, layers=[limit]).start()
    await harness.wait_until(lambda: len(calls.calls) == 1, what="the key's first task to start")
    await asyncio.sleep(0.2)  # claims pass the key over meanwhile (a store may set its tasks aside)
    inspector = harness.inspector(backend)
    assert (await inspector.stats()).counts[Status.PENDING] == 2, "the tasks over the limit wait, pending"
    await backend.cancel(ids[1], "not needed")
    assert (await inspector.stats()).counts[Status.PENDING] == 1, "a cancelled task no longer waits"
    release.set()
    await harness.wait_until(lambda: len(calls.finished) == 2, what="the key's other task to run")
    await asyncio.sleep(0.2)
    assert sorted(c.id for c in calls.calls) == sorted([ids[0], ids[2]]), "the cancelled task never started"


async def test_a_keys_next_task_starts_when_its_slot_frees_not_a_poll_later(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    for n in range(4):
        await backend.push({"account": "a", "n": n}, limit_key="a")
    gauge = Gauge()
    limit = ConcurrencyLayer(1, scope="global", key="account")
    # A poll an hour apart: only the end of a run can start the key's next task in time.
    worker = harness.worker(backend, gauge.handler(calls), concurrency=4, layers=[limit], poll_interval=3600)
    await worker.start()
    await harness.wait_until(lambda: len(calls.finished) >= 4, within=20, what="the key's tasks one after another")

    assert gauge.most["a"] == 1, "one at a time"
    assert [c.args["n"] for c in calls.calls] == [0, 1, 2, 3], "in the order they were pushed"


async def test_a_keys_due_task_starts_while_its_first_by_priority_is_not_due(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.FLEET_LIMITS)
    backend = harness.backend()
    # The key's first task in its own order (priority first) waits for a minute: the claim must
    # look past it to the key's task that is due, not take the key as having nothing to run.
    later = await backend.push({"account": "a", "n": 0}, limit_key="a", priority=5, delay=60)
    for n in range(1, 4):
        await backend.push({"account": "abc"[n - 1], "n": n}, limit_key="abc"[n - 1])
    limit = ConcurrencyLayer(1, scope="global", key="account")
    await harness.worker(backend, calls.handler(), concurrency=4, layers=[limit]).start()
    await harness.wait_until(lambda: len(calls.finished) >= 3, what="the due task of every key to run")

    assert sorted(c.args["n"] for c in calls.calls) == [1, 2, 3], "each key's due task ran, none early"
    assert await status_of(harness, backend, later) in (Status.PENDING, None), "the delayed one still waits"
