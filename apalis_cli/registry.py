"""Finds store classes by kind through the `apalis_cli.backends` entry points.

Built-in backends are registered in pyproject.toml exactly as a third-party package registers
its own, so there is one way in. Nothing is cached at module level: callers that look up many
kinds keep the `Registry` they made.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from .backend import Store, StoreSpec
from .config import BackendConfig, Config, WorkerConfig
from .errors import ConfigError, MissingExtra
from .tomllines import KeyPath

__all__ = ["ENTRY_POINT_GROUP", "Registry", "build_store", "build_worker_store"]

ENTRY_POINT_GROUP = "apalis_cli.backends"


class Registry:
    """The store classes that are installed, by kind."""

    def __init__(self) -> None:
        self._points: dict[str, EntryPoint] = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    @property
    def kinds(self) -> list[str]:
        """Every registered kind, sorted."""
        return sorted(self._points)

    def store_class(self, kind: str) -> type[Store]:
        """The store class of `kind`; `MissingExtra` when its driver is not installed."""
        point = self._points.get(kind)
        if point is None:
            raise ConfigError(f'unknown backend kind "{kind}" (known: {", ".join(self.kinds)})', key="kind")
        try:
            loaded: Any = point.load()
        except MissingExtra:
            raise
        except ImportError as exc:
            raise MissingExtra(_missing_extra(kind, exc)) from None
        return cast("type[Store]", loaded)


def _missing_extra(kind: str, exc: ImportError) -> str:
    return f"backend \"{kind}\" needs the extra: pip install 'apalis-cli[{kind}]' ({exc})"


def build_store(config: Config, name: str, registry: Registry | None = None) -> Store:
    """The (unopened) store of `[backends.NAME]`, validated by its class; errors carry file:line."""
    backend = config.backends.get(name) or _implicit(name)
    return _build(config, backend, backend.spec(config.base_dir), (), registry)


def build_worker_store(config: Config, worker: WorkerConfig, registry: Registry | None = None) -> Store:
    """The store `worker` consumes: its backend's, or for a cron worker one of its own, built with
    the worker's cron keys (schedule, timezone, ...) as options."""
    if worker.cron is None:
        return build_store(config, worker.backend, registry)
    backend = config.backends.get(worker.backend) or _implicit(worker.backend)
    spec = dataclasses.replace(backend.spec(config.base_dir), options={**backend.options, **worker.cron})
    return _build(config, backend, spec, worker.key, registry)


def _build(
    config: Config, backend: BackendConfig, spec: StoreSpec, worker_key: KeyPath, registry: Registry | None
) -> Store:
    path: KeyPath = ("backends", backend.name)
    try:
        cls = (registry or Registry()).store_class(backend.kind)
        return cls.from_spec(spec)
    except ConfigError as exc:
        parts = tuple(exc.key.split(".")) if exc.key else ()
        # A key the worker gave (a cron schedule, say) is reported at the worker's line.
        base = worker_key if worker_key and parts and parts[0] not in backend.options else path
        raise config.error((*base, *parts), exc.message) from None
    except ImportError as exc:
        raise MissingExtra(_missing_extra(backend.kind, exc)) from None


def _implicit(name: str) -> BackendConfig:
    # A worker may say `backend = "memory"` (or "cron") without defining the table.
    return BackendConfig(name=name, kind=name, url="memory://" if name == "memory" else "")
