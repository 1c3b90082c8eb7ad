"""The board's queue pages on NATS: each subject read forwards by stream sequence past a page's
last message (oldest first only, as JetStream reads), over real HTTP on a real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from apalis_nats import browse

from ..web_board import Served, serve_board, walk_pages

WORKERS = """
[[workers]]
name = "thumbnails"
backend = "main"
queue = "thumbnails"
handler = "apalis_cli.demo:resize_image"
"""


async def walk(served: Served, **params: str) -> tuple[list[str], int]:
    """Every page of the thumbnails queue's listing: the ids in order, and how many pages; each
    oldest first, whatever was asked (a subject is read forwards)."""
    seen, bodies = await walk_pages(served, **params)
    assert {body["order"] for body in bodies} == {"oldest"}
    return seen, len(bodies)


async def test_pages_of_fifty_follow_the_stream_to_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A page also ends after SCAN_SECONDS of reading: on a loaded machine (a parallel suite beside
    # other work) 0.1 s read fewer than fifty and made ten pages of 121 tasks. Pages of fifty here.
    monkeypatch.setattr(browse, "SCAN_SECONDS", 60.0)
    async with serve_board("nats", tmp_path, workers=WORKERS) as served:
        pushed = await served.sink().push_bulk([{"n": i} for i in range(120)])
        later = await served.sink().push({"n": "later"}, delay=3600)
        seen, pages = await walk(served, status="pending", order="newest")
        assert pages == 3
        assert seen == [*pushed, later]  # by stream sequence: the order they were pushed


async def test_search_finds_a_dead_letter_by_its_error_and_it_opens(tmp_path: Path) -> None:
    async with serve_board("nats", tmp_path, workers=WORKERS) as served:
        plain, broken = await served.sink().push_bulk([{"image": "cat.png"}, {"image": "<b>broken</b>.png"}])
        await served.inspector().kill(broken, "ValueError: image store said 507")
        assert (await walk(served, search="STORE SAID"))[0] == [broken]
        assert (await walk(served, search=plain))[0] == [plain]
        assert (await walk(served, status="killed"))[0] == [broken]
        page = await served.client.get(f"/tasks/{broken}", params={"queue": "thumbnails"})
        assert page.status_code == 200
        assert "&lt;b&gt;broken&lt;/b&gt;" in page.text
