"""A task's life on every store: push, run, done; payloads through both codecs; bad payloads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from apalis_cli.backend import Capability
from apalis_cli.storable import encode_result
from apalis_cli.task import Status, Task

from .conftest import Calls, Harness

CODECS = ["json", "msgpack"]


async def test_push_runs_once_and_is_done(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    task_id = await backend.push({"to": "ada@example.com", "n": 1})
    assert isinstance(task_id, str)
    assert task_id

    worker = await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: worker.finished("done"), what="the task to finish")
    await worker.stop()

    assert [(c.id, c.args) for c in calls.calls] == [(task_id, {"to": "ada@example.com", "n": 1})]
    assert [(e.task_id, e.outcome) for e in worker.finished()] == [(task_id, "done")]


async def test_result_is_stored_with_the_done_task(harness: Harness, calls: Calls) -> None:
    harness.require(Capability.INSPECT, Capability.RESULTS)
    backend = harness.backend()
    inspector = harness.inspector(backend)

    async def compute(args: Any, task: Task[bytes]) -> Any:
        return {"sum": sum(args), "label": "総計"}

    task_id = await backend.push([1, 2, 3])
    worker = await harness.worker(backend, calls.handler(compute)).start()
    await harness.wait_until(lambda: worker.finished("done"), what="the task to finish")
    await worker.stop()

    stored = await inspector.get(task_id)
    assert stored is not None
    assert stored.ctx.status is Status.DONE
    assert stored.ctx.attempts == 1
    assert stored.ctx.lock_by is None
    assert stored.ctx.result == encode_result({"sum": 6, "label": "総計"})
    assert stored.ctx.done_at is not None


def _samples(codec: str) -> dict[str, Any]:
    common: dict[str, Any] = {
        "unicode": {"text": "naïve café — 日本語 — emoji 🚀", "key-ü": "ß"},
        "nested": {"a": [1, [2, [3, {"b": None, "c": True, "d": 1.5}]]], "e": {"f": {"g": []}}},
        "scalar-str": "just a string",
        "scalar-int": 7,
        "empty": {},
        "one-mib": {"blob": "x" * (1024 * 1024)},
    }
    if codec == "json":
        common["big-ints"] = [2**200, -(2**150), 10**40 + 1]
    else:
        common["big-ints"] = [2**64 - 1, -(2**63), 2**53 + 1]
        common["bytes"] = {"raw": b"\x00\xff\x10binary"}
    return common


@pytest.mark.parametrize("codec", CODECS)
async def test_payloads_round_trip_through_the_store(harness: Harness, calls: Calls, codec: str) -> None:
    backend = harness.backend(codec)
    samples = _samples(codec)
    ids = {await backend.push(value): name for name, value in samples.items()}

    worker = await harness.worker(backend, calls.handler(), concurrency=4).start()
    await harness.wait_until(lambda: len(calls.calls) >= len(samples), what="every sample to run")
    await worker.stop()

    received = {ids[call.id]: call.args for call in calls.calls}
    assert received.keys() == samples.keys()
    for name, value in samples.items():
        assert received[name] == value, f"{codec} sample {name!r} changed on the way"


@pytest.mark.parametrize("codec", CODECS)
async def test_stored_payload_is_the_codecs_bytes(harness: Harness, codec: str) -> None:
    harness.require(Capability.INSPECT)
    backend = harness.backend(codec)
    value = {"text": "日本語", "n": 2**40}
    task_id = await backend.push(value)

    stored = await harness.inspector(backend).get(task_id)
    assert stored is not None
    assert bytes(stored.args) == backend.codec.encode(value)
    assert backend.codec.decode(stored.args) == value


async def test_push_bulk_enqueues_every_item(harness: Harness, calls: Calls) -> None:
    backend = harness.backend()
    items = [{"i": i} for i in range(50)]
    ids = await backend.push_bulk(items)
    assert len(ids) == 50
    assert len(set(ids)) == 50
    assert await backend.push_bulk([]) == []

    worker = await harness.worker(backend, calls.handler(), concurrency=8).start()
    await harness.wait_until(lambda: len(calls.calls) >= 50, what="50 bulk-pushed tasks to run")
    await worker.stop()

    by_id = {call.id: call.args for call in calls.calls}
    assert by_id == dict(zip(ids, items, strict=True))


@pytest.mark.parametrize(("codec", "garbage"), [("json", b"\xff\x00{not json"), ("msgpack", b"\xc1\xc1\xc1")])
async def test_undecodable_payload_kills_only_its_task(
    harness: Harness, calls: Calls, codec: str, garbage: bytes
) -> None:
    backend = harness.backend(codec, max_attempts=5)
    before = await backend.push({"n": "before"})
    bad = await backend.push_compact(garbage)
    after = await backend.push({"n": "after"})

    worker = await harness.worker(backend, calls.handler()).start()
    await harness.wait_until(lambda: len(worker.finished()) >= 3, what="all three tasks to end")
    await asyncio.sleep(0.3)  # a retry (wrongly) scheduled with the suite's 50 ms backoff would show
    await worker.stop()

    outcomes = {e.task_id: e for e in worker.finished()}
    assert outcomes[bad].outcome == "kill"
    assert (outcomes[bad].error or "").startswith("decode error")
    assert outcomes[before].outcome == "done"
    assert outcomes[after].outcome == "done"
    assert sorted(c.id for c in calls.calls) == sorted([before, after]), "the handler never sees the bad task"
    assert len(worker.finished()) == 3, "a decode error is not retried"

    if harness.store.capabilities.has(Capability.INSPECT):
        stored = await harness.inspector(backend).get(bad)
        assert stored is not None
        assert stored.ctx.status is Status.KILLED
        assert stored.ctx.last_error is not None
        assert "decode error" in stored.ctx.last_error
