"""User handlers, adapted to the worker's `Handler = (args, task) -> Awaitable[result]`.

A handler is either a Python callable named `"package.module:function"` or a command run once
per task. How a callable is called is decided once, at start-up, from its signature:

- `def f(args)` / `async def f(args)`: the decoded arguments only;
- `def f(args, ctx)` (a second parameter named `ctx` or `context`): also the `TaskContext`;
- `def f(args, task)` (any other second parameter): also the `Task` (id, context).

Sync callables run in a thread pool sized to the worker's concurrency, so a blocking handler
never stalls the event loop; a thread cannot be stopped, so a cancelled run waits for its thread
before its task may go back to the queue (`LoadedHandler.stoppable`). A run cancelled by an
operator sets `ctx.cancelled` for the thread to see (a handler that takes `ctx` polls it).

A command (`{ command = ["./resize.sh"] }`) gets the compact payload on stdin and
`APALIS_TASK_ID`, `APALIS_ATTEMPT`, `APALIS_QUEUE` in its environment; exit 0 is success (stdout
is the result), anything else a failure whose error is the tail of stderr.
"""

from __future__ import annotations

import asyncio
import builtins
import contextvars
import functools
import importlib
import inspect
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import loops
from .config import CommandHandler, Config, ImportHandler, WorkerConfig
from .errors import HandlerExit, describe_error
from .isolation.stopping import despite_cancellation, terminate_group
from .task import Task
from .worker import Handler

if TYPE_CHECKING:
    from .isolation import ProcessPool

__all__ = [
    "CallShape",
    "CommandFailed",
    "LoadedHandler",
    "call_shape",
    "command_handler",
    "find_program",
    "import_object",
    "load_handler",
    "resolve_exception",
    "threaded",
]

_STDERR_TAIL = 2000


class CommandFailed(Exception):
    """A command handler exited with a non-zero status."""


class LoadedHandler:
    """An adapted handler plus what it holds (a thread pool, or child processes); `start()` before
    the first task, `aclose()` (or `close()` outside a loop) when done.

    `stoppable` is False for a sync callable run in a thread: nothing can stop a thread, so a
    stopping worker must wait for its runs rather than release their tasks (see `Worker`).
    """

    children: ProcessPool | None = None  # the child processes, with isolation = "process"

    def __init__(self, handler: Handler, description: str, pool: ThreadPoolExecutor | None = None) -> None:
        self.handler = handler
        self.description = description
        self.stoppable = pool is None
        self._pool = pool

    async def start(self) -> None:
        """Get ready to run (start the child processes); a handler that cannot start is a ConfigError."""

    def close(self) -> None:
        """Release the thread pool (running calls finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """Release what the handler holds, child processes included (they are stopped)."""
        self.close()


def load_handler(config: Config, worker: WorkerConfig, *, concurrency: int | None = None) -> LoadedHandler:
    """Import or prepare `worker`'s handler; a bad one is a `ConfigError` at its line."""
    spec = worker.handler
    path = (*worker.key, "handler")
    if spec is None:
        raise config.error(worker.key, 'missing required key "handler" (needed to run this worker)')
    if isinstance(spec, CommandHandler):
        try:
            program = find_program(spec.command[0], config.base_dir)
        except ValueError as exc:
            raise config.error(path, str(exc)) from None
        command = CommandHandler(command=(program, *spec.command[1:]))
        return LoadedHandler(command_handler(command, worker.queue, worker.kill_grace), " ".join(spec.command))
    if worker.isolation == "process":  # imported in the children only, not in the daemon
        from .isolation.handler import process_handler

        return process_handler(config, worker, spec, concurrency or worker.concurrency)
    try:
        fn = import_object(spec.path, config.base_dir)
    except ValueError as exc:
        raise config.error(path, str(exc)) from None
    if not callable(fn):
        raise config.error(path, f'"{spec.path}" is not callable')
    return _adapt(fn, spec, concurrency or worker.concurrency, config, path)


