"""The board's control verbs over real HTTP: cancel a task, pause and resume a queue, act on every
task a filter matches (the JSON API, the forms, and the count a person sees before confirming).

Run on every store the board serves; a store that lacks a capability is checked to answer 409
with its declared reason, then skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apalis_cli.backend import Capability, Inspector, TaskSink
from apalis_cli.registry import Registry
from apalis_cli.task import Status

from ..web_board import Served, serve_board

# rsmq is left out: its queue names refuse the markup queue of the board's test config.
pytestmark = pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres", "mysql", "redis"])


def lacking(kind: str, capability: Capability) -> str | None:
    return Registry().store_class(kind).capabilities.why_not(capability)


async def needs(served: Served, kind: str, capability: Capability, path: str, body: dict[str, object]) -> None:
    """Skip a store that lacks `capability`, once the API has said so: 409 and the reason."""
    why = lacking(kind, capability)
    if why is None:
        return
    answer = await served.client.post(path, json=body)
    assert answer.status_code == 409, answer.text
    assert why in answer.json()["error"]
    pytest.skip(f"{kind} lacks {capability.value}: {why}")


def sink(served: Served, queue: str = "thumbnails") -> TaskSink:
    backend = served.queue(queue)
    assert isinstance(backend, TaskSink)
    return backend


def inspector(served: Served, queue: str = "thumbnails") -> Inspector:
    backend = served.queue(queue)
    assert isinstance(backend, Inspector)
    return backend


async def status(served: Served, task_id: str) -> Status:
    task = await inspector(served).get(task_id)
    assert task is not None
    return task.ctx.status


async def test_cancel_a_task(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        task_id = await sink(served).push({"n": 1})
        path = f"/api/tasks/{task_id}/cancel"
        await needs(served, kind, Capability.CANCEL, path, {"queue": "thumbnails"})
        answer = await served.client.post(path, json={"queue": "thumbnails", "reason": "wrong <b>customer</b>"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"cancelled": task_id, "state": "cancelled"}
        task = await inspector(served).get(task_id)
        assert task is not None
        assert (task.ctx.status, task.ctx.last_error) == (Status.CANCELLED, "wrong <b>customer</b>")
        again = await served.client.post(path, json={})  # found without its queue too
        assert (again.status_code, again.json()) == (409, {"error": f"cannot cancel task {task_id}: it is cancelled"})
        missing = await served.client.post("/api/tasks/nope/cancel", json={"queue": "thumbnails"})
        assert missing.status_code == 404
        queues = {q["queue"]: q for q in (await served.client.get("/api/queues")).json()}
        assert queues["thumbnails"]["counts"]["cancelled"] == 1
        # The task page shows it cancelled, with the reason as text, and offers a retry.
        page = await served.client.get(f"/tasks/{task_id}", params={"queue": "thumbnails"})
        assert 'class="badge cancelled"' in page.text
        assert "wrong &lt;b&gt;customer&lt;/b&gt;" in page.text
        assert 'data-action="retry"' in page.text


async def test_cancel_from_the_task_page_form(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        task_id = await sink(served).push({"n": 1})
        page = await served.client.get(f"/tasks/{task_id}", params={"queue": "thumbnails"})
        if lacking(kind, Capability.CANCEL):
            assert 'data-action="cancel"' not in page.text
            pytest.skip(f"{kind} lacks cancel")
        assert 'data-action="cancel"' in page.text
        csrf = await served.csrf(f"/tasks/{task_id}?queue=thumbnails")
        here = f"/tasks/{task_id}?queue=thumbnails"
        posted = await served.client.post(
            f"/api/tasks/{task_id}/cancel", data={"csrf": csrf, "next": here, "queue": "thumbnails"}
        )
        assert posted.status_code == 303
        assert posted.headers["location"] == here
        assert await status(served, task_id) is Status.CANCELLED
        shown = await served.client.get(here)
        assert "will never start" in shown.text  # the flash


async def test_pause_and_resume_a_queue(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        await needs(served, kind, Capability.PAUSE, "/api/queues/thumbnails/pause", {})
        overview = await served.client.get("/")
        assert re.search(r'data-queue="thumbnails".*?badge active', overview.text, re.S)
        paused = await served.client.post("/api/queues/thumbnails/pause", json={})
        assert paused.json() == {"paused": True, "changed": True}
        again = await served.client.post("/api/queues/thumbnails/pause", json={})
        assert again.json() == {"paused": True, "changed": False}
        queues = {q["queue"]: q for q in (await served.client.get("/api/queues")).json()}
        assert queues["thumbnails"]["paused"] is True
        assert queues["packed"]["paused"] is False
        overview = await served.client.get("/")
        assert re.search(r'data-queue="thumbnails".*?badge paused.*?data-action="resume"', overview.text, re.S)
        page = await served.client.get("/queues/thumbnails")
        assert 'id="paused-badge">paused' in page.text
        resumed = await served.client.post("/api/queues/thumbnails/resume", json={})
        assert resumed.json() == {"paused": False, "changed": True}
        queues = {q["queue"]: q for q in (await served.client.get("/api/queues")).json()}
        assert queues["thumbnails"]["paused"] is False


async def test_bulk_by_filter_counts_then_acts(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        ids = await sink(served).push_bulk([{"n": n} for n in range(5)])
        for task_id in ids[:3]:
            assert await inspector(served).kill(task_id, "ValueError: disk full")
        for task_id in ids[3:]:
            assert await inspector(served).kill(task_id, "KeyError: width")
        path = "/api/queues/thumbnails/bulk"
        await needs(served, kind, Capability.BULK, path, {"action": "retry"})
        body = {"action": "retry", "status": ["killed"], "error_contains": "DISK", "since": "1h"}
        counted = await served.client.post(path, json={**body, "dry_run": True})
        assert counted.json() == {"action": "retry", "would_change": 3}, counted.text
        assert {await status(served, t) for t in ids} == {Status.KILLED}

        # The page a person sees first: the count, and the button that does it.
        query = {"action": "retry", "status": "killed", "error_contains": "DISK", "since": "1h"}
        confirm = await served.client.get("/queues/thumbnails/bulk", params=query)
        assert confirm.status_code == 200, confirm.text
        assert re.search(r'id="bulk-count">\s*<b>3</b> tasks', confirm.text)
        assert 'data-action="bulk-retry"' in confirm.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', confirm.text)
        assert csrf is not None
        form = {"csrf": csrf.group(1), "next": "/queues/thumbnails", "action": "retry", "status": "killed"}
        form |= {"error_contains": "DISK", "since": "1h", "until": "", "limit": ""}
        done = await served.client.post(path, data=form)
        assert done.status_code == 303, done.text
        assert [await status(served, t) for t in ids] == [Status.PENDING] * 3 + [Status.KILLED] * 2

        purged = await served.client.post(path, json={"action": "purge", "limit": 1})
        assert purged.json() == {"action": "purge", "changed": 1}
        assert len(await inspector(served).list_tasks(Status.KILLED, 10)) == 1
        cancelled = await served.client.post(path, json={"action": "cancel"})
        assert cancelled.json() == {"action": "cancel", "changed": 3}


async def test_bulk_cancel_and_kill_keep_the_operators_reason(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        ids = await sink(served).push_bulk([{"n": n} for n in range(4)])
        path = "/api/queues/thumbnails/bulk"
        await needs(served, kind, Capability.BULK, path, {"action": "cancel", "reason": "x"})
        reason = "wrong <b>customer</b>"
        cancelled = await served.client.post(path, json={"action": "cancel", "limit": 2, "reason": reason})
        assert cancelled.json() == {"action": "cancel", "changed": 2}, cancelled.text

        # The form: the count page shows the reason as text and carries it to the button's post.
        query = {"action": "kill", "status": "pending", "reason": "poison <i>batch</i>"}
        confirm = await served.client.get("/queues/thumbnails/bulk", params=query)
        assert confirm.status_code == 200, confirm.text
        assert "Each keeps the reason “poison &lt;i&gt;batch&lt;/i&gt;”" in confirm.text
        assert "<i>batch" not in confirm.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', confirm.text)
        assert csrf is not None
        form = {"csrf": csrf.group(1), "next": "/queues/thumbnails", **query}
        assert (await served.client.post(path, data=form)).status_code == 303

        ended = {task_id: await inspector(served).get(task_id) for task_id in ids}
        kept = sorted((t.ctx.status.value, t.ctx.last_error or "") for t in ended.values() if t is not None)
        assert kept == [("cancelled", reason)] * 2 + [("killed", "poison <i>batch</i>")] * 2
        one = next(i for i, t in ended.items() if t is not None and t.ctx.status is Status.CANCELLED)
        task_page = await served.client.get(f"/tasks/{one}", params={"queue": "thumbnails"})
        assert "wrong &lt;b&gt;customer&lt;/b&gt;" in task_page.text

        for action in ("retry", "purge"):  # they keep no reason
            refused = await served.client.post(path, json={"action": action, "reason": "why not"})
            assert refused.status_code == 400, refused.text
            assert refused.json() == {"error": f"reason: {action} keeps no reason (cancel and kill do)"}
        assert {await status(served, t) for t in ids} == {Status.CANCELLED, Status.KILLED}


async def test_a_reason_is_kept_as_a_runs_error_is(kind: str, tmp_path: Path) -> None:
    # No NUL (PostgreSQL refuses one) and at most MAX_ERROR_CHARS, by id as by filter.
    from apalis_cli.errors import MAX_ERROR_CHARS, storable_text

    async with serve_board(kind, tmp_path) as served:
        cancelled, killed = await sink(served).push_bulk([{"n": 1}, {"n": 2}])
        reason = "wrong\x00 customer " + "é" * MAX_ERROR_CHARS
        await needs(served, kind, Capability.CANCEL, f"/api/tasks/{cancelled}/cancel", {"queue": "thumbnails"})
        for task_id, verb in ((cancelled, "cancel"), (killed, "kill")):
            answer = await served.client.post(
                f"/api/tasks/{task_id}/{verb}", json={"queue": "thumbnails", "reason": reason}
            )
            assert answer.status_code == 200, answer.text
            task = await inspector(served).get(task_id)
            assert task is not None
            assert task.ctx.last_error == storable_text(reason)
