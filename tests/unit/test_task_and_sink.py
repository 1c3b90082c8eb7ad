"""Task ids, statuses, durations and the push conveniences every sink shares (over memory)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import time
from typing import Any

import pytest
from apalis_cli.backend import NewTask
from apalis_cli.codec import JsonCodec, MsgpackCodec
from apalis_cli.durations import format_duration, parse_duration
from apalis_cli.errors import BadPayload, UsageError
from apalis_cli.memory import MemoryStore
from apalis_cli.task import Status, Task, TaskContext, iso, new_task_id


def test_task_ids_are_unique_and_time_ordered() -> None:
    first = new_task_id()
    time.sleep(0.002)
    ids = [new_task_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert len({len(i) for i in ids}) == 1, "fixed width, so text order is time order"
    assert all(re.fullmatch("[0-9a-f]+", i) for i in ids), "URL-safe"
    assert all(first < i for i in ids), "an id made later sorts later (ms resolution)"


@pytest.mark.parametrize("cls", [Task, TaskContext, NewTask])
def test_task_context_and_new_task_take_every_field_and_stay_frozen(cls: Any) -> None:
    # Their __init__ is written by hand (it is on the hot path): it must set each field, with
    # the declared default, and leave the object as frozen as a generated one would.
    fields = [f for f in dataclasses.fields(cls) if f.init]  # not `cancel_reason`: set by the worker
    params = inspect.signature(cls).parameters
    assert list(params) == [f.name for f in fields]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    given = {f.name: object() for f in fields}
    made = cls(**given)
    assert {f.name: getattr(made, f.name) for f in fields} == given
    assert type(made) is cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, "changed")
    assert dataclasses.replace(made, **{fields[0].name: "x"}) == cls(**{**given, fields[0].name: "x"})


def test_a_context_gets_the_declared_defaults() -> None:
    ctx = TaskContext(queue="q")
    for f in dataclasses.fields(TaskContext):
        if f.name != "queue":
            factory: Any = f.default_factory
            default = factory() if f.default is dataclasses.MISSING else f.default
            assert getattr(ctx, f.name) == default, f.name
    assert ctx.meta is not TaskContext(queue="q").meta, "each context has its own meta"


def test_a_new_task_gets_the_declared_defaults() -> None:
    new = NewTask(id="t", payload=b"{}", run_at=1.0)
    for f in dataclasses.fields(NewTask):
        if f.name not in ("id", "payload", "run_at"):
            factory: Any = f.default_factory
            default = factory() if f.default is dataclasses.MISSING else f.default
            assert getattr(new, f.name) == default, f.name
    assert new.meta is not NewTask(id="t", payload=b"{}", run_at=1.0).meta, "each task has its own meta"


def test_final_statuses() -> None:
    assert {s for s in Status if s.is_final} == {Status.DONE, Status.KILLED, Status.CANCELLED}


def test_a_context_is_marked_cancelled_for_the_handler_to_see() -> None:
    ctx = TaskContext(queue="q")
    assert not ctx.cancelled
    assert ctx.cancel_reason is None

    ctx.mark_cancelled("not wanted")

    assert ctx.cancelled
    assert ctx.cancel_reason == "not wanted"
    assert ctx == TaskContext(queue="q"), "the mark is not part of what the context is"
    assert not dataclasses.replace(ctx, attempts=2).cancelled, "a new run's context starts unmarked"


def test_attempts_left() -> None:
    assert TaskContext(queue="q", attempts=1, max_attempts=3).attempts_left == 2
    assert TaskContext(queue="q", attempts=5, max_attempts=3).attempts_left == 0


def test_iso_renders_utc_milliseconds() -> None:
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert iso(None) is None


def test_iso_of_a_time_no_date_can_show_is_the_number() -> None:
    # Stored by an older version or another client: one such task must not break a whole listing.
    assert iso(-62135614800.0) == "-62135614800.0"
    assert iso(float("inf")) == "inf"
    assert iso(float("nan")) == "nan"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("7d", 604800.0), ("1.5s", 1.5), (3, 3.0)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-1s", -1, True])
def test_parse_duration_rejects_nonsense(text: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.25, 1, 30, 90, 3600, 90061)] == [
        "250ms",
        "1s",
        "30s",
        "1m30s",
        "1h",
        "1d1h1m1s",
    ]


async def test_push_fills_in_the_defaults() -> None:
    queue = MemoryStore().backend("q", codec=JsonCodec(), max_attempts=4)
    before = time.time()
    task_id = await queue.push({"a": 1})
    task = await queue.get(task_id)
    assert task is not None
    assert task.ctx.max_attempts == 4, "the queue's default applies"
    assert before <= task.ctx.run_at <= time.time()
    assert (task.ctx.priority, task.ctx.attempts, task.ctx.status) == (0, 0, Status.PENDING)


async def test_push_options_reach_the_store() -> None:
    queue = MemoryStore().backend("q", codec=MsgpackCodec())
    before = time.time()
    task_id = await queue.push(
        [1, 2], delay=60, priority=7, max_attempts=2, task_id="my-id", idempotency_key="k", meta={"by": "test"}
    )
    assert task_id == "my-id"
    task = await queue.get("my-id")
    assert task is not None
    assert before + 60 <= task.ctx.run_at <= time.time() + 60
    assert (task.ctx.priority, task.ctx.max_attempts, task.ctx.idempotency_key) == (7, 2, "k")
    assert task.ctx.meta == {"by": "test"}
    assert MsgpackCodec().decode(task.args) == [1, 2]


async def test_push_rejects_contradictions_and_bad_values() -> None:
    queue = MemoryStore().backend("q", codec=JsonCodec())
    with pytest.raises(UsageError, match="either a delay or a run_at"):
        await queue.push(1, delay=5, run_at=time.time())
    with pytest.raises(UsageError, match="max_attempts must be >= 1"):
        await queue.push(1, max_attempts=0)
    with pytest.raises(UsageError, match="idempotency_key"):
        await queue.push_bulk([1, 2], idempotency_key="same")
    with pytest.raises(BadPayload):
        await queue.push({"not": object()})
    assert (await queue.stats()).counts[Status.PENDING] == 0, "nothing was pushed by a failed call"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 2**31}, "priority must be <= 2147483647, got 2147483648"),
        ({"priority": -(2**31) - 1}, "priority must be >= -2147483648"),
        ({"max_attempts": 2**31}, "max_attempts must be <= 2147483647"),
        ({"delay": float("nan")}, "the run time (run_at or now + delay) must fall in the years 1 to 9999"),
        ({"delay": 1e12}, "the run time"),
        ({"run_at": -1e12}, "the run time"),
        ({"run_at": float("inf")}, "the run time"),
        ({"idempotency_key": "k" * 256}, "idempotency_key must be at most 255 characters, got 256"),
        ({"task_id": "t" * 65}, "task_id must be at most 64 characters, got 65"),
    ],
)
async def test_push_refuses_what_a_store_cannot_hold(options: dict[str, Any], message: str) -> None:
    # The bounds are the same for the command line and for code that pushes (one place).
    queue = MemoryStore().backend("q", codec=JsonCodec())
    with pytest.raises(UsageError, match=re.escape(message)):
        await queue.push(1, **options)
    if "task_id" not in options and "idempotency_key" not in options:  # one per task: not in bulk
        with pytest.raises(UsageError, match=re.escape(message)):
            await queue.push_bulk([1, 2], **options)
    assert (await queue.stats()).counts[Status.PENDING] == 0


async def test_push_bulk_with_shared_options() -> None:
    queue = MemoryStore().backend("q", codec=JsonCodec())
    ids = await queue.push_bulk(["a", "b", "c"], priority=3, delay=30)
    tasks = [await queue.get(i) for i in ids]
    assert [JsonCodec().decode(t.args) for t in tasks if t] == ["a", "b", "c"]
    assert all(t is not None and t.ctx.priority == 3 and t.ctx.run_at > time.time() + 25 for t in tasks)
