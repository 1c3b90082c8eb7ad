"""`open_sink` / `open_sink_sync`: tasks pushed from Python code are the CLI's tasks."""

from __future__ import annotations

import threading

import apalis_cli
import pytest
from apalis_cli.errors import UsageError

from .conftest import Apalis


async def test_open_sink_pushes_into_the_workers_queue(apalis: Apalis) -> None:
    async with apalis_cli.open_sink(apalis.config, worker="echo") as sink:
        first = await sink.push({"n": 1}, delay=3600, priority=2)
        bulk = await sink.push_bulk([{"n": i} for i in range(10)])
    rows = {row["id"]: row for row in apalis.inspect()}
    assert set(rows) == {first, *bulk}
    assert rows[first]["priority"] == 2
    assert rows[first]["queue"] == "echo"


def test_open_sink_sync_from_threads(apalis: Apalis) -> None:
    ids: list[str] = []
    with apalis_cli.open_sink_sync(apalis.config) as sink:

        def producer(n: int) -> None:
            ids.append(sink.push({"n": n}))

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ids.extend(sink.push_bulk([{"bulk": True}] * 5))
    assert len(set(ids)) == 13
    assert apalis.statuses() == {"pending": 13}


def test_unknown_worker_raises_a_usage_error(apalis: Apalis) -> None:
    with pytest.raises(UsageError, match='no worker named "nope"'):
        apalis_cli.open_sink_sync(apalis.config, worker="nope")


def test_config_defaults_to_apalis_config(apalis: Apalis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APALIS_CONFIG", str(apalis.config))
    with apalis_cli.open_sink_sync() as sink:
        task_id = sink.push({"n": 1})
    assert [row["id"] for row in apalis.inspect()] == [task_id]