def import_object(path: str, base_dir: Path) -> Any:
    """The object named `"package.module:attr.sub"`, importing with cwd and `base_dir` on sys.path.

    Raises ValueError with a message for a person when it cannot be found.
    """
    module_name, _, attr = path.partition(":")
    _add_import_paths(base_dir)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ValueError(f'cannot import "{path}": no module named "{exc.name}"') from None
        raise ValueError(f'cannot import "{path}": {describe_error(exc)}') from None
    except Exception as exc:  # the user's module failed while importing
        raise ValueError(f'cannot import "{path}": {describe_error(exc)}') from None
    except SystemExit as exc:  # a script's `sys.exit()` at import time would end the daemon, silently
        raise ValueError(
            f'cannot import "{path}": the module raised SystemExit (sys.exit({exc.code!r})) while being imported'
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f'cannot import "{path}": "{module_name}" has no attribute "{attr}"') from None
    return obj


def resolve_exception(name: str, base_dir: Path) -> type[BaseException]:
    """An exception class named `"ValueError"` (a builtin) or `"package.module:ClassName"`."""
    obj = import_object(name, base_dir) if ":" in name else getattr(builtins, name, None)
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ValueError(f'"{name}" is not an exception class')
    return obj


def _add_import_paths(base_dir: Path) -> None:
    # Both stay on sys.path: a handler module may import its siblings lazily, at run time.
    for entry in (str(base_dir.resolve()), os.getcwd()):
        if entry not in sys.path:
            sys.path.insert(0, entry)


@dataclass(frozen=True, slots=True)
class CallShape:
    """How a handler is called, decided once from its signature."""

    wants_second: bool  # takes a second parameter at all
    wants_ctx: bool  # ... named ctx/context: the TaskContext; otherwise the Task
    is_async: bool

    def extra(self, task: Task[bytes]) -> tuple[Any, ...]:
        """What follows the arguments in a call: (), (task.ctx,) or (task,)."""
        if not self.wants_second:
            return ()
        return (task.ctx,) if self.wants_ctx else (task,)


def call_shape(fn: Callable[..., Any], name: str) -> CallShape:
    """The `CallShape` of `fn`; raises ValueError with a message for a person when it has none."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    if not positional and not varargs:
        raise ValueError(f'"{name}" must take the task\'s arguments as its first parameter')
    required = [p for p in positional if p.default is p.empty]
    if len(required) > 2:
        raise ValueError(f'"{name}" takes {len(required)} parameters; expected (args) or (args, task)')
    wants_second = varargs or len(positional) >= 2
    wants_ctx = wants_second and len(positional) >= 2 and positional[1].name in ("ctx", "context")
    # A callable object's `__call__` may be the coroutine function.
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    return CallShape(wants_second, wants_ctx, is_async)


def _adapt(fn: Callable[..., Any], spec: ImportHandler, concurrency: int, config: Config, path: Any) -> LoadedHandler:
    try:
        shape = call_shape(fn, spec.path)
    except ValueError as exc:
        raise config.error(path, str(exc)) from None
    extra = shape.extra
    is_async = shape.is_async

    if is_async:

        async def call_async(args: Any, task: Task[bytes]) -> Any:
            return await fn(args, *extra(task))

        return LoadedHandler(call_async, spec.path)

    return threaded(fn, shape, concurrency, spec.path)


def threaded(fn: Callable[..., Any], shape: CallShape, concurrency: int, description: str) -> LoadedHandler:
    """The sync callable `fn`, called as `shape` says in a pool of `concurrency` threads."""
    extra = shape.extra
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="apalis-handler")

    async def call_sync(args: Any, task: Task[bytes]) -> Any:
        context = contextvars.copy_context()  # structlog's bound variables follow into the thread
        result = await _in_thread(pool, functools.partial(context.run, fn, args, *extra(task)))
        if inspect.iscoroutine(result):  # a sync wrapper around an async function (a decorator's)
            result = await result
        return result

    return LoadedHandler(call_sync, description, pool)


async def _in_thread(pool: ThreadPoolExecutor, call: Callable[[], Any]) -> Any:
    """`call()` in one of `pool`'s threads.

    A thread cannot be stopped, so a run cancelled (a timeout, a stop) while its thread runs lets
    the cancellation through only once the thread has returned: its task is never retried or
    released while its handler still runs. A call still waiting for a thread is simply dropped.
    """
    running = pool.submit(_carried, call)
    try:
        return await asyncio.wrap_future(running)
    except asyncio.CancelledError:
        if not running.cancel():
            await _outlive(running)
        raise


def _carried(call: Callable[[], Any]) -> Any:
    """`call()`, with a `BaseException` it raises carried as a `HandlerExit`: a `GeneratorExit`
    crossing into the event loop would close the worker's whole chain of awaits on its way."""
    try:
        return call()
    except Exception:
        raise
    except BaseException as exc:
        raise HandlerExit(type(exc).__name__) from exc


