"""Handlers: import paths, the signature decided once, sync in threads, and command handlers."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.config import Config, parse_config
from apalis_cli.errors import ConfigError
from apalis_cli.handlers import CommandFailed, load_handler, resolve_exception
from apalis_cli.task import Task, TaskContext

MODULE = """
import asyncio, threading

def plain(args):
    return {"got": args, "thread": threading.current_thread().name}

def with_task(args, task):
    return task.id

def with_ctx(args, ctx):
    return ctx.attempts

async def coro(args):
    await asyncio.sleep(0)
    return args["n"] * 2

def three(a, b, c):
    pass

NOT_CALLABLE = 3
"""


def make_config(tmp_path: Path, handler: str) -> Config:
    path = tmp_path / "jobs.toml"
    source = f'[backends.m]\nkind = "memory"\n\n[[workers]]\nname = "w"\nconcurrency = 2\nhandler = {handler}\n'
    path.write_text(source)
    return parse_config(source, path)


@pytest.fixture
def module(tmp_path: Path) -> Iterator[str]:
    name = f"handlers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    yield name
    sys.modules.pop(name, None)


def task(payload: bytes = b"{}", attempts: int = 2) -> Task[bytes]:
    return Task(id="T1", args=payload, ctx=TaskContext(queue="w", attempts=attempts, max_attempts=3))


async def call(config: Config, args: Any, t: Task[bytes] | None = None) -> Any:
    loaded = load_handler(config, config.workers[0])
    try:
        return await loaded.handler(args, t or task())
    finally:
        loaded.close()


async def test_sync_handler_runs_in_a_thread(tmp_path: Path, module: str) -> None:
    result = await call(make_config(tmp_path, f'"{module}:plain"'), {"a": 1})
    assert result["got"] == {"a": 1}
    assert result["thread"] != threading.current_thread().name


async def test_second_parameter_is_the_task_or_its_context(tmp_path: Path, module: str) -> None:
    assert await call(make_config(tmp_path, f'"{module}:with_task"'), None) == "T1"
    assert await call(make_config(tmp_path, f'"{module}:with_ctx"'), None) == 2


async def test_async_handler(tmp_path: Path, module: str) -> None:
    assert await call(make_config(tmp_path, f'"{module}:coro"'), {"n": 21}) == 42


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nowhere_at_all:f", 'no module named "nowhere_at_all"'),
        ("{module}:missing", 'has no attribute "missing"'),
        ("{module}:NOT_CALLABLE", "is not callable"),
        ("{module}:three", "takes 3 parameters"),
    ],
)
def test_bad_handlers_are_config_errors_at_the_handler_line(
    tmp_path: Path, module: str, target: str, message: str
) -> None:
    config = make_config(tmp_path, f'"{target.format(module=module)}"')
    with pytest.raises(ConfigError) as info:
        load_handler(config, config.workers[0])
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'jobs.toml'}:7: workers[0].handler: ")
    assert message in text


async def test_command_handler_gets_payload_and_environment(tmp_path: Path) -> None:
    script = tmp_path / "echo.sh"
    script.write_text('#!/bin/sh\nread line\necho "$APALIS_TASK_ID $APALIS_ATTEMPT $APALIS_QUEUE $line"\n')
    script.chmod(0o755)
    config = make_config(tmp_path, '{ command = ["./echo.sh"] }')
    assert await call(config, None, task(b'{"x":1}')) == 'T1 2 w {"x":1}'


async def test_command_failure_keeps_the_stderr_tail(tmp_path: Path) -> None:
    config = make_config(tmp_path, '{ command = ["sh", "-c", "echo first >&2; echo boom >&2; exit 3"] }')
    with pytest.raises(CommandFailed, match=r"sh exited with 3: first \| boom"):
        await call(config, None)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ('["./no-such-program"]', 'program "./no-such-program" not found'),
        ('["no-such-program-on-path"]', 'program "no-such-program-on-path" not found on PATH'),
        ('["./not-executable.sh"]', 'program "./not-executable.sh" is not an executable file'),
        ('["./"]', 'program "./" is not an executable file'),
    ],
)
def test_a_program_that_cannot_run_is_a_config_error_at_the_handler_line(
    tmp_path: Path, command: str, message: str
) -> None:
    (tmp_path / "not-executable.sh").write_text("#!/bin/sh\necho hi\n")  # mode 644: not executable
    config = make_config(tmp_path, f"{{ command = {command} }}")
    with pytest.raises(ConfigError) as info:
        load_handler(config, config.workers[0])
    assert str(info.value).startswith(f"{tmp_path / 'jobs.toml'}:7: workers[0].handler: {message}")


async def test_a_program_removed_after_start_fails_the_task(tmp_path: Path) -> None:
    script = tmp_path / "gone.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    config = make_config(tmp_path, '{ command = ["./gone.sh"] }')
    loaded = load_handler(config, config.workers[0])
    script.unlink()
    with pytest.raises(CommandFailed, match="cannot start"):
        await loaded.handler(None, task())


def test_a_module_that_exits_while_imported_is_a_config_error(tmp_path: Path) -> None:
    name = f"exits_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import sys\nsys.exit(0)\n\ndef f(args):\n    return args\n")
    config = make_config(tmp_path, f'"{name}:f"')
    with pytest.raises(ConfigError) as info:
        load_handler(config, config.workers[0])
    assert str(info.value) == (
        f'{tmp_path / "jobs.toml"}:7: workers[0].handler: cannot import "{name}:f": '
        "the module raised SystemExit (sys.exit(0)) while being imported"
    )


def test_resolve_exception(tmp_path: Path) -> None:
    assert resolve_exception("ValueError", tmp_path) is ValueError
    assert resolve_exception("json:JSONDecodeError", tmp_path).__name__ == "JSONDecodeError"
    with pytest.raises(ValueError, match="not an exception class"):
        resolve_exception("len", tmp_path)
