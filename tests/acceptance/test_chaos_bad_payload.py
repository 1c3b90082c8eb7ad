"""A payload the worker's codec cannot decode never kills the worker (DESIGN.md §3: "Killed
(... undecodable)"): bytes that are not msgpack, pushed with the producer API's `push_compact`
beside good tasks, are killed with a decode error shown by `apalis inspect --json`, and the daemon
goes on to run every good task."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from apalis_cli.api import open_queue, resolve_target
from apalis_cli.backend import TaskSink
from apalis_cli.config import load_config

from .chaos import DURABLE, RECORDER, Backend, make_backend, push_numbers, runs, stop, wait_for, worker_table
from .conftest import Apalis

GOOD = 20
GARBAGE = b"\xc1\xc1 not msgpack"  # 0xc1 is the one byte msgpack never uses
RUN = ("run", "--no-live", "--log-format", "json", "--log-level", "warning")


@pytest.fixture
def backend(request: pytest.FixtureRequest, apalis: Apalis, tmp_path: Path) -> Iterator[Backend]:
    made = make_backend(request.param, tmp_path)
    (apalis.cwd / "chaos_handlers.py").write_text(RECORDER)
    apalis.write_config(
        made.table + "\n" + worker_table(queue=made.queue, codec="msgpack", concurrency=4, max_attempts=3)
    )
    try:
        yield made
    finally:
        made.cleanup()


async def push_garbage(apalis: Apalis) -> str:
    config = load_config(apalis.config)
    async with open_queue(config, resolve_target(config)) as (_, queue):
        assert isinstance(queue, TaskSink)  # every store's queue object is also its producer
        return str(await queue.push_compact(GARBAGE))


class InspectRefused(AssertionError):
    """`apalis inspect --status killed` refused to list a store's killed tasks."""


def killed_count(apalis: Apalis) -> int:
    result = apalis("stats", "--json")
    return int(result.json()[0].get("killed") or 0) if result.code == 0 else 0


def killed_rows(apalis: Apalis) -> list[dict[str, object]]:
    result = apalis("inspect", "--json", "--status", "killed")
    if result.code == 2 and "cannot list its tasks" in result.err:
        raise InspectRefused(result.err.strip())
    assert result.code == 0, result.err
    return list(result.json())


@pytest.mark.parametrize(
    "backend",
    DURABLE,
    indirect=True,
)
async def test_undecodable_payload_is_killed_and_the_worker_goes_on(apalis: Apalis, backend: Backend) -> None:
    push_numbers(apalis, range(GOOD // 2))
    bad_id = await push_garbage(apalis)
    push_numbers(apalis, range(GOOD // 2, GOOD))
    daemon = apalis.start(*RUN)
    try:
        wait_for("every good task ran", lambda: set(runs(apalis)) == set(range(GOOD)), timeout=60, daemons=[daemon])
        wait_for("the bad task is killed", lambda: killed_count(apalis) == 1, timeout=30, daemons=[daemon])
        assert daemon.poll() is None, "the daemon exited"
    finally:
        [err] = stop([daemon])
    assert daemon.returncode == 0, err[-4000:]
    assert sorted(runs(apalis).values()) == [1] * GOOD
    [event] = [json.loads(line) for line in err.splitlines() if '"task killed"' in line]
    assert event["task_id"] == bad_id, event
    assert "decode error" in event["error"], event
    assert "msgpack" in event["error"], event
    [row] = killed_rows(apalis)
    assert row["id"] == bad_id, (row, bad_id)
    assert "msgpack" in str(row["last_error"]), row
    assert row["attempts"] == 1, row  # killed at once, not retried: the bytes will not change
