"""The board's JSON API over real HTTP, on real stores (SQLite, PostgreSQL, MySQL/MariaDB)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import msgpack
import pytest
from apalis_cli.backend import Inspector, TaskSink
from apalis_cli.task import Status

from ..web_board import WORKERS, Served, serve_board

pytestmark = pytest.mark.parametrize("kind", ["sqlite", "postgres", "mysql"])


def sink(served: Served, queue: str) -> TaskSink:
    backend = served.queue(queue)
    assert isinstance(backend, TaskSink)
    return backend


def inspector(served: Served, queue: str) -> Inspector:
    backend = served.queue(queue)
    assert isinstance(backend, Inspector)
    return backend


async def test_queues_lists_every_queue_with_its_counts(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        ids = await sink(served, "thumbnails").push_bulk([{"n": i} for i in range(3)])
        await inspector(served, "thumbnails").kill(ids[0], "bad input")
        answer = await served.client.get("/api/queues")
        assert answer.status_code == 200
        queues = {q["queue"]: q for q in answer.json()}
        assert set(queues) == {"thumbnails", "packed", "<script>alert('q')</script>"}
        thumbs = queues["thumbnails"]
        assert thumbs["backend"] == "main"
        assert thumbs["kind"] == kind
        assert thumbs["counts"]["pending"] == 2
        assert thumbs["counts"]["killed"] == 1
        assert thumbs["oldest_ready_age"] is not None
        assert thumbs["oldest_ready_age"] >= 0
        assert len(thumbs["finished_per_minute"]) == 60
        assert sum(m["failed"] for m in thumbs["finished_per_minute"]) == 1  # the kill, this minute
        assert queues["packed"]["counts"]["pending"] == 0


async def test_pages_of_fifty_follow_the_keyset_to_the_end(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        pushed = await sink(served, "thumbnails").push_bulk([{"n": i} for i in range(120)])
        seen: list[str] = []
        keys: list[tuple[float, str]] = []
        after: str | None = None
        pages = 0
        while True:
            params = {"status": "pending", "order": "oldest", **({"after": after} if after else {})}
            answer = await served.client.get("/api/queues/thumbnails/tasks", params=params)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            pages += 1
            seen += [t["id"] for t in body["tasks"]]
            keys += [(t["run_at_epoch"], t["id"]) for t in body["tasks"]]
            assert len(body["tasks"]) <= 50
            after = body["next"]
            if after is None or pages > 5:
                break
        assert pages == 3
        assert sorted(seen) == sorted(pushed)  # every task once
        assert keys == sorted(keys)  # by (run_at, id)
        newest = (await served.client.get("/api/queues/thumbnails/tasks", params={"limit": 5})).json()
        assert [(t["run_at_epoch"], t["id"]) for t in newest["tasks"]] == sorted(keys, reverse=True)[:5]


async def test_search_finds_by_id_key_and_error_text(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        thumbs = sink(served, "thumbnails")
        plain = await thumbs.push({"n": 1})
        keyed = await thumbs.push({"n": 2}, idempotency_key="invoice-42")
        broken = await thumbs.push({"n": 3})
        await inspector(served, "thumbnails").kill(broken, "ValueError: Image 100% too LARGE_x")

        async def found(text: str, **extra: str) -> list[str]:
            answer = await served.client.get("/api/queues/thumbnails/tasks", params={"search": text, **extra})
            assert answer.status_code == 200, answer.text
            return [t["id"] for t in answer.json()["tasks"]]

        assert await found(plain) == [plain]
        assert await found("invoice-42") == [keyed]
        assert await found("too large") == [broken]  # any case
        assert await found("100%") == [broken]
        assert await found("100_") == []  # LIKE's wildcards are taken literally
        assert await found("too large", status="pending") == []
        assert await found("nothing like it") == []


async def test_a_task_is_shown_with_its_payload_decoded(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        json_id = await sink(served, "thumbnails").push({"image": "cat.png", "width": 128})
        packed_id = await sink(served, "packed").push({"image": "dog.png", "sizes": [1, 2]})
        answer = await served.client.get(f"/api/tasks/{json_id}", params={"queue": "thumbnails"})
        assert answer.status_code == 200
        task = answer.json()
        assert task["args"] == {"image": "cat.png", "width": 128}
        assert task["decoded_as"] == "json"
        assert task["status"] == "pending"
        packed = (await served.client.get(f"/api/tasks/{packed_id}")).json()  # found without ?queue=
        assert packed["args"] == {"image": "dog.png", "sizes": [1, 2]}
        assert packed["decoded_as"] == "msgpack"
        assert packed["payload_encoding"] == "hex"
        assert bytes.fromhex(packed["payload"]) == msgpack.packb({"image": "dog.png", "sizes": [1, 2]})
        missing = await served.client.get("/api/tasks/nope")
        assert missing.status_code == 404
        assert "nope" in missing.json()["error"]


async def test_retry_kill_and_purge_act_on_the_store(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        thumbs = sink(served, "thumbnails")
        first, second = await thumbs.push_bulk([{"n": 1}, {"n": 2}])
        killed = await served.client.post(f"/api/tasks/{first}/kill", json={"queue": "thumbnails", "reason": "r"})
        assert killed.status_code == 200, killed.text
        task = await inspector(served, "thumbnails").get(first)
        assert task is not None
        assert task.ctx.status is Status.KILLED
        assert task.ctx.last_error == "r"
        again = await served.client.post(f"/api/tasks/{first}/kill", json={})
        assert again.status_code == 409
        assert again.json()["error"] == f"cannot kill task {first}: it is killed"
        retried = await served.client.post(f"/api/tasks/{first}/retry", json={"queue": "thumbnails"})
        assert retried.status_code == 200
        task = await inspector(served, "thumbnails").get(first)
        assert task is not None
        assert task.ctx.status is Status.PENDING
        await inspector(served, "thumbnails").kill(second)
        counted = await served.client.post("/api/queues/thumbnails/purge", json={"status": "killed", "dry_run": True})
        assert counted.json() == {"would_purge": 1}
        assert await inspector(served, "thumbnails").get(second) is not None
        purged = await served.client.post("/api/queues/thumbnails/purge", json={"status": "killed"})
        assert purged.json() == {"purged": 1}
        assert await inspector(served, "thumbnails").get(second) is None


async def test_push_checks_the_json_and_the_options(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        pushed = await served.client.post(
            "/api/queues/thumbnails/tasks", json={"args": {"to": "ada"}, "priority": 5, "idempotency_key": "k1"}
        )
        assert pushed.status_code == 200, pushed.text
        task = await inspector(served, "thumbnails").get(pushed.json()["id"])
        assert task is not None
        assert task.ctx.priority == 5
        assert task.ctx.idempotency_key == "k1"
        assert bytes(task.args) == b'{"to":"ada"}'
        bad = [
            ({"priority": 1}, "args: missing"),
            ({"args": 1, "priority": 2**40}, "priority: must be <= 2147483647"),
            ({"args": 1, "delay": "soon"}, "delay: expected a duration"),
            ({"args": 1, "max_attempts": 0}, "max_attempts: must be >= 1"),
            ({"args": 1, "run_at": "yesterday"}, "run_at: expected an ISO 8601 time"),
        ]
        for body, message in bad:
            answer = await served.client.post("/api/queues/thumbnails/tasks", json=body)
            assert answer.status_code == 400, body
            assert answer.json()["error"].startswith(message), answer.json()
        token = await served.csrf("/queues/thumbnails")
        form = await served.client.post(
            "/api/queues/thumbnails/tasks", data={"csrf": token, "next": "/queues/thumbnails", "args": "{nope"}
        )
        assert form.status_code == 303  # back to the page, which says why
        page = await served.client.get(form.headers["location"])
        assert "args: not JSON: Expecting property name" in html.unescape(page.text)
        stats = await inspector(served, "thumbnails").stats()
        assert stats.counts[Status.PENDING] == 1  # nothing else was pushed


async def test_a_read_only_board_refuses_every_action(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, admin=False) as served:
        task_id = await sink(served, "thumbnails").push({"n": 1})
        for path in (f"/api/tasks/{task_id}/kill", "/api/queues/thumbnails/purge", "/api/queues/thumbnails/tasks"):
            answer = await served.client.post(path, json={"status": "pending", "args": 1})
            assert answer.status_code == 403
            assert "read-only" in answer.json()["error"]
        page = await served.client.get(f"/tasks/{task_id}", params={"queue": "thumbnails"})
        assert "<form" not in page.text  # no buttons either
        task = await inspector(served, "thumbnails").get(task_id)
        assert task is not None
        assert task.ctx.status is Status.PENDING


async def test_a_form_needs_the_csrf_token_of_its_cookie(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        task_id = await sink(served, "thumbnails").push({"n": 1})
        kill = f"/api/tasks/{task_id}/kill"
        assert (await served.client.post(kill, data={"queue": "thumbnails"})).status_code == 403
        assert (await served.client.post(kill, data={"queue": "thumbnails", "csrf": "0" * 64})).status_code == 403
        token = await served.csrf("/queues/thumbnails")
        async with httpx.AsyncClient(base_url=served.url) as stranger:  # the token, not its cookie
            stolen = await stranger.post(kill, data={"queue": "thumbnails", "csrf": token})
            assert stolen.status_code == 403
            await stranger.get("/")  # a cookie of its own does not match the token either
            assert (await stranger.post(kill, data={"queue": "thumbnails", "csrf": token})).status_code == 403
        plain = await served.client.post(kill, content=b"x", headers={"content-type": "text/plain"})
        assert plain.status_code == 400  # neither JSON nor a form (a cross-site text/plain post)
        task = await inspector(served, "thumbnails").get(task_id)
        assert task is not None
        assert task.ctx.status is Status.PENDING
        accepted = await served.client.post(kill, data={"queue": "thumbnails", "csrf": token, "next": "/x"})
        assert accepted.status_code == 303
        assert accepted.headers["location"] == "/x"
        task = await inspector(served, "thumbnails").get(task_id)
        assert task is not None
        assert task.ctx.status is Status.KILLED
        away = await served.client.post(kill, data={"queue": "thumbnails", "csrf": token, "next": "//evil.example/"})
        assert away.headers["location"] == "/"  # never redirected to another site


async def test_stored_markup_is_shown_as_text_on_every_page(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        queue = "<script>alert('q')</script>"
        evil = "<img src=x onerror=alert(1)>"
        task_id = await sink(served, queue).push({"html": evil}, idempotency_key="<b>key</b>")
        await inspector(served, queue).kill(task_id, f"</pre><script>alert('e')</script>{evil}")
        pages = [
            await served.client.get("/"),
            await served.client.get("/queues/" + queue.replace("/", "%2F")),
            await served.client.get(f"/tasks/{task_id}"),
            await served.client.get("/workers"),
        ]
        for page in pages:
            assert page.status_code == 200, page.text
            assert "<script>alert" not in page.text
            assert "<img src=x" not in page.text
            assert "<b>key</b>" not in page.text
            assert "'unsafe-inline'" not in page.headers["content-security-policy"]
        task_page = pages[2].text
        assert "&lt;script&gt;alert(&#39;e&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in task_page
        assert "&lt;img src=x onerror=alert(1)&gt;" in task_page  # the payload, pretty-printed
        assert "&lt;script&gt;alert(&#39;q&#39;)&lt;/script&gt;" in pages[0].text


async def test_a_token_guards_pages_and_api(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, token="s3cret") as served:
        assert (await served.client.get("/api/queues")).status_code == 401
        assert (await served.client.get("/api/queues", headers={"authorization": "Bearer nope"})).status_code == 401
        assert (await served.client.get("/api/queues", headers={"authorization": "Bearer s3cret"})).status_code == 200
        page = await served.client.get("/queues/thumbnails")
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login?next=")
        login = await served.client.get("/login")
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', login.text)
        assert token
        wrong = await served.client.post("/login", data={"csrf": token.group(1), "token": "nope", "next": "/"})
        assert "That is not the token" in wrong.text
        signed = await served.client.post("/login", data={"csrf": token.group(1), "token": "s3cret", "next": "/"})
        assert signed.status_code == 303
        assert (await served.client.get("/api/queues")).status_code == 200  # the session cookie
        assert (await served.client.get("/healthz")).status_code == 200


async def test_a_foreign_host_is_refused_on_loopback(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path) as served:
        rebound = await served.client.get("/api/queues", headers={"host": "attacker.example:8080"})
        assert rebound.status_code == 421
        for host in ("localhost:1", "127.0.0.1", "[::1]:8080"):
            assert (await served.client.get("/api/queues", headers={"host": host})).status_code == 200, host


DOWN = """
[backends.down]
kind = "postgres"
url = "postgresql://apalis:hunter2@127.0.0.1:1/jobs?sslpassword=hunter2"

[[workers]]
name = "elsewhere"
backend = "down"
handler = "apalis_cli.demo:resize_image"
"""


async def test_an_unreachable_store_is_shown_with_its_password_masked(kind: str, tmp_path: Path) -> None:
    async with serve_board(kind, tmp_path, workers=WORKERS + DOWN) as served:
        queues = {q["queue"]: q for q in (await served.client.get("/api/queues")).json()}
        down = queues["elsewhere"]
        assert down["counts"] is None
        assert down["error"]
        assert down["url"] == "postgresql://apalis:***@127.0.0.1:1/jobs?sslpassword=***"
        assert queues["thumbnails"]["error"] is None  # the others are served all the same
        pages = [
            await served.client.get("/"),
            await served.client.get("/queues/elsewhere"),
            await served.client.get("/api/queues"),
            await served.client.get("/healthz"),
        ]
        for page in pages:
            assert "hunter2" not in page.text
        assert "unreachable" in pages[0].text
        assert "postgresql://apalis:***@127.0.0.1:1/jobs" in pages[1].text
        assert pages[3].status_code == 503
