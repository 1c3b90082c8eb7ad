"""The board's queue pages on the stores that page by a cursor of their own (Redis, rsmq): a
walk through their sorted sets by (score, member), over real HTTP on a real server."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.layers.retry import Backoff
from apalis_cli.task import Task
from apalis_cli.worker import Worker

from ..web_board import Served, serve_board, walk_pages
from .running import run_until

pytestmark = pytest.mark.parametrize("kind", ["redis", "rsmq"])

WORKERS = """
[[workers]]
name = "thumbnails"
backend = "main"
queue = "thumbnails"
handler = "apalis_cli.demo:resize_image"
max_attempts = 3
"""


async def walk(served: Served, **params: str) -> tuple[list[str], int]:
    """Every page of the thumbnails queue's listing: the ids in order, and how many pages."""
    seen, bodies = await walk_pages(served, **params)
    return seen, len(bodies)


async def test_pages_of_fifty_follow_the_stores_cursor_to_the_end(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        sink = served.sink()
        pushed = await sink.push_bulk([{"n": i} for i in range(120)])
        oldest, pages = await walk(served, status="pending", order="oldest")
        assert pages == 3
        assert sorted(oldest) == sorted(pushed)  # every task once
        newest, _ = await walk(served, status="pending", order="newest")
        assert newest == oldest[::-1]
        answer = (await served.client.get("/api/queues/thumbnails/tasks", params={"status": "pending"})).json()
        assert answer["sorted_by"].startswith(("due tasks", "messages"))  # the store's order, said


async def test_a_page_goes_on_after_its_last_task_has_moved(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        sink = served.sink()
        await sink.push_bulk([{"n": i} for i in range(120)])
        first = (await served.client.get("/api/queues/thumbnails/tasks", params={"status": "pending"})).json()
        shown = [t["id"] for t in first["tasks"]]
        assert len(shown) == 50
        assert await served.inspector().kill(shown[-1], "gone while a person read the page")
        rest = (
            await served.client.get(
                "/api/queues/thumbnails/tasks", params={"status": "pending", "after": first["next"], "limit": "500"}
            )
        ).json()
        following = [t["id"] for t in rest["tasks"]]
        assert len(following) == 70
        assert not set(following) & set(shown)


async def test_search_and_status_find_what_they_name(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        sink = served.sink()
        plain, broken, other = await sink.push_bulk([{"n": 1}, {"n": 2}, {"n": 3}])
        await served.inspector().kill(broken, "ValueError: Image 100% too LARGE_x")
        await served.inspector().kill(other, "TimeoutError")

        async def found(text: str, **extra: str) -> list[str]:
            answer = await served.client.get("/api/queues/thumbnails/tasks", params={"search": text, **extra})
            assert answer.status_code == 200, answer.text
            return [t["id"] for t in answer.json()["tasks"]]

        assert await found(plain) == [plain]
        assert await found("too large") == [broken]  # any case
        assert await found("100%") == [broken]
        assert await found("too large", status="pending") == []
        assert await found("nothing like it") == []
        killed, _ = await walk(served, status="killed")
        assert sorted(killed) == sorted([broken, other])
        assert (await walk(served, status="done"))[0] == []


async def test_a_cursor_not_made_by_the_board_is_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        answer = await served.client.get("/api/queues/thumbnails/tasks", params={"after": "eyJzdG9yZSI6IngifQ"})
        assert answer.status_code == 400
        assert answer.json()["error"] == "after: not a cursor this board made (follow the `next` of a page)"


async def test_the_overview_shows_what_the_store_keeps_of_its_activity(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        first, broken = await served.sink().push_bulk([{"n": 1}, {"n": 2}])
        await served.inspector().kill(broken, "ValueError")
        (thumbs,) = (await served.client.get("/api/queues")).json()
        assert thumbs["oldest_ready_known"] is True
        assert thumbs["oldest_ready_age"] is not None
        assert thumbs["oldest_ready_age"] >= 0
        page = (await served.client.get("/")).text
        if kind == "redis":  # the done and killed sets, by when each task ended
            assert len(thumbs["finished_per_minute"]) == 60
            assert sum(m["failed"] for m in thumbs["finished_per_minute"]) == 1
            assert "not kept by this store" not in page
        else:  # rsmq deletes a done message: how many finished is not known, and said so
            assert thumbs["finished_per_minute"] is None
            assert "not kept by this store" in page
        await served.inspector().kill(first, "ValueError")
        (thumbs,) = (await served.client.get("/api/queues")).json()
        assert thumbs["oldest_ready_age"] is None  # nothing is ready


async def test_a_search_reads_a_bounded_share_per_page_and_goes_on(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.import_module(f"apalis_{kind}.browse"), "SCAN_BUDGET", 25)
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        ids = await served.sink().push_bulk([{"n": i} for i in range(100)])
        broken = [ids[10], ids[60], ids[99]]
        for task_id in broken:
            await served.inspector().kill(task_id, f"OSError: disk full under {task_id}")
        found, pages = await walk(served, search="disk full", order="oldest")
        assert sorted(found) == sorted(broken)  # each once, though no page read the whole queue
        assert pages >= 100 // 25


async def test_a_listed_task_opens_on_its_page(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        waiting, broken = await served.sink().push_bulk([{"image": "cat.png"}, {"image": "<b>broken</b>.png"}])
        await served.inspector().kill(broken, "ValueError: 507")
        for task_id, status in ((waiting, "pending"), (broken, "killed")):
            answer = await served.client.get(f"/api/tasks/{task_id}", params={"queue": "thumbnails"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == status
            page = await served.client.get(f"/tasks/{task_id}", params={"queue": "thumbnails"})
            assert page.status_code == 200
            assert "&lt;b&gt;broken&lt;/b&gt;" in page.text or status == "pending"


async def test_the_failed_tab_finds_tasks_waiting_for_a_retry_among_many_pending(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.import_module(f"apalis_{kind}.browse"), "SCAN_BUDGET", 500)
    async with serve_board(kind, tmp_path, workers=WORKERS) as served:
        backend = served.queue("thumbnails")
        failing = set(await served.sink().push_bulk([{"n": n} for n in range(3)]))
        ran: set[str] = set()

        async def flaky(args: Any, task: Task[bytes]) -> None:
            ran.add(task.id)
            raise ValueError("image store refused it")

        later = Backoff(kind="constant", base=3600.0, jitter=False)
        worker = Worker(name="w", backend=backend, handler=flaky, keep_alive=0.2, poll_interval=0.05, backoff=later)
        await run_until(worker, lambda: ran == failing)
        await served.sink().push_bulk([{"n": n} for n in range(3000)])
        found, pages = await walk(served, status="failed")
        assert set(found) == failing
        # Redis reads them from its failed set; rsmq has none and walks every message, 500 a page.
        assert pages == 1 if kind == "redis" else pages >= 7
