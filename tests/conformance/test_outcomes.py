"""Whatever a handler returns or raises, its own task gets a recorded outcome, on every store.

The runs of one test finish together, so their outcomes share one batched acknowledgement: an
outcome the store cannot write (a lone surrogate, a NUL byte, a value JSON cannot hold, a huge
text) must fail its own task alone, never the good tasks acknowledged with it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from apalis_cli.backend import Capability
from apalis_cli.errors import Retry
from apalis_cli.service import MAX_RETRY_DELAY
from apalis_cli.storable import MAX_RESULT_BYTES
from apalis_cli.task import Status, Task

from .conftest import Calls, Harness

FILENAME = os.fsdecode(b"caf\xe9.png")
"""A file name that is not UTF-8, as `os.listdir` hands it over: it holds a lone surrogate."""


class Unprintable(Exception):
    """An exception whose text cannot be had."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


class Opaque:
    """A value JSON cannot hold and whose repr fails."""

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


def _raise(exc: BaseException) -> Callable[[], Any]:
    def behaviour() -> Any:
        raise exc

    return behaviour


BEHAVIOURS: dict[str, Callable[[], Any]] = {
    "surrogate-result": lambda: {"file": FILENAME},
    "surrogate-error": _raise(ValueError(f"cannot open {FILENAME}")),
    "nul-error": _raise(ValueError("before\x00after")),
    "unencodable-result": lambda: Opaque(),
    "unprintable-error": _raise(Unprintable()),
    "huge-error": _raise(ValueError("e" * 3_000_000)),
    "huge-result": lambda: "r" * 3_000_000,
}
GOOD = 6


async def test_a_bad_outcome_fails_its_own_task_alone(harness: Harness, calls: Calls) -> None:
    backend = harness.backend(max_attempts=1)
    names = [*BEHAVIOURS, *(f"good-{i}" for i in range(GOOD))]
    ids = {await backend.push({"name": name}): name for name in names}
    all_started = asyncio.Event()

    async def behaviour(args: Any, task: Task[bytes]) -> Any:
        if len(calls.calls) == len(names):
            all_started.set()
        await all_started.wait()  # every run ends in the same loop turn: one acknowledgement
        name = args["name"]
        return BEHAVIOURS[name]() if name in BEHAVIOURS else f"ok {name}"

    handler: Callable[[Any, Task[bytes]], Awaitable[Any]] = calls.handler(behaviour)
    worker = await harness.worker(backend, handler, concurrency=len(names)).start()
    await harness.wait_until(lambda: len(worker.finished()) >= len(names), what="every run to end")
    await asyncio.sleep(0.3)  # a second run of anything would show now
    await worker.stop()

    outcomes = {ids[e.task_id]: e for e in worker.finished()}
    assert sorted(outcomes) == sorted(names), "each task ended exactly once"
    assert sorted(ids[c.id] for c in calls.calls) == sorted(names), "each task ran exactly once"
    for i in range(GOOD):
        assert outcomes[f"good-{i}"].outcome == "done"
    assert outcomes["surrogate-result"].outcome == "done", outcomes["surrogate-result"].error
    for name in BEHAVIOURS.keys() - {"surrogate-result"}:
        assert outcomes[name].outcome == "kill", f"{name}: {outcomes[name]}"
    errors = {name: outcomes[name].error or "" for name in names}
    assert "result cannot be stored" in errors["unencodable-result"]
    assert "result cannot be stored" in errors["huge-result"]
    assert "Unprintable" in errors["unprintable-error"]
    assert "beforeafter" in errors["nul-error"]
    assert "caf\\udce9.png" in errors["surrogate-error"]
    assert len(errors["huge-error"]) < 10_000

    if not harness.store.capabilities.has(Capability.INSPECT):
        return
    inspector = harness.inspector(backend)
    for task_id, name in ids.items():
        stored = await inspector.get(task_id)
        if stored is None:  # a broker keeps no done task
            assert not name.startswith("good") or not harness.store.capabilities.has(Capability.RESULTS)
            continue
        if name.startswith("good") or name == "surrogate-result":
            assert stored.ctx.status is Status.DONE, f"{name}: {stored.ctx}"
        else:
            assert stored.ctx.status is Status.KILLED, f"{name}: {stored.ctx}"
            assert stored.ctx.last_error, name
    if harness.store.capabilities.has(Capability.RESULTS):
        by_name = {name: task_id for task_id, name in ids.items()}
        stored = await inspector.get(by_name["surrogate-result"])
        assert stored is not None
        assert stored.ctx.result is not None
        assert json.loads(stored.ctx.result) == {"file": FILENAME}, "the result is kept exactly"


