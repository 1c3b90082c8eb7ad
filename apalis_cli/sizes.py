"""Byte sizes as people write them: "512MB", "1.5GiB", "800KiB" (a unit is required).

KB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB powers of 1024, as Kubernetes reads them; a
bare number is refused because its unit would be a guess (bytes? KiB as in Celery?).
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["format_size", "parse_size"]

_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
_HINT = 'expected a size such as "512MB" or "2GiB"'


def parse_size(value: Any) -> int:
    """Bytes in `value`; raises ValueError with a message fit for a person."""
    if not isinstance(value, str):
        raise ValueError(f"{_HINT}, got {value!r}")
    match = _PATTERN.match(value)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f'{_HINT}, got "{value}"')
    size = float(match.group(1)) * unit
    if not math.isfinite(size) or size < 1 or size >= 2**63:
        raise ValueError(f'must be between 1 byte and 8 EiB, got "{value}"')
    return int(size)


def format_size(size: float) -> str:
    """A short human form in powers of 1024: 31457280 -> "30.0 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
