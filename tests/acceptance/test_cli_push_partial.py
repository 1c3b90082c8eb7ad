"""`apalis push --file` when the store fails part-way: the ids of what was written are on stdout
and the error says how many were pushed and up to which line.

The store is a private redis-server with a memory limit, so it refuses writes once the first
batches are in: a real failure of a real store, part-way through a push.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos_servers import PrivateServer, free_port, need_binary, owned_tmpdir
from .conftest import Apalis, lines


@pytest.fixture
def small_redis() -> Iterator[int]:
    binary = need_binary("redis-server")
    base = owned_tmpdir("apalis-push-redis-", None)
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base), "--save", ""]
    argv += ["--maxmemory", "7mb", "--maxmemory-policy", "noeviction"]
    server = PrivateServer("redis", argv, port, base / "server.log")
    try:
        server.start()
        yield port
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_store_that_fails_part_way_leaves_the_ids_of_what_it_took(
    apalis: Apalis, tmp_path: Path, small_redis: int
) -> None:
    apalis.write_config(
        f'[backends.main]\nkind = "redis"\nurl = "redis://127.0.0.1:{small_redis}/0"\n\n'
        '[[workers]]\nname = "echo"\nhandler = "acc_handlers:ok"\n'
    )
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"n": n, "pad": "x" * 1500}) + "\n" for n in range(1, 5001)))
    pushed = apalis("push", "--file", str(tasks))
    assert pushed.code == 1, pushed.err
    ids = lines(pushed.out)
    assert 0 < len(ids) < 5000, "some batches were written, then the store refused"
    assert len(ids) % 1000 == 0, "whole batches"
    (error,) = lines(pushed.err)
    assert error.startswith(
        f"apalis: error: {len(ids)} of 5000 tasks were pushed (their ids are on stdout), up to {tasks}:{len(ids)}; "
        "then the store failed: OutOfMemoryError"
    )
    stored = apalis("inspect", "--json", "--limit", "10000")
    assert stored.code == 0, stored.err
    assert {row["id"] for row in stored.json()} == set(ids)
    assert sorted(json.loads(row["payload"])["n"] for row in stored.json()) == list(range(1, len(ids) + 1))
    assert re.fullmatch(r"[0-9a-f]{30}", ids[0])
