"""`FleetLimits`: what a worker's `scope = "global"` layers ask its store to enforce in the claim."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..durations import format_duration

__all__ = ["FleetLimits", "fleet_limits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetLimits:
    """At most `concurrency` tasks running and `rate` starts per `per` seconds, each for the
    whole queue or, where `keyed_*`, for each value of the task argument `key`, fleet-wide."""

    key: str | None = None
    concurrency: int | None = None
    keyed_concurrency: bool = False
    rate: int | None = None
    per: float = 1.0
    keyed_rate: bool = False

    @property
    def keyed(self) -> bool:
        """True when a limit holds per key (the claim then lets keys take turns)."""
        return self.keyed_concurrency or self.keyed_rate

    def __str__(self) -> str:
        parts = []
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}" + (f" per {self.key}" if self.keyed_concurrency else ""))
        if self.rate is not None:
            per = format_duration(self.per)
            parts.append(f"rate {self.rate}/{per}" + (f" per {self.key}" if self.keyed_rate else ""))
        return ", ".join(parts)


def fleet_limits(layers: Iterable[Any]) -> FleetLimits | None:
    """The global limits among `layers` (None without any); ValueError for a combination one
    claim cannot enforce: two global limits of one kind, or keyed limits on different keys."""
    found: dict[str, Any] = {}
    for layer in layers:
        if getattr(layer, "scope", "local") != "global":
            continue
        kind = getattr(layer, "kind", "")
        if kind in found:
            raise ValueError(f'a worker takes one global "{kind}" layer, got two')
        found[kind] = layer
    if not found:
        return None
    keys = {layer.key for layer in found.values() if layer.key is not None}
    if len(keys) > 1:
        raise ValueError(f"a worker's global limits share one key, got {' and '.join(sorted(keys))}")
    concurrency, rate = found.get("concurrency"), found.get("rate_limit")
    return FleetLimits(
        key=next(iter(keys), None),
        concurrency=concurrency.limit if concurrency is not None else None,
        keyed_concurrency=concurrency is not None and concurrency.key is not None,
        rate=rate.rate if rate is not None else None,
        per=rate.per if rate is not None else 1.0,
        keyed_rate=rate is not None and rate.key is not None,
    )
