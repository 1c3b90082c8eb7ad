"""A pool of child processes running one worker's handler: one child per slot, one task at a time.

Each slot owns one child (a fresh interpreter started with `child.BOOT`) and its pipes, and the
daemon hands each task to one idle child it chose. That is what makes the guarantees simple:

- a run whose wait is cancelled (a `timeout` layer, a stop past `shutdown_timeout`, a cancel of
  its task) kills its child, SIGTERM then SIGKILL after `kill_grace`, and ends only once the child is dead: a task
  released to the store is running nowhere;
- a child that dies (segfault, `os._exit`, the OOM killer) fails its own task, with its exit code
  or signal as the error; no other task notices;
- recycling (`max_tasks_per_child`, `max_memory_per_child`) happens between two tasks of that
  child, so it costs no task; a slot whose child ended gets a fresh one at once.

Why not pebble or `concurrent.futures`: their children share one task pipe, so the pool cannot
choose which child runs a task or retire one between tasks, and a death breaks more than its task
(with pebble 5.2.3 a task whose child calls `os._exit(0)` never completes, and a child killed
while the pool is idle leaves the pool unusable; `ProcessPoolExecutor` fails every task in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import loops
from ..layers.timeout import handler_started
from ..task import Task, TaskId
from .child import BOOT
from .procinfo import describe_exit, rss_of
from .stopping import despite_cancellation, terminate_group
from .wire import Done, Failed, Init, Ready, StartFailed, Wants, encode, load_known, rebuild_error, receive

__all__ = ["ChildInfo", "ChildKilled", "ChildLost", "ChildStartFailed", "PoolSettings", "PoolStats", "ProcessPool"]

_STDERR_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """What a pool runs and how its children are kept."""

    handler: str  # "package.module:function"
    base_dir: Path  # where the import path starts (the config file's directory)
    size: int
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # bytes of RSS after a task
    kill_grace: float = 5.0  # between SIGTERM and SIGKILL
    start_timeout: float = 60.0  # a child that has not imported its handler by then is killed


class ChildStartFailed(Exception):
    """A child could not import or adapt the handler; the message says why."""


class ChildLost(Exception):
    """The child running a task died; the message gives its exit code or signal."""


class ChildKilled(ChildLost):
    """The daemon killed the child running a task on request (`ProcessPool.kill_task`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildInfo:
    """One live child, for the live view and /metrics."""

    slot: int
    pid: int
    rss: int | None
    tasks: int
    task_id: TaskId | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """The children now, and how many were replaced since start, by reason."""

    children: tuple[ChildInfo, ...]
    recycled: Mapping[str, int]


@dataclass(slots=True, eq=False)
class _Child:
    slot: int
    process: asyncio.subprocess.Process
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    pid: int
    rss: int | None
    tasks: int = 0
    task_id: TaskId | None = None
    killed: str | None = None  # why the daemon killed it, once it did
    stopping: asyncio.Future[None] | None = None
    stderr: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _Vacant:
    """A slot with no child: the next run starts one."""

    slot: int


RECYCLE_REASONS = ("max_tasks", "max_memory", "died", "timeout_or_stop", "killed")
"""Why a child was replaced: recycled after a task, died, killed by a timeout/stop, or on request."""


class ProcessPool:
    """`settings.size` children running `settings.handler`; `run` is the worker's `Handler`."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.recycled: Counter[str] = Counter()
        self._idle: asyncio.Queue[_Child | _Vacant] = asyncio.Queue()
        self._children: dict[int, _Child] = {}  # by slot: the child each slot has now
        self._busy: dict[TaskId, _Child] = {}
        self._refills: set[asyncio.Future[None]] = set()
        self._retiring: set[asyncio.Future[None]] = set()
        self._wants: Wants = "args"
        self._closed = False

    async def start(self) -> None:
        """Start every child; if one cannot import the handler, stop all and raise `ChildStartFailed`."""
        started = await asyncio.gather(
            *(self._spawn(slot) for slot in range(self.settings.size)), return_exceptions=True
        )
        for child in started:
            if isinstance(child, _Child):
                self._idle.put_nowait(child)
        failure = next((error for error in started if isinstance(error, BaseException)), None)
        if failure is not None:
            await self.close()
            raise failure

    async def run(self, args: Any, task: Task[bytes]) -> Any:
        """Run the handler on `args` in an idle child; its return value, or its exception."""
        wants = self._wants
        extra = () if wants == "args" else (task.ctx,) if wants == "ctx" else (task,)
        frame = encode((args, extra))
        child = await self._take()
        handler_started()  # a timeout counts from here, not from the wait for a fresh child
        child.task_id = task.id
        self._busy[task.id] = child
        try:
            child.stdin.write(frame)
            await child.stdin.drain()
            reply = await receive(child.stdout)
        except asyncio.CancelledError:
            # A timeout, a stop past shutdown_timeout, or an operator's cancel of the task (the
            # worker marks its context first): the run must end with its child dead.
            why = "killed" if task.ctx.cancelled else "timeout_or_stop"
            await despite_cancellation(self._stop(child, why))
            self._replace(child)
            raise
        except (asyncio.IncompleteReadError, ConnectionError):
            raise await self._lost(child) from None
        finally:
            self._busy.pop(task.id, None)
            child.task_id = None
        child.tasks += 1
        child.rss = reply.rss
        self._after_task(child)
        if isinstance(reply, Failed):
            raise rebuild_error(reply)
        assert isinstance(reply, Done)
        try:
            return load_known(reply.value)
        except Exception as exc:
            raise ValueError(
                f"the handler returned a value the daemon cannot read ({exc}); return plain data"
            ) from None

    async def kill_task(self, task_id: TaskId, reason: str = "cancelled") -> bool:
        """Kill the child running `task_id` (SIGTERM, then SIGKILL after the grace period); its run
        fails with `ChildKilled(reason)`. False when no child of this pool runs that task."""
        child = self._busy.get(task_id)
        if child is None:
            return False
        child.killed = child.killed or reason
        await self._stop(child, "killed")
        return True

    def stats(self) -> PoolStats:
        """The live children (RSS read now where /proc allows) and the replacements so far."""
        children = tuple(
            ChildInfo(slot=c.slot, pid=c.pid, rss=rss_of(c.pid) or c.rss, tasks=c.tasks, task_id=c.task_id)
            for c in sorted(self._children.values(), key=lambda c: c.slot)
            if c.process.returncode is None
        )
        return PoolStats(children=children, recycled=dict(self.recycled))

    async def close(self) -> None:
        """Stop every child (SIGTERM, SIGKILL after the grace period) and wait for them all."""
        self._closed = True
        for refill in list(self._refills):
            refill.cancel()
        await asyncio.gather(*self._refills, return_exceptions=True)
        await asyncio.gather(*(self._stop(child, None) for child in list(self._children.values())))
        await asyncio.gather(*self._retiring, return_exceptions=True)

    # -- children ----------------------------------------------------------------------------

    async def _spawn(self, slot: int) -> _Child:
        env = {**os.environ, "APALIS_CHILD_SYS_PATH": json.dumps(sys.path), "APALIS_PARENT_PID": str(os.getpid())}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BOOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            **loops.own_group(),  # a Ctrl-C in the terminal reaches the daemon only: it decides
        )
        stdin, stdout, stderr = _pipes(process)
        forward = asyncio.ensure_future(_forward_stderr(stderr))
        try:
            async with asyncio.timeout(self.settings.start_timeout):
                stdin.write(encode(Init(self.settings.handler, str(self.settings.base_dir))))
                reply = await receive(stdout)
        except BaseException as exc:
            await terminate_group(process, 0.0)
            await forward
            if isinstance(exc, TimeoutError):
                raise ChildStartFailed(
                    f'the process of "{self.settings.handler}" did not start within {self.settings.start_timeout:g}s'
                ) from None
            if isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
                how = describe_exit(process.returncode if process.returncode is not None else -9)
                raise ChildStartFailed(f'the process of "{self.settings.handler}" {how} while starting') from None
            raise
        if not isinstance(reply, Ready):
            await terminate_group(process, self.settings.kill_grace)
            await forward
            raise ChildStartFailed(reply.message if isinstance(reply, StartFailed) else "unexpected start reply")
        self._wants = reply.wants
        child = _Child(
            slot=slot, process=process, stdin=stdin, stdout=stdout, pid=reply.pid, rss=reply.rss, stderr=forward
        )
        self._children[slot] = child
        return child

    async def _take(self) -> _Child:
        item = await self._idle.get()
        if isinstance(item, _Child):
            if item.process.returncode is None:
                return item
            self.recycled["died"] += 1  # while idle: the OOM killer, a person's kill -9
            _keep(self._retiring, self._stop(item, None))
        try:
            return await self._spawn(item.slot)
        except BaseException:
            self._idle.put_nowait(_Vacant(item.slot))
            raise

    def _after_task(self, child: _Child) -> None:
        s = self.settings
        if s.max_tasks_per_child is not None and child.tasks >= s.max_tasks_per_child:
            reason = "max_tasks"
        elif s.max_memory_per_child is not None and child.rss is not None and child.rss > s.max_memory_per_child:
            reason = "max_memory"
        else:
            self._idle.put_nowait(child)
            return
        self.recycled[reason] += 1
        child.stdin.close()  # the child sees end of input and exits on its own
        _keep(self._retiring, self._stop(child, None, politely=True))
        self._replace(child)

    async def _lost(self, child: _Child) -> ChildLost:
        """The child's pipe closed mid-task: wait for its exit, count it, replace it."""
        await self._stop(child, None)  # what its handler started goes too: the task runs again
        self._replace(child)
        if child.killed is not None:
            return ChildKilled(f"the handler's process was killed: {child.killed}")
        self.recycled["died"] += 1
        returncode = child.process.returncode
        return ChildLost(f"the handler's process {describe_exit(returncode if returncode is not None else -9)}")

    def _replace(self, child: _Child) -> None:
        """A fresh child for `child`'s slot, started now, ready for the slot's next run."""
        if self._children.get(child.slot) is child:
            del self._children[child.slot]
        if self._closed:
            return

        async def refill() -> None:
            try:
                fresh: _Child | _Vacant = await self._spawn(child.slot)
            except Exception:
                fresh = _Vacant(child.slot)  # the next run tries again and fails with the reason
            self._idle.put_nowait(fresh)

        _keep(self._refills, refill())

    async def _stop(self, child: _Child, reason: str | None, *, politely: bool = False) -> None:
        """End `child` (once, however many ask) and wait until it is gone; count `reason`."""
        if child.stopping is None:
            grace = self.settings.kill_grace
            child.stopping = asyncio.ensure_future(
                _wait_then_terminate(child.process, grace) if politely else terminate_group(child.process, grace)
            )
            if reason is not None:
                self.recycled[reason] += 1
        await asyncio.shield(child.stopping)
        if child.stderr is not None:
            # A grandchild may hold the pipe open: stop forwarding rather than wait for it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(child.stderr)
            child.stderr.cancel()


def _pipes(
    process: asyncio.subprocess.Process,
) -> tuple[asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamReader]:
    if process.stdin is None or process.stdout is None or process.stderr is None:
        raise RuntimeError("a child process was started without its pipes")
    return process.stdin, process.stdout, process.stderr


def _keep(tasks: set[asyncio.Future[None]], work: Coroutine[Any, Any, None]) -> None:
    """Run `work` in the background, held in `tasks` until it ends (so close() can wait for it)."""
    future = asyncio.ensure_future(work)
    tasks.add(future)
    future.add_done_callback(tasks.discard)


async def _wait_then_terminate(process: asyncio.subprocess.Process, grace: float) -> None:
    """Give a child whose input was closed `grace` to exit by itself; what its handler started
    and left running is then its own business, as after any task that returned."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await process.wait()
    if process.returncode is None:
        await terminate_group(process, grace)
    elif process.stdin is not None:
        process.stdin.close()


async def _forward_stderr(stream: asyncio.StreamReader) -> None:
    """Copy what a child writes on stderr (its prints included) to the daemon's stderr, so the
    live view, which owns the terminal, shows it above the table instead of being torn."""
    while chunk := await stream.read(_STDERR_CHUNK):
        sys.stderr.write(chunk.decode("utf-8", "replace"))
        sys.stderr.flush()
