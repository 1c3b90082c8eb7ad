"""Global limits and unique jobs, apart from any store: the config's layers, the rate's arithmetic,
the keyed claim's turns, the key taken from a task's arguments, and the unique option."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.config import load_config
from apalis_cli.errors import ConfigError, UsageError
from apalis_cli.fleet import FleetLimits, allowance, claim_round, spend, unique_from
from apalis_cli.fleet.claim import Turn, Turned, claim_round_async
from apalis_cli.fleet.keys import key_of
from apalis_cli.layers import ConcurrencyLayer, RateLimitLayer
from apalis_cli.service import Outcome
from apalis_cli.task import Status, Task

WORKER = """\
[backends.mem]
kind = "memory"

[[workers]]
name = "imports"
handler = "apalis_cli.demo:resize_image"
middleware = [
{layers}
]
"""


def config_with(tmp_path: Path, layers: str) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(WORKER.format(layers=layers))
    return path


def test_global_layers_become_the_workers_fleet_limits(tmp_path: Path) -> None:
    path = config_with(
        tmp_path,
        '  { kind = "concurrency", limit = 1, scope = "global", key = "customer_id" },\n'
        '  { kind = "rate_limit", rate = 100, per = "1m", scope = "global" },',
    )
    worker = load_config(path).worker("imports")
    assert worker.limits == FleetLimits(key="customer_id", concurrency=1, keyed_concurrency=True, rate=100, per=60.0)
    assert [repr(layer) for layer in worker.middleware] == [
        "concurrency(1, global, key=customer_id)",
        "rate_limit(100/1m, global)",
    ]


def test_local_layers_are_no_fleet_limits(tmp_path: Path) -> None:
    path = config_with(tmp_path, '  { kind = "concurrency", limit = 2 },')
    assert load_config(path).worker("imports").limits is None


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ('  { kind = "concurrency", limit = 1, key = "id" },', 'a key needs scope = "global"'),
        ('  { kind = "concurrency", limit = 1, scope = "fleet" },', "expected one of local, global"),
        ('  { kind = "rate_limit", rate = 1, scope = "global", key = "" },', "must not be empty"),
        (
            '  { kind = "concurrency", limit = 1, scope = "global" },\n'
            '  { kind = "concurrency", limit = 2, scope = "global" },',
            'one global "concurrency" layer',
        ),
        (
            '  { kind = "concurrency", limit = 1, scope = "global", key = "a" },\n'
            '  { kind = "rate_limit", rate = 2, scope = "global", key = "b" },',
            "share one key, got a and b",
        ),
    ],
)
def test_a_bad_global_limit_is_a_config_error_at_its_line(tmp_path: Path, layers: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(config_with(tmp_path, layers))
    assert caught.value.where is not None
    assert ":" in caught.value.where, "the error names the file and line"


async def test_a_global_layer_lets_every_run_through_locally() -> None:
    async def inner(task: Task[Any]) -> Outcome:
        return Outcome.done(None)

    for layer in (ConcurrencyLayer(1, scope="global"), RateLimitLayer(1, 60.0, scope="global", key="k")):
        assert layer(inner) is inner, "the store's claim holds a global limit, not the process"


def test_a_rate_allows_a_burst_then_rate_per_period() -> None:
    rate, per, now, tat = 10, 1.0, 1000.0, None
    started: list[float] = []
    while now < 1005.0:
        n = allowance(tat, now, rate, per)
        if n:
            tat = spend(tat, now, n, rate, per)
            started.extend([now] * n)
        now += 0.013
    assert len([t for t in started if t == 1000.0]) == 10, "a full burst at first"
    for i, at in enumerate(started):
        assert i + 1 <= rate + rate * (at - 1000.0) / per + 1e-6, "never ahead of rate per period"
    assert 59 <= len(started) <= 60, "five seconds at 10/s after a burst of 10"


class Keys:
    """Waiting tasks by key, with the callbacks a limited claim takes."""

    def __init__(self, ready: dict[str, int]) -> None:
        self.ready = ready
        self.taken: list[str] = []

    def keys_after(self, after: str | None, count: int) -> list[str]:
        return [k for k in sorted(self.ready) if self.ready[k] and (after is None or k > after)][:count]

    def take_heads(self, keys: Sequence[str]) -> dict[str, int]:
        for key in keys:
            self.ready[key] -= 1
            self.taken.append(key)
        return dict.fromkeys(keys, 1)

    def take(self, key: str | None, n: int) -> int:
        return 0

    def turn(self, ask: Turn, rates: dict[str, float]) -> Turned:
        """A `Turn` as a store answers it: walk, pass over the keys without room, take heads."""
        taken: list[str] = []
        seen, last, wake_tat = 0, None, None
        for key in self.keys_after(ask.after, len(self.ready)):
            if (ask.upto is not None and key > ask.upto) or seen == ask.scan or len(taken) == ask.count:
                break
            seen, last = seen + 1, key
            tat = rates.get(f"k:{key}")
            if ask.ahead is not None and tat is not None and tat - ask.now >= ask.ahead:
                wake_tat = tat if wake_tat is None else min(wake_tat, tat)
            elif key not in ask.blocked:
                taken.extend(self.take_heads([key]))
        ended = len(taken) < ask.count and seen < ask.scan
        return Turned(taken=taken, seen=seen, last=last, ended=ended, wake_tat=wake_tat)


def _in_turns(
    keys: Keys,
    limits: FleetLimits,
    want: int,
    now: float,
    running: dict[str | None, int],
    rates: dict[str, float],
    after: str | None = None,
) -> Any:
    """`claim_round_async` with keys taking turns through `Turn` (as PostgreSQL claims)."""

    async def no_keys(after: str | None, count: int) -> list[str]:
        raise AssertionError("a store that walks in turns is not asked for keys")

    async def no_heads(keys: Sequence[str]) -> dict[str, int]:
        raise AssertionError("a store that walks in turns is not asked for heads")

    async def take(key: str | None, n: int) -> int:
        return 0

    async def turn(ask: Turn) -> Turned:
        return keys.turn(ask, rates)

    return asyncio.run(
        claim_round_async(
            limits,
            want,
            now,
            running=running,
            rates=rates,
            keys_after=no_keys,
            take_heads=no_heads,
            take=take,
            after=after,
            turn=turn,
        )
    )


def test_keys_take_turns_and_a_key_at_its_limit_is_passed_over() -> None:
    keys = Keys({"a": 5, "b": 5, "c": 5})
    limits = FleetLimits(key="account", concurrency=2, keyed_concurrency=True)
    first = claim_round(
        limits,
        3,
        0.0,
        running={"a": 2},
        rates={},
        keys_after=keys.keys_after,
        take_heads=keys.take_heads,
        take=keys.take,
    )
    assert keys.taken == ["b", "c", "b"], "a is full; b and c take turns; b again for the last slot"
    assert (first.claimed, first.after) == (3, "b")
    keys.taken.clear()
    claim_round(
        limits,
        2,
        0.0,
        running={"a": 1, "b": 2, "c": 1},
        rates={},
        keys_after=keys.keys_after,
        take_heads=keys.take_heads,
        take=keys.take,
        after="b",
    )
    assert keys.taken == ["c", "a"], "the next claim starts after b, comes round to a, passes over b"


def test_keys_taking_turns_in_one_statement_take_the_same_tasks() -> None:
    keys = Keys({"a": 5, "b": 5, "c": 5})
    limits = FleetLimits(key="account", concurrency=2, keyed_concurrency=True)
    first = _in_turns(keys, limits, 3, 0.0, {"a": 2}, {})
    assert keys.taken == ["b", "c", "b"], "a is full; b and c take turns; b again for the last slot"
    assert (first.claimed, first.after) == (3, "b")
    keys.taken.clear()
    _in_turns(keys, limits, 2, 0.0, {"a": 1, "b": 2, "c": 1}, {}, after="b")
    assert keys.taken == ["c", "a"], "the next claim starts after b, comes round to a, passes over b"


def test_a_sync_store_answering_turns_takes_the_same_tasks() -> None:
    keys = Keys({"a": 5, "b": 5, "c": 5})
    limits = FleetLimits(key="account", concurrency=2, keyed_concurrency=True)

    def no_keys(after: str | None, count: int) -> list[str]:
        raise AssertionError("a store that walks in turns is not asked for keys")

    def no_heads(names: Sequence[str]) -> dict[str, int]:
        raise AssertionError("a store that walks in turns is not asked for heads")

    def claim(want: int, running: dict[str | None, int], after: str | None) -> Any:
        return claim_round(
            limits,
            want,
            0.0,
            running=running,
            rates={},
            keys_after=no_keys,
            take_heads=no_heads,
            take=keys.take,
            after=after,
            turn=lambda ask: keys.turn(ask, {}),
        )

    first = claim(3, {"a": 2}, None)
    assert keys.taken == ["b", "c", "b"], "a is full; b and c take turns; b again for the last slot"
    assert (first.claimed, first.after) == (3, "b")
    keys.taken.clear()
    claim(2, {"a": 1, "b": 2, "c": 1}, "b")
    assert keys.taken == ["c", "a"], "the next claim starts after b, comes round to a, passes over b"


def test_a_keyed_rate_in_turns_holds_and_says_when_to_claim_again() -> None:
    keys = Keys({"a": 5, "b": 5})
    limits = FleetLimits(key="k", rate=2, per=1.0, keyed_rate=True)
    done = _in_turns(keys, limits, 10, 100.0, {}, {"k:a": 100.9})
    assert keys.taken == ["b", "b"], "a is out of rate by its stored state; b takes its burst of 2 and no more"
    assert done.claimed == 2
    assert done.rates["k:b"] == pytest.approx(101.0), "b's state moved by its two starts"
    assert done.wake_at == pytest.approx(100.4), "a's next start is due at 100.4"


def test_a_keyed_rate_says_when_to_claim_again() -> None:
    keys = Keys({"a": 5})
    limits = FleetLimits(key="k", rate=2, per=1.0, keyed_rate=True)
    done = claim_round(
        limits,
        10,
        100.0,
        running={},
        rates={"k:a": 100.9},
        keys_after=keys.keys_after,
        take_heads=keys.take_heads,
        take=keys.take,
    )
    assert done.claimed == 0
    assert done.wake_at == pytest.approx(100.4), "a's next start is due at 100.4"


def test_a_queue_wide_rate_beside_a_keyed_concurrency_is_spent_by_each_claim() -> None:
    keys = Keys({f"k{n:02}": 1 for n in range(40)})
    limits = FleetLimits(key="account", concurrency=1, keyed_concurrency=True, rate=10, per=1.0)
    rates: dict[str, float] = {}
    claimed = []
    for _ in range(3):  # three claims at one instant: one burst between them
        done = claim_round(
            limits,
            50,
            100.0,
            running={},
            rates=rates,
            keys_after=keys.keys_after,
            take_heads=keys.take_heads,
            take=keys.take,
        )
        rates.update(done.rates)
        claimed.append(done.claimed)
    assert claimed == [10, 0, 0], "the burst of 10, then nothing until the rate allows"
    assert rates["*"] == pytest.approx(101.0), "the queue's state moved by the ten starts"


def test_the_key_comes_from_the_arguments() -> None:
    assert key_of({"account_id": 42}, "account_id") == "42"
    assert key_of({"customer": {"id": "c-7"}}, "customer.id") == "c-7"
    assert key_of({"other": 1}, "account_id") == "", "tasks without the key share one key of their own"
    assert key_of([1, 2], "account_id") == ""


def test_the_unique_option() -> None:
    unique = unique_from({"key": "k", "period": "10m", "states": "pending,running"}, now=1000.0)
    assert unique.until == 1600.0
    assert unique.states == frozenset({Status.PENDING, Status.RUNNING})
    assert unique.on_conflict == "skip"
    assert unique_from({"key": "k"}).until is None, "without a period the window has no end"
    with pytest.raises(UsageError, match="unique period must be more than 0"):
        unique_from({"key": "k", "period": 0})


def test_the_readmes_fleet_examples_load(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Limits across the fleet") :]
    block = section[section.index("```toml\n") + len("```toml\n") : section.index("```\n", section.index("```toml"))]
    path = tmp_path / "jobs.toml"
    path.write_text('[backends.main]\nkind = "memory"\n\n' + block.replace("myapp.jobs:", "apalis_cli.demo:x_"))
    config = load_config(path)
    assert str(config.worker("geocode").limits) == "rate 100/1s"
    assert str(config.worker("imports").limits) == "concurrency 1 per customer_id, rate 20/1m per customer_id"


async def test_the_boards_push_stores_the_tasks_limit_key(tmp_path: Path) -> None:
    from apalis_cli.memory import MemoryQueue, MemoryStore
    from apalis_cli.web.board import Board
    from apalis_cli.web.ops import PushRequest, push

    path = config_with(tmp_path, '  { kind = "concurrency", limit = 1, scope = "global", key = "customer.id" },')
    store = MemoryStore()
    board = Board(load_config(path), lent={"mem": store})
    view = board.find_view("imports")
    assert view is not None
    task_id = await push(view, PushRequest(args={"customer": {"id": 7}}))
    queue = view.backend
    assert isinstance(queue, MemoryQueue)
    assert queue._state.rows[task_id].limit_key == "7", "the key is taken from the pushed arguments"


async def test_the_memory_stores_ready_heap_does_not_keep_what_limited_workers_claimed() -> None:
    import asyncio

    from apalis_cli.codec import JsonCodec
    from apalis_cli.memory import MemoryQueue, MemoryStore
    from apalis_cli.worker import Worker

    queue = MemoryStore().backend("limited", codec=JsonCodec())
    assert isinstance(queue, MemoryQueue)
    for n in range(600):
        await queue.push({"account": f"a{n % 7}", "n": n}, limit_key=f"a{n % 7}")
    done = asyncio.Event()
    ran = 0

    async def handler(args: Any, task: Task[bytes]) -> None:
        nonlocal ran
        ran += 1
        if ran == 600:
            done.set()

    stop = asyncio.Event()
    limit = ConcurrencyLayer(2, scope="global", key="account")
    worker = Worker(name="w", backend=queue, handler=handler, concurrency=10, layers=[limit], poll_interval=0.01)
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(done.wait(), 20)
    finally:
        stop.set()
        await running
    assert len(queue._state.ready) <= 10, "the heap holds what waits (and the last claim's), not every task claimed"


def test_the_memory_stores_ready_tasks_keep_the_queues_order_across_keys_and_claims() -> None:
    import random

    from apalis_cli.memory_ready import Entry, ReadyTasks
    from apalis_cli.task import TaskId

    # Ordinary claims (first) and limited ones (keys_after, first_of) take from the same tasks,
    # some of which moved on meanwhile (cancelled): each must still get what a sorted list says.
    chance = random.Random(15)
    waiting: dict[TaskId, tuple[str | None, Entry]] = {}
    ready: ReadyTasks[Entry] = ReadyTasks(lambda entry: entry if entry[3] in waiting else None)
    for seq in range(3000):
        roll = chance.random()
        if roll < 0.5 or not waiting:
            key = chance.choice([None, "a", "b", "c", "d", "e"])
            entry: Entry = (-chance.randint(0, 3), chance.choice([1.0, 2.0]), seq, TaskId(f"t{seq}"))
            waiting[entry[3]] = (key, entry)
            ready.push(key, entry)
        elif roll < 0.6:
            del waiting[chance.choice(sorted(waiting))]  # cancelled while it waits
        elif roll < 0.8:
            expected = min(entry for _, entry in waiting.values())
            assert ready.first() == expected, "an ordinary claim takes the queue's first task"
            del waiting[expected[3]]
        else:
            keys = sorted({key for key, _ in waiting.values() if key is not None})
            assert ready.keys_after(None, 10) == keys, "the keys with waiting tasks, in order"
            key = chance.choice([None, *keys])
            of_key = [entry for k, entry in waiting.values() if k == key]
            taken = ready.first_of(key)
            assert taken == (min(of_key) if of_key else None), "a key's first task"
            if taken is not None:
                del waiting[taken[3]]
    while waiting:
        expected = min(entry for _, entry in waiting.values())
        assert ready.first() == expected
        del waiting[expected[3]]
    assert ready.first() is None
    assert len(ready) == 0, "nothing is left behind"
