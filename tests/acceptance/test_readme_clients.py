"""The README's "Talking to the queue from other clients" examples, run as written.

Each example is read from README.md (the fenced block after its `<!-- example: NAME -->` marker)
with only its constants pointed at this test's server, queue and namespace. A sending example
runs between `apalis check` (which must create the queue: no worker has run yet) and `apalis run
--burst`, whose handler records what it ran; a receiving example takes a task `apalis push` sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ..integration.pgmq_install import scratch_database
from ..nats_streams import drop_stream
from ..services import need_server
from .conftest import ROOT, Apalis

HANDLERS = """
import json
import pathlib

def record(args):
    with open(pathlib.Path(__file__).with_name("ran.jsonl"), "a") as out:
        out.write(json.dumps(args) + "\\n")
"""

WORKER = """
[[workers]]
name = "emails"
queue = "{queue}"
handler = "readme_handlers:record"
keep_alive = "1s"
poll_interval = "100ms"
"""


def example(name: str) -> str:
    """The code block of README example `name`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w+\n(.*?)\n```", text, re.S)
    assert found is not None, f"README.md has no example {name!r}"
    return found.group(1)


def with_constants(code: str, **values: Any) -> str:
    """`code` with each `NAME = ...` line (first names: `HOST, PORT` is `HOST__PORT`) given a test
    value; each constant must be there, once."""
    for key, value in values.items():
        name = key.replace("__", ", ")
        pattern = re.compile(rf"^{re.escape(name)} = .*$", re.M)
        assert len(pattern.findall(code)) == 1, f"the example sets {name} once"
        line = f"{name} = {value!r}"
        code = pattern.sub(line.replace("\\", "\\\\"), code)  # a replacement template: backslashes doubled
    return code


def run_python(code: str) -> str:
    """Run an example as its own program; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def project(tmp_path: Path) -> Apalis:
    (tmp_path / "readme_handlers.py").write_text(HANDLERS)
    return Apalis(tmp_path, tmp_path / "jobs.toml")


def ran(project: Apalis) -> list[Any]:
    path = project.cwd / "ran.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check_send_run(project: Apalis, backend: str, queue: str, send: Any) -> list[Any]:
    """`apalis check`, then `send()`, then `apalis run --burst`: what the worker ran."""
    project.write_config(backend + WORKER.format(queue=queue))
    checked = project("check")
    assert checked.code == 0, checked.out + checked.err
    send()
    burst = project("run", "--burst", "--no-live", "--log-format", "json")
    assert burst.code == 0, burst.err
    return ran(project)


def push(project: Apalis, args: str) -> str:
    pushed = project("push", args)
    assert pushed.code == 0, pushed.err
    return pushed.out.strip()


# -- RabbitMQ -----------------------------------------------------------------------------------


@pytest.fixture
def amqp_prefix() -> Iterator[str]:
    import aio_pika

    prefix = f"readme{uuid.uuid4().hex[:10]}"
    yield prefix

    async def drop() -> None:
        connection = await aio_pika.connect(need_server("amqp"))
        channel = await connection.channel()
        for name in (f"{prefix}.emails", f"{prefix}.emails.dead", f"{prefix}.emails.paused", f"{prefix}.emails.finals"):
            await channel.queue_delete(name)
        await channel.exchange_delete(f"{prefix}.emails.control")
        await connection.close()

    asyncio.run(drop())


def test_amqp_examples_send_to_and_receive_from_a_worker(project: Apalis, amqp_prefix: str) -> None:
    url = need_server("amqp")
    backend = f'[backends.main]\nkind = "amqp"\nurl = "{url}"\nprefix = "{amqp_prefix}"\n'
    send = with_constants(example("amqp-send"), URL=url, QUEUE=f"{amqp_prefix}.emails")
    assert check_send_run(project, backend, "emails", lambda: run_python(send)) == [{"to": "ada@example.com"}]

    task_id = push(project, '{"n": 7}')
    receive = with_constants(example("amqp-receive"), URL=url, QUEUE=f"{amqp_prefix}.emails")
    assert run_python(receive).split(" ", 1) == [task_id, "{'n': 7}\n"]


def test_run_burst_runs_every_task_apalis_push_sent_on_amqp(project: Apalis, amqp_prefix: str) -> None:
    url = need_server("amqp")
    project.write_config(
        f'[backends.main]\nkind = "amqp"\nurl = "{url}"\nprefix = "{amqp_prefix}"\n' + WORKER.format(queue="emails")
    )
    tasks = project.cwd / "tasks.jsonl"
    tasks.write_text("".join(f'{{"n": {n}}}\n' for n in range(30)))
    assert project("push", "--file", str(tasks)).code == 0
    burst = project("run", "--burst", "--no-live", "--concurrency", "4")
    assert burst.code == 0, burst.err
    assert sorted(row["n"] for row in ran(project)) == list(range(30))
    assert project("run", "--burst", "--no-live").code == 0  # nothing left: returns at once
    assert len(ran(project)) == 30


# -- NATS ---------------------------------------------------------------------------------------


@pytest.fixture
def nats_tag() -> Iterator[str]:
    import nats

    tag = uuid.uuid4().hex[:10]
    yield tag

    async def drop() -> None:
        client = await nats.connect(need_server("nats"))
        await drop_stream(client.jetstream(), f"README{tag}")
        await client.close()

    asyncio.run(drop())


def test_nats_examples_send_to_and_receive_from_a_worker(project: Apalis, nats_tag: str) -> None:
    url = need_server("nats")
    stream, prefix = f"README{nats_tag}", f"readme{nats_tag}"
    backend = (
        f'[backends.main]\nkind = "nats"\nurl = "{url}"\nstream = "{stream}"\nprefix = "{prefix}"\nstorage = "memory"\n'
    )
    send = with_constants(example("nats-send"), URL=url, SUBJECT=f"{prefix}.q.emails")
    assert check_send_run(project, backend, "emails", lambda: run_python(send)) == [{"to": "ada@example.com"}]

    task_id = push(project, '{"n": 7}')
    receive = with_constants(example("nats-receive"), URL=url, STREAM=stream, QUEUE="emails")
    assert run_python(receive).split(" ", 1) == [task_id, "{'n': 7}\n"]


# -- rsmq ---------------------------------------------------------------------------------------


@pytest.fixture
def rsmq_namespace() -> Iterator[str]:
    import redis

    namespace = f"readme-{uuid.uuid4().hex[:10]}"
    yield namespace
    client = redis.Redis.from_url(need_server("redis"))
    keys = list(client.scan_iter(f"{namespace}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_rsmq_examples_send_to_and_receive_from_a_worker(project: Apalis, rsmq_namespace: str) -> None:
    url = need_server("redis")
    backend = f'[backends.main]\nkind = "rsmq"\nurl = "{url}"\nnamespace = "{rsmq_namespace}"\n'
    where = {"HOST__PORT": ("127.0.0.1", 6379), "NAMESPACE": rsmq_namespace, "QUEUE": "emails"}
    send = with_constants(example("rsmq-send"), **where)
    assert check_send_run(project, backend, "emails", lambda: run_python(send)) == [{"to": "ada@example.com"}]

    task_id = push(project, '{"n": 7}')
    receive = with_constants(example("rsmq-receive"), **where)
    assert run_python(receive).split(" ", 1) == [task_id, "{'n': 7}\n"]


# -- pgmq ---------------------------------------------------------------------------------------


def run_sql(url: str, script: str, queue: str) -> list[Any]:
    """The example's statements with its queue renamed, one by one; the last one's rows."""
    rows: list[Any] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in script.replace("'emails'", f"'{queue}'").split(";\n"):
            body = "\n".join(line.split("--")[0] for line in statement.splitlines()).strip().rstrip(";")
            if body:
                rows = conn.execute(body).fetchall()
    return rows


def test_pgmq_examples_send_to_and_receive_from_a_worker(project: Apalis) -> None:
    url = scratch_database(need_server("postgres"))
    queue = f"readme_{uuid.uuid4().hex[:10]}"
    backend = f'[backends.main]\nkind = "pgmq"\nurl = "{url}"\n'
    send = example("pgmq-send")
    done = check_send_run(project, backend, queue, lambda: run_sql(url, send, queue))
    assert done == [{"to": "ada@example.com"}, {"to": "bob@example.com"}]

    task_id = push(project, '{"n": 7}')
    [(msg_id, message)] = run_sql(url, example("pgmq-receive"), queue)
    assert (str(msg_id), message) == (task_id, {"n": 7})
