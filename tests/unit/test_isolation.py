"""`isolation = "process"` without a store: its config keys (file:line errors), sizes, how an
exception crosses from a child, a failed start, and what the live view and /metrics show."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from apalis_cli.cli.children import children_details
from apalis_cli.cli.live import Dashboard
from apalis_cli.config import parse_config
from apalis_cli.errors import ConfigError, Retry, describe_error
from apalis_cli.handlers import load_handler
from apalis_cli.isolation import PoolSettings, ProcessPool
from apalis_cli.isolation.procinfo import describe_exit
from apalis_cli.isolation.wire import Failed, rebuild_error
from apalis_cli.layers.timeout import TimeoutLayer, handler_started
from apalis_cli.metrics import Metrics
from apalis_cli.service import Outcome
from apalis_cli.sizes import format_size, parse_size
from apalis_cli.task import Task, TaskContext
from rich.console import Console

WORKER = """\
[[workers]]
name = "images"
handler = "iso_unit:work"
concurrency = 2
"""


def config_of(extra: str, handler: str = "") -> str:
    source = WORKER + extra
    return source.replace('handler = "iso_unit:work"\n', handler) if handler else source


def error_of(source: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(source, Path("jobs.toml"))
    return str(info.value)


def test_process_keys_are_typed_with_defaults() -> None:
    extra = 'isolation = "process"\nmax_tasks_per_child = 100\nmax_memory_per_child = "512MiB"\nkill_grace = "2s"\n'
    worker = parse_config(config_of(extra), Path("jobs.toml")).workers[0]
    assert (worker.isolation, worker.max_tasks_per_child, worker.max_memory_per_child, worker.kill_grace) == (
        "process",
        100,
        512 * 1024 * 1024,
        2.0,
    )
    plain = parse_config(WORKER, Path("jobs.toml")).workers[0]
    assert (plain.isolation, plain.max_tasks_per_child, plain.max_memory_per_child) == ("thread", None, None)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('isolation = "fork"\n', "jobs.toml:5: workers[0].isolation: expected one of thread, process, got 'fork'"),
        ("max_tasks_per_child = 5\n", 'jobs.toml:5: workers[0].max_tasks_per_child: only with isolation = "process"'),
        ('isolation = "thread"\nkill_grace = "1s"\n', "jobs.toml:6: workers[0].kill_grace: only with isolation"),
        ('isolation = "process"\nmax_tasks_per_child = 0\n', "jobs.toml:6: workers[0].max_tasks_per_child: must be >="),
        (
            'isolation = "process"\nmax_memory_per_child = 512\n',
            'jobs.toml:6: workers[0].max_memory_per_child: expected a size such as "512MB" or "2GiB", got 512',
        ),
        ('isolation = "process"\nmax_memory_per_child = "lots"\n', "max_memory_per_child: expected a size such as"),
    ],
)
def test_bad_process_keys_are_errors_at_their_line(extra: str, message: str) -> None:
    assert message in error_of(config_of(extra))


def test_a_command_handler_cannot_ask_for_processes() -> None:
    source = config_of('isolation = "process"\n', handler='handler = { command = ["./resize.sh"] }\n')
    assert "jobs.toml:5: workers[0].isolation: a command handler already runs in its own process" in error_of(source)


def test_sizes_read_as_people_write_them() -> None:
    assert parse_size("512MB") == 512_000_000
    assert parse_size("1.5 GiB") == 1536 * 1024 * 1024
    assert parse_size("800kib") == 800 * 1024
    for bad in ("12", "12 parsecs", "-1MB", "0B", 12):
        with pytest.raises(ValueError, match=r"size|between"):
            parse_size(bad)
    assert format_size(30 * 1024 * 1024) == "30.0 MiB"


def test_an_exception_crosses_as_itself_or_as_a_stand_in_named_like_it() -> None:
    retry = rebuild_error(Failed(pickle.dumps(Retry(delay=5, reason="later")), "Retry", "later", None))
    assert isinstance(retry, Retry)
    assert retry.delay == 5
    # A class the daemon never imported is not imported to read a reply: a stand-in instead.
    unknown = rebuild_error(Failed(b"\x80\x05c__nowhere__\nBoom\n.", "Boom", "it broke\nat line 3", None))
    assert describe_error(unknown) == "Boom: it broke"
    assert isinstance(unknown, Exception)
    stop = rebuild_error(Failed(pickle.dumps(SystemExit(3)), "SystemExit", "3", None))
    assert not isinstance(stop, SystemExit)
    assert describe_error(stop) == "SystemExit: 3"


def test_exits_are_described_by_signal_or_code() -> None:
    assert describe_exit(-11) == "was killed by SIGSEGV (signal 11)"
    assert describe_exit(3) == "exited with code 3"


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[ProcessPool]:
    (tmp_path / "iso_unit.py").write_text("def work(args):\n    return args\n")
    started = ProcessPool(PoolSettings(handler="iso_unit:work", base_dir=tmp_path, size=2))
    await started.start()
    yield started
    await started.close()


async def test_children_show_in_the_live_view_and_metrics(pool: ProcessPool) -> None:
    task = Task(id="t", args=b"", ctx=TaskContext(queue="q"))
    assert await pool.run({"n": 1}, task) == {"n": 1}
    pool.recycled["max_memory"] += 1  # as after a recycle
    dashboard = Dashboard(
        [("images", "images")], lambda name: 0, lambda: False, details=children_details({"images": pool})
    )
    console = Console(width=80, record=True)
    console.print(dashboard.render())
    text = console.export_text()
    assert "  2/2 children, RSS " in text
    assert "MiB, recycled 1, died 0, killed 0" in text
    assert children_details({})("images") == ()

    metrics = Metrics(lambda: [], {}, {"images": pool}).render().decode()
    assert 'apalis_worker_children{worker="images"} 2.0' in metrics
    assert 'apalis_child_rss_bytes{slot="0",worker="images"}' in metrics
    assert 'apalis_child_recycles_total{reason="max_memory",worker="images"} 1.0' in metrics


async def test_a_handler_the_children_cannot_import_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    (tmp_path / "iso_unit.py").write_text("import sys\nsys.exit(0)\n")
    config = parse_config(config_of('isolation = "process"\n'), tmp_path / "jobs.toml")
    loaded = load_handler(config, config.workers[0])
    with pytest.raises(ConfigError) as info:
        await loaded.start()
    await loaded.aclose()
    assert str(info.value).startswith(f'{tmp_path / "jobs.toml"}:3: workers[0].handler: cannot import "iso_unit:work"')
    assert "SystemExit" in str(info.value)


async def test_a_timeout_counts_from_when_the_handler_really_starts() -> None:
    async def waits_for_a_child_then_runs(task: Task[bytes]) -> Outcome:
        await asyncio.sleep(0.4)  # a fresh child process starting, under load
        handler_started()
        await asyncio.sleep(0.3)  # the handler itself: well within its 0.5 s
        return Outcome.done("ran")

    limited = TimeoutLayer(0.5)(waits_for_a_child_then_runs)
    outcome = await limited(Task(id="t", args=b"", ctx=TaskContext(queue="q")))
    assert outcome.result == "ran"
    handler_started()  # outside any timeout layer: nothing to restart