DELAYS = {"infinite": math.inf, "ten-thousand-years": 3e11, "nan": math.nan, "negative": -5.0}


async def test_a_retry_at_any_delay_is_kept_and_fails_no_other_task(harness: Harness, calls: Calls) -> None:
    backend = harness.backend(max_attempts=2)
    names = [*DELAYS, *(f"good-{i}" for i in range(GOOD))]
    ids = {await backend.push({"name": name}): name for name in names}
    all_started = asyncio.Event()

    async def behaviour(args: Any, task: Task[bytes]) -> Any:
        if len(calls.calls) >= len(names):
            all_started.set()
        await all_started.wait()
        name = args["name"]
        if name in DELAYS:
            raise Retry(delay=DELAYS[name], reason=f"again ({name})")
        return "ok"

    worker = await harness.worker(backend, calls.handler(behaviour), concurrency=len(names)).start()
    # The far retries wait; "nan" and "negative" mean no delay: they run again and are killed.
    await harness.wait_until(lambda: len(worker.finished()) >= len(names) + 2, what="every run to end")
    await asyncio.sleep(0.3)
    await worker.stop()

    outcomes: dict[str, list[str]] = {}
    for event in worker.finished():
        outcomes.setdefault(ids[event.task_id], []).append(event.outcome)
    for i in range(GOOD):
        assert outcomes[f"good-{i}"] == ["done"]
    assert outcomes["infinite"] == outcomes["ten-thousand-years"] == ["retry"]
    assert outcomes["nan"] == outcomes["negative"] == ["retry", "kill"]

    if harness.store.capabilities.has(Capability.INSPECT) and harness.store.capabilities.has(Capability.SCHEDULE):
        inspector = harness.inspector(backend)
        for task_id, name in ids.items():
            if name in ("infinite", "ten-thousand-years"):
                stored = await inspector.get(task_id)
                assert stored is not None
                assert stored.ctx.status is Status.FAILED
                assert time.time() + 300 * 86400 < stored.ctx.run_at <= time.time() + MAX_RETRY_DELAY


async def test_results_at_the_limit_all_kept_when_they_end_together(harness: Harness, calls: Calls) -> None:
    # Each result is storable alone; together they are more than one statement of some stores
    # may carry (MySQL's max_allowed_packet is 16 MiB by default).
    count, size = 24, MAX_RESULT_BYTES - 100
    backend = harness.backend(max_attempts=1)
    ids = await backend.push_bulk([{"n": n} for n in range(count)])
    all_started = asyncio.Event()

    async def big(args: Any, task: Task[bytes]) -> Any:
        if len(calls.calls) >= count:
            all_started.set()
        await all_started.wait()
        return chr(ord("a") + args["n"]) * size

    worker = await harness.worker(backend, calls.handler(big), concurrency=count).start()
    await harness.wait_until(lambda: len(worker.finished()) >= count, within=30, what="every run to end")
    await worker.stop()

    assert sorted(e.outcome for e in worker.finished()) == ["done"] * count, [e.error for e in worker.finished()]
    if harness.store.capabilities.has(Capability.INSPECT) and harness.store.capabilities.has(Capability.RESULTS):
        inspector = harness.inspector(backend)
        for n, task_id in enumerate(ids):
            stored = await inspector.get(task_id)
            assert stored is not None
            assert stored.ctx.status is Status.DONE
            assert stored.ctx.result == json.dumps(chr(ord("a") + n) * size)
