"""What the commands share: opening the queue a command is about, capability checks, and
keeping the config's secrets out of a driver's error."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..api import QueueTarget, open_queue, resolve_target
from ..backend import BackendExt, Capability, Inspector, Store
from ..config import Config, load_config
from ..errors import ApalisError, BackendError, Unsupported, describe_error

__all__ = [
    "Opened",
    "all_targets",
    "masked_errors",
    "open_resolved",
    "open_target",
    "open_task_queue",
    "paused_or_none",
    "require",
    "require_inspector",
    "resolve",
    "why_not",
]

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Opened:
    """A command's open queue: the config, the target, the store and the queue-bound backend."""

    config: Config
    target: QueueTarget
    store: Store
    backend: BackendExt

    def describe(self) -> str:
        """`queue "emails" on backend "main" (sqlite)` for messages."""
        kind = self.store.kind
        return f'queue "{self.target.queue}" on backend "{self.target.backend}" ({kind})'


def resolve(config_path: Path, worker: str | None, queue: str | None) -> tuple[Config, QueueTarget]:
    """Load the config and resolve `--worker`/`--queue` to the queue a command is about."""
    config = load_config(config_path)
    return config, resolve_target(config, worker, queue)


@contextlib.asynccontextmanager
async def open_resolved(config: Config, target: QueueTarget) -> AsyncIterator[Opened]:
    """Open the store of a resolved target."""
    with masked_errors(config):
        async with open_queue(config, target) as (store, backend):
            yield Opened(config, target, store, backend)


@contextlib.asynccontextmanager
async def open_target(config_path: Path, worker: str | None, queue: str | None) -> AsyncIterator[Opened]:
    """Load the config, resolve `--worker`/`--queue` and open that queue's store."""
    config, target = resolve(config_path, worker, queue)
    async with open_resolved(config, target) as opened:
        yield opened


def all_targets(config: Config) -> list[QueueTarget]:
    """Every queue the config's workers take (a piped cron worker's in its target store), once."""
    seen: dict[tuple[str, str], QueueTarget] = {}
    for w in config.workers:
        if w.cron is not None and w.pipe_to is None:
            continue  # its ticks live in its daemon only: no queue to count
        backend = w.pipe_to or w.backend  # a piped cron worker's ticks are tasks of that store
        target = QueueTarget(backend=backend, queue=w.queue, codec=w.codec, max_attempts=w.max_attempts, worker=w.name)
        seen.setdefault((backend, w.queue), target)
    return list(seen.values())


@contextlib.asynccontextmanager
async def open_task_queue(
    config_path: Path, worker: str | None, queue: str | None, task_id: str
) -> AsyncIterator[Opened]:
    """The queue of task `task_id`: the one `--worker`/`--queue` name, or, when neither is given
    and the config has several queues, the one whose store has that task (each asked in turn,
    where it can be asked: `apalis cancel ID` needs no --worker)."""
    config = load_config(config_path)
    targets = all_targets(config)
    if worker is not None or queue is not None or len(targets) < 2:
        async with open_resolved(config, resolve_target(config, worker, queue)) as opened:
            yield opened
        return
    for target in targets:
        async with open_resolved(config, target) as opened:
            backend: Any = opened.backend
            if not isinstance(backend, Inspector):
                continue
            try:
                found = await backend.get(task_id)
            except Unsupported:  # a store that cannot find a task by id
                continue
            if found is not None:
                yield opened
                return
    raise ApalisError(f"no task {task_id} in any queue of {config.path} (or name its queue with --worker)")


@contextlib.contextmanager
def masked_errors(config: Config) -> Iterator[None]:
    """A driver's exception leaves as one `BackendError` line with `config`'s secrets masked.

    Our own errors mask them where they are made; a driver's text is masked here, where the
    config is known, because it may echo a piece of a password that no pattern recognises
    (libpq's "failed to resolve host 'x@127.0.0.1'" for the password "S3cret@x").
    """
    try:
        yield
    except ApalisError:
        raise
    except Exception as exc:
        raise BackendError(describe_error(exc, config.secrets)) from None


def why_not(opened: Opened, capability: Capability) -> str | None:
    """Why the queue's store lacks `capability` (None: it has it). The store's declaration and the
    queue-bound backend's are both asked: a store's queue may not carry its store's (postgres's
    queue keeps the default of its shared base)."""
    return opened.backend.capabilities.why_not(capability) or opened.store.capabilities.why_not(capability)


def require(opened: Opened, capability: Capability, doing: str) -> None:
    """Raise `Unsupported` (exit 2, one line) when the store lacks `capability`."""
    why = why_not(opened, capability)
    if why is not None:
        raise Unsupported(f"{opened.describe()} cannot {doing}: {why}")


def require_inspector(opened: Opened, capability: Capability, doing: str) -> Inspector:
    """The backend as an `Inspector` offering `capability`, or `Unsupported`."""
    backend: Any = opened.backend
    if not isinstance(backend, Inspector):
        raise Unsupported(f"{opened.describe()} cannot {doing}: the store has no random access to its tasks")
    require(opened, capability, doing)
    return backend


async def paused_or_none(opened: Opened) -> bool | None:
    """Whether the queue is paused; None where the store cannot pause queues."""
    from ..control import Pausable

    if why_not(opened, Capability.PAUSE) is not None:
        return None
    backend: Any = opened.backend
    if not isinstance(backend, Pausable):
        return None
    return await backend.paused()
