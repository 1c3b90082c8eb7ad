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
    "masked_errors",
    "open_resolved",
    "open_target",
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
