"""Middleware layers, tower-style: each wraps a `Service` in another (see `apalis_cli.service`).

A layer a config file can name reads its own `{ kind = ..., ... }` table (`from_config`), and
`LAYERS` maps each `kind` to its class: adding a layer to the config is adding it there.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Protocol, Self, runtime_checkable

from .catch import CatchLayer
from .limits import ConcurrencyLayer, RateLimitLayer
from .retry import Backoff, RetryLayer
from .timeout import TaskTimeout, TimeoutLayer
from .tracing import TracingLayer

if TYPE_CHECKING:
    from pathlib import Path

    from ..config_fields import Table
    from ..service import Layer, Service

__all__ = [
    "LAYERS",
    "Backoff",
    "CatchLayer",
    "ConcurrencyLayer",
    "ConfiguredLayer",
    "RateLimitLayer",
    "Resolvable",
    "RetryLayer",
    "TaskTimeout",
    "TimeoutLayer",
    "TracingLayer",
]


class ConfiguredLayer(Protocol):
    """A layer that a worker's `middleware` list can name by its `kind`."""

    kind: ClassVar[str]

    @classmethod
    def from_config(cls, table: Table) -> Self:
        """The layer its table describes; a bad value raises `ConfigError` at its key's line."""
        ...

    def __call__(self, inner: Service) -> Service: ...


@runtime_checkable
class Resolvable(Protocol):
    """A configured layer that names code of the application (catch: exception classes), which
    is imported only when a worker is assembled, never when the config is read."""

    def resolved(self, base_dir: Path) -> Layer:
        """The layer with what it names imported; a name that fails is a `ConfigError` whose
        key is the layer's own (`kill_on`)."""
        ...


LAYERS: Mapping[str, type[ConfiguredLayer]] = MappingProxyType(
    {
        layer.kind: layer
        for layer in (RetryLayer, TimeoutLayer, RateLimitLayer, ConcurrencyLayer, CatchLayer, TracingLayer)
    }
)
"""Every layer a config may name, by `kind`, in the order the config's errors list them."""
