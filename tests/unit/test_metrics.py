"""Metrics and /healthz of a running set of workers, scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from apalis_cli.backend import WorkerContext
from apalis_cli.codec import JsonCodec
from apalis_cli.events import masking
from apalis_cli.memory import MemoryQueue, MemoryStore
from apalis_cli.metrics import Metrics
from apalis_cli.redact import secrets_in
from apalis_cli.supervisor import Supervisor
from apalis_cli.task import Status, Task
from apalis_cli.web.health import serving_metrics
from apalis_cli.worker import Worker


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{port}{path}")
        return answer.status_code, answer.content


async def test_metrics_count_outcomes_and_healthz_follows_the_workers() -> None:
    queue = MemoryStore().backend("mail", codec=JsonCodec(), max_attempts=1)
    await queue.push_bulk([1, 2, 3])
    await queue.push("fail")

    async def handler(args: Any, task: Task[bytes]) -> int:
        if args == "fail":
            raise ValueError("no")
        return int(args)

    supervisor = Supervisor([lambda: Worker(name="mailer", backend=queue, handler=handler, keep_alive=0.1)])
    metrics = Metrics(lambda: supervisor.workers, {"mail": queue})
    supervisor.subscribe(metrics)
    async with serving_metrics(metrics, "127.0.0.1", 0, option="--metrics-addr") as port:
        status, _ = await http_get(port, "/healthz")
        assert status == 503  # no worker has started yet

        running = asyncio.create_task(supervisor.run())
        for _ in range(100):
            await asyncio.sleep(0.02)
            if (await queue.stats()).counts[Status.DONE] == 3:
                break
        status, body = await http_get(port, "/healthz")
        assert status == 200, body
        assert json.loads(body)["workers"]["mailer"]["state"] == "running"

        status, text = await http_get(port, "/metrics")
        assert status == 200
        lines = text.decode().splitlines()
        assert 'apalis_tasks_total{queue="mail",status="done",worker="mailer"} 3.0' in lines
        assert 'apalis_tasks_total{queue="mail",status="killed",worker="mailer"} 1.0' in lines
        assert 'apalis_task_duration_seconds_count{queue="mail",worker="mailer"} 4.0' in lines
        assert 'apalis_queue_depth{queue="mail",status="done"} 3.0' in lines
        assert 'apalis_tasks_running{queue="mail",worker="mailer"} 0.0' in lines

        supervisor.stop()
        await running
        status, body = await http_get(port, "/healthz")
        assert status == 503
        assert json.loads(body)["workers"]["mailer"]["state"] == "stopped"
        assert (await http_get(port, "/nothing"))[0] == 404


async def test_healthz_shows_a_failed_heartbeat_without_the_secrets_it_echoed() -> None:
    # How `apalis run` wires it: every listener hears events through `masking`, with the secrets
    # of the config's URLs; the store's error names the URL and echoes a piece of the password.
    url = "postgresql://u:S3cr3tPw@x@db/app?sslpassword=Ssl5ecret"

    class LostBeats(MemoryQueue):
        def heartbeat(self, worker: WorkerContext) -> AsyncIterator[None]:
            return self._beats()

        async def _beats(self) -> AsyncIterator[None]:
            raise ConnectionError(f"lost {url}: failed to resolve host 'x@db'")
            yield None  # pragma: no cover - makes this an async generator

    store = MemoryStore()
    plain = store.backend("mail", codec=JsonCodec())
    queue = LostBeats(store, plain._state, "mail", codec=JsonCodec(), max_attempts=1)

    async def handler(args: Any, task: Task[bytes]) -> None:
        return None

    supervisor = Supervisor([lambda: Worker(name="mailer", backend=queue, handler=handler, keep_alive=0.05)])
    metrics = Metrics(lambda: supervisor.workers, {})
    supervisor.subscribe(masking([metrics], secrets_in(url)))
    async with serving_metrics(metrics, "127.0.0.1", 0, option="--metrics-addr") as port:
        running = asyncio.create_task(supervisor.run())
        for _ in range(200):
            await asyncio.sleep(0.02)
            if metrics.health.get("mailer") and metrics.health["mailer"].error:
                break
        _, body = await http_get(port, "/healthz")
        supervisor.stop()
        await running
    error = json.loads(body)["workers"]["mailer"]["error"]
    assert error == "ConnectionError: lost postgresql://u:***@db/app?sslpassword=***: failed to resolve host '***@db'"


async def test_a_paused_queue_and_cancelled_runs_show_in_metrics_and_healthz() -> None:
    queue = MemoryStore().backend("mail", codec=JsonCodec(), max_attempts=3)
    started = asyncio.Event()

    async def handler(args: Any, task: Task[bytes]) -> None:
        started.set()
        await asyncio.sleep(60)

    supervisor = Supervisor([lambda: Worker(name="mailer", backend=queue, handler=handler, keep_alive=0.05)])
    metrics = Metrics(lambda: supervisor.workers, {"mail": queue})
    supervisor.subscribe(metrics)
    async with serving_metrics(metrics, "127.0.0.1", 0, option="--metrics-addr") as port:
        running = asyncio.create_task(supervisor.run())
        task_id = await queue.push("x")
        await started.wait()
        await queue.cancel(task_id, "not wanted")
        await queue.pause()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if metrics.paused_queues() == ["mail"] and (await queue.stats()).counts[Status.CANCELLED] == 1:
                break

        status, body = await http_get(port, "/healthz")
        assert status == 200, "a paused queue is no fault"
        assert json.loads(body)["paused_queues"] == ["mail"]
        _, text = await http_get(port, "/metrics")
        lines = text.decode().splitlines()
        assert 'apalis_queue_paused{queue="mail"} 1.0' in lines
        assert 'apalis_tasks_total{queue="mail",status="cancelled",worker="mailer"} 1.0' in lines
        assert 'apalis_queue_depth{queue="mail",status="cancelled"} 1.0' in lines

        await queue.resume()
        metrics._depth_at = float("-inf")  # the next scrape counts again
        _, text = await http_get(port, "/metrics")
        assert 'apalis_queue_paused{queue="mail"} 0.0' in text.decode().splitlines()
        supervisor.stop()
        await running