async def _outlive(running: Future[Any]) -> None:
    while not running.done():
        try:
            await asyncio.shield(asyncio.wrap_future(running))
        except asyncio.CancelledError:
            continue  # asked again: the thread still runs, so the answer is still to wait
        except BaseException:
            return  # the thread failed: its error is of no use to a cancelled run


def find_program(program: str, base_dir: Path) -> str:
    """The path a command handler's `program` runs from; ValueError when it is missing or not
    executable, so that `check` and `run` say so at start-up rather than on every task."""
    if "/" not in program:
        if shutil.which(program) is None:
            raise ValueError(f'program "{program}" not found on PATH')
        return program
    # "./resize.sh" in the config means next to the config file, wherever the daemon runs.
    path = Path(program)
    if not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    if not path.exists():
        raise ValueError(f'program "{program}" not found (a relative path starts next to the config file)')
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ValueError(f'program "{program}" is not an executable file (chmod +x {path}?)')
    return str(path.resolve())  # the daemon may start tasks from another directory


def command_handler(spec: CommandHandler, queue: str, grace: float) -> Handler:
    """Runs `spec`'s command once per task; a cancelled run (a timeout, a stop, an operator's
    cancel) ends only once SIGTERM, then SIGKILL after `grace` seconds, ended its process group."""
    program = spec.command[0]
    command = spec.command

    async def run_command(args: Any, task: Task[bytes]) -> Any:
        env = {
            **os.environ,
            "APALIS_TASK_ID": task.id,
            "APALIS_ATTEMPT": str(task.ctx.attempts),
            "APALIS_MAX_ATTEMPTS": str(task.ctx.max_attempts),
            "APALIS_QUEUE": queue,
        }
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                **loops.own_group(),  # a Ctrl-C reaches the daemon only; a kill reaches what it started
            )
        )
        try:
            # Shielded: a cancel while asyncio still connects the pipes of a child already forked
            # would have asyncio kill the child alone, and what it started would live on.
            process = await asyncio.shield(spawn)
        except OSError as exc:
            raise CommandFailed(f"cannot start {program}: {exc.strerror or exc}") from None
        except asyncio.CancelledError:
            await despite_cancellation(_end_started(spawn, grace))
            raise
        try:
            stdout, stderr = await process.communicate(bytes(task.args))
        except asyncio.CancelledError:
            # A timeout or a stop: the run ends only once the command and its programs are gone.
            await despite_cancellation(terminate_group(process, grace))
            raise
        if process.returncode != 0:
            raise CommandFailed(f"{program} exited with {process.returncode}: {_tail(stderr)}")
        text = stdout.decode("utf-8", "replace").rstrip("\n")
        return text or None

    return run_command


async def _end_started(spawn: asyncio.Future[asyncio.subprocess.Process], grace: float) -> None:
    """End the process group of a command whose start was cancelled, once it has started."""
    try:
        process = await spawn
    except Exception:  # it never started (the run's own error was raised by the shielded await)
        return
    await terminate_group(process, grace)


def _tail(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    # The error is kept on one line (describe_error keeps the first), so join the last lines.
    return " | ".join(lines)[-_STDERR_TAIL:] or "(no output on stderr)"
