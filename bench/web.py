"""`python -m bench.web`: how fast the web board answers on a million tasks and on fifty queues.

    python -m bench.web --backend sqlite,postgres              # 1,000,000 tasks, 50 queues
    python -m bench.web --backend sqlite --tasks 100000 --requests 50
    python -m bench.web --backend redis,rsmq                   # pages by the store's own cursor

For each store: one queue of `--tasks` tasks (70% done, 20% pending, 5% failed, 4% killed,
1% running, errors on the failed and killed ones, finished over the last two hours) and 50
queues of 2,000 tasks; then `apalis web` serves them in its own process and this one asks, one
request at a time over HTTP, for the pages and API calls a person and a script make: the queue's
first page of every status and of one status, pages deep behind the keyset cursor, a task, the
overview of 51 queues. Each line gives p50, p95 and the slowest; the target is p95 < 200 ms.
On Redis and rsmq, whose tasks change state only by running or by an operator, the big queue is
96% pending and 4% killed (by `kill`, with the same errors); pages deep are of killed tasks.
The overview's figures are counted in the background (at most every 2 s, whoever asks); how long
one such count of every queue takes is printed too. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from apalis_cli.codec import JsonCodec

from .stores import Target, Unavailable, open_store, prepare

SMALL_QUEUES = 50
SMALL_TASKS = 2000
BIG = "big"


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


async def _fill(target: Target, tasks: int) -> None:
    """Push the big queue and the small ones through the store, as producers would; on a store
    without SQL (Redis, rsmq), kill one task in 25 of the big queue with an error."""
    store = await open_store(target)
    try:
        codec = JsonCodec()
        big = store.backend(BIG, codec=codec, max_attempts=3)
        batch = 10_000
        for start in range(0, tasks, batch):
            count = min(batch, tasks - start)
            ids = await big.push_bulk([{"image": f"img{start + i}.png", "width": 256} for i in range(count)])  # type: ignore[attr-defined]
            if target.kind in ("redis", "rsmq"):
                doomed = list(range(0, count, 25))
                for at in range(0, len(doomed), 50):  # 50 at a time: one connection each
                    await asyncio.gather(
                        *(
                            big.kill(ids[i], f"ConnectionError: image store did not answer for img{start + i}.png")  # type: ignore[attr-defined]
                            for i in doomed[at : at + 50]
                        )
                    )
            if start % 200_000 == 0:
                _log(f"{target.kind}: pushed {start + count:,} of {tasks:,}")
        for q in range(SMALL_QUEUES):
            small = store.backend(f"q{q:02d}", codec=codec, max_attempts=3)
            await small.push_bulk([{"n": i} for i in range(SMALL_TASKS)])  # type: ignore[attr-defined]
    finally:
        await store.close()


# Statuses by the task's position: 70% done, 20% pending, 5% failed, 4% killed, 1% running.
_STATUS_SQL = """
UPDATE {tasks} SET
  status = CASE WHEN {bucket} < 70 THEN 'done' WHEN {bucket} < 90 THEN 'pending'
                WHEN {bucket} < 95 THEN 'failed' WHEN {bucket} < 99 THEN 'killed' ELSE 'running' END,
  attempts = CASE WHEN {bucket} < 70 THEN 1 WHEN {bucket} < 90 THEN 0 WHEN {bucket} < 99 THEN 2 ELSE 1 END,
  last_error = CASE WHEN {bucket} >= 90 AND {bucket} < 99
                    THEN 'ConnectionError: image store did not answer for img' || {n} || '.png' END,
  done_at = CASE WHEN {bucket} < 70 OR ({bucket} >= 95 AND {bucket} < 99) THEN {now} - ({n} % 7200) END,
  lock_by = CASE WHEN {bucket} >= 99 THEN 'bench-worker' END
