"""The board's control verbs refuse what they must, whatever the store: a bad filter (checked
before any store is asked) and any action on a read-only board."""

from __future__ import annotations

from pathlib import Path

import pytest
from apalis_cli.backend import Inspector, TaskSink
from apalis_cli.task import Status

from ..web_board import serve_board


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"action": "explode"}, 'action: expected one of retry, cancel, kill, purge, got "explode"'),
        ({"action": "retry", "status": "pending"}, "status: retry cannot change pending tasks"),
        ({"action": "kill", "status": "nope"}, "status: expected one of"),
        ({"action": "kill", "since": "yesterday"}, "since: expected an ISO 8601 time"),
        ({"action": "kill", "since": "1h", "until": "2h"}, "since must come before until"),
        ({"action": "kill", "limit": 0}, "limit: must be >= 1"),
    ],
)
async def test_bulk_refuses_bad_filters(tmp_path: Path, body: dict[str, object], message: str) -> None:
    async with serve_board("memory", tmp_path) as served:
        answer = await served.client.post("/api/queues/thumbnails/bulk", json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"].startswith(message)


async def test_a_read_only_board_has_no_control(tmp_path: Path) -> None:
    async with serve_board("memory", tmp_path, admin=False) as served:
        backend = served.queue("thumbnails")
        assert isinstance(backend, TaskSink)
        assert isinstance(backend, Inspector)
        task_id = await backend.push({"n": 1})
        for path, body in [
            (f"/api/tasks/{task_id}/cancel", {}),
            ("/api/queues/thumbnails/pause", {}),
            ("/api/queues/thumbnails/bulk", {"action": "cancel"}),
        ]:
            answer = await served.client.post(path, json=body)
            assert answer.status_code == 403, path
        task = await backend.get(task_id)
        assert task is not None
        assert task.ctx.status is Status.PENDING
        page = await served.client.get("/queues/thumbnails")
        for action in ("cancel", "pause", "bulk-count"):
            assert f'data-action="{action}"' not in page.text
        confirm = await served.client.get("/queues/thumbnails/bulk", params={"action": "cancel"})
        assert confirm.status_code == 400
