"""Metrics and /healthz of a running set of workers, scraped over HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from apalis_cli.codec import JsonCodec
from apalis_cli.memory import MemoryStore
from apalis_cli.metrics import Metrics, serve
from apalis_cli.supervisor import Supervisor
from apalis_cli.task import Status, Task
from apalis_cli.worker import Worker


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


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
    server = await serve(metrics, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
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
    server.close()
    await server.wait_closed()