WHERE queue = 'big'
"""


def _statuses_sqlite(target: Target) -> None:
    path = urlsplit(target.url).path
    path = path[1:] if path.startswith("//") else path
    with sqlite3.connect(path) as conn:
        conn.execute(_STATUS_SQL.format(tasks="apalis_tasks", bucket="(rowid % 100)", n="rowid", now=time.time()))
    conn.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ANALYZE")
    conn.close()


async def _statuses_postgres(target: Target) -> None:
    import psycopg

    schema = target.options["schema"]
    n = "abs(hashtext(id))"
    sql = _STATUS_SQL.format(tasks=f'"{schema}".tasks', bucket=f"({n} % 100)", n=n, now=time.time())
    async with await psycopg.AsyncConnection.connect(target.url, autocommit=True) as conn:
        await conn.execute(sql.encode())
        await conn.execute(f'VACUUM ANALYZE "{schema}".tasks'.encode())


def _config(target: Target, folder: Path) -> Path:
    lines = ["[backends.main]", f'kind = "{target.kind}"', f'url = "{target.url}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in target.options.items()]
    for queue in [BIG, *(f"q{q:02d}" for q in range(SMALL_QUEUES))]:
        lines += ["", "[[workers]]", f'name = "{queue}"', 'handler = "apalis_cli.demo:resize_image"']
    path = folder / "board.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _serve(config: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "apalis_cli", "web", "--config", str(config), "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving (http://\S+)/", line)
    if not match:
        process.kill()
        raise Unavailable(f"apalis web did not start: {line}{process.stderr.read() if process.stderr else ''}")
    return process, match.group(1)


def _timed(client: httpx.Client, paths: Callable[[int], str], requests: int) -> list[float]:
    took = []
    for i in range(requests):
        started = time.perf_counter()
        answer = client.get(paths(i))
        took.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"GET {paths(i)}: {answer.status_code} {answer.text[:200]}")
    return took


def _line(label: str, took: list[float]) -> dict[str, Any]:
    ordered = sorted(took)
    p95 = ordered[max(int(len(ordered) * 0.95) - 1, 0)]
    row = {"what": label, "n": len(took), "p50_ms": statistics.median(took), "p95_ms": p95, "max_ms": ordered[-1]}
    print(f"  {label:<58} p50 {row['p50_ms']:7.1f}  p95 {p95:7.1f}  max {ordered[-1]:7.1f} ms", flush=True)
    return row


def _measure(url: str, requests: int, deep: str) -> list[dict[str, Any]]:
    """Each line's requests; pages deep are of status `deep` (done, or killed where nothing ran)."""
    rows = []
    with httpx.Client(base_url=url, timeout=60.0) as client:
        client.get("/")  # the first count of every queue happens here, once
        first = client.get("/api/queues/big/tasks", params={"status": deep, "limit": 50}).json()
        task_id = first["tasks"][0]["id"]
        # Cursors deep in the queue: follow `next` 200 pages (10,000 tasks) in.
        cursors, after = [], first["next"]
        for _ in range(200):
            if after is None:  # a smaller queue: fewer pages
                break
            cursors.append(after)
            after = client.get("/api/queues/big/tasks", params={"status": deep, "after": after}).json()["next"]
        pending = client.get("/api/queues/big/tasks", params={"status": "pending", "order": "oldest"}).json()
        rows.append(_line("queue page, every status (HTML)", _timed(client, lambda i: "/queues/big", requests)))
        rows.append(
            _line("queue page, pending (HTML)", _timed(client, lambda i: "/queues/big?status=pending", requests))
        )
        rows.append(
            _line(
                f"queue page, {deep}, pages 1-200 deep (HTML)",
                _timed(client, lambda i: f"/queues/big?status={deep}&after={cursors[i % len(cursors)]}", requests),
            )
        )
        rows.append(_line("API tasks, every status", _timed(client, lambda i: "/api/queues/big/tasks", requests)))
        rows.append(
            _line(
                f"API tasks, {deep}, pages 1-200 deep",
                _timed(
                    client,
                    lambda i: f"/api/queues/big/tasks?status={deep}&after={cursors[i % len(cursors)]}",
                    requests,
                ),
            )
        )
        rows.append(
            _line(
                "API tasks, pending, oldest first, page 2",
                _timed(
                    client,
                    lambda i: f"/api/queues/big/tasks?status=pending&order=oldest&after={pending['next']}",
                    requests,
                ),
            )
        )
        rows.append(_line("task page (HTML)", _timed(client, lambda i: f"/tasks/{task_id}?queue=big", requests)))
        rows.append(_line("API task", _timed(client, lambda i: f"/api/tasks/{task_id}?queue=big", requests)))
        rows.append(_line("overview, 51 queues (HTML)", _timed(client, lambda i: "/", requests)))
        rows.append(_line("API queues, 51 queues", _timed(client, lambda i: "/api/queues", requests)))
        searches = max(requests // 10, 3)
        rows.append(
            _line(
                "search: id (every status, whole queue)",
                _timed(client, lambda i: f"/api/queues/big/tasks?search={task_id}", searches),
            )
        )
        rows.append(
            _line(
                "search: error text, killed tasks",
                _timed(client, lambda i: "/api/queues/big/tasks?status=killed&search=img12345", searches),
            )
        )
    return rows


async def _count_all(config: Path) -> float:
    """How long one count of every queue takes (what the background refresh does)."""
    from apalis_cli.config import load_config
    from apalis_cli.web.board import Board
    from apalis_cli.web.snapshots import Snapshots

    board = Board(load_config(config))
    await board.open()
    try:
        snapshots = Snapshots(board)
        await snapshots.refresh()  # warm
        started = time.perf_counter()
        await snapshots.refresh()
        return (time.perf_counter() - started) * 1000
    finally:
        await board.close()


async def _run_kind(kind: str, tasks: int, requests: int) -> dict[str, Any]:
    target = prepare(kind, None, f"{int(time.time())}_{os.getpid()}")
    folder = Path(tempfile.mkdtemp(prefix="apalis-bench-web-"))
    try:
        _log(f"{kind}: filling {tasks:,} tasks and {SMALL_QUEUES} queues of {SMALL_TASKS:,}")
        await _fill(target, tasks)
        if kind == "sqlite":
            _statuses_sqlite(target)
        elif kind == "postgres":
            await _statuses_postgres(target)
        config = _config(target, folder)
        refresh_ms = await _count_all(config)
        process, url = _serve(config)
        try:
            print(f"{kind}: {tasks:,} tasks in one queue, {SMALL_QUEUES} more queues of {SMALL_TASKS:,}", flush=True)
            rows = _measure(url, requests, "done" if kind in ("sqlite", "postgres") else "killed")
        finally:
            process.terminate()
            process.wait(timeout=30)
        print(f"  {'one background count of all 51 queues':<58} {refresh_ms:7.1f} ms", flush=True)
        return {"kind": kind, "tasks": tasks, "rows": rows, "count_all_queues_ms": refresh_ms}
    finally:
        await target.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="sqlite,postgres", help="sqlite, postgres, redis, rsmq")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="requests per line")
    parser.add_argument("--json", action="store_true", help="print one JSON document at the end")
    args = parser.parse_args()
    results = []
    for kind in args.backend.split(","):
        try:
            results.append(asyncio.run(_run_kind(kind.strip(), args.tasks, args.requests)))
        except Unavailable as exc:
            print(f"{kind}: skipped: {exc}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
