"""A rolling median (or any quantile) over the last minute, in constant memory.

The live view hears every finished run; at thousands of runs per second, keeping each sample
for a minute would cost megabytes and sorting them at every refresh would cost the daemon time.
Instead each second gets a histogram with logarithmic bins (about 5% apart), and a quantile is
read from the sum of the histograms of the seconds still in the window.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RollingQuantile"]

_RATIO = 1.05  # bin width: a quantile is exact to within about 5%
_SMALLEST = 1e-5  # 10 us: anything shorter counts as this
_LOG_RATIO = math.log(_RATIO)


class RollingQuantile:
    """Quantiles of the values added in the last `window` seconds."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._seconds: deque[tuple[int, dict[int, int]]] = deque()

    def add(self, value: float, now: float) -> None:
        """Count `value` (seconds) as seen at `now` (a monotonic clock)."""
        second = int(now)
        if not self._seconds or self._seconds[-1][0] != second:
            self._seconds.append((second, {}))
            self._forget(now)
        bins = self._seconds[-1][1]
        index = _bin(value)
        bins[index] = bins.get(index, 0) + 1

    def quantile(self, q: float, now: float) -> float | None:
        """The `q` quantile (0.5: the median) of the window, None when nothing was added in it."""
        self._forget(now)
        total: dict[int, int] = {}
        for _, bins in self._seconds:
            for index, count in bins.items():
                total[index] = total.get(index, 0) + count
        seen = sum(total.values())
        if not seen:
            return None
        rank = q * seen
        for index in sorted(total):
            rank -= total[index]
            if rank <= 0:
                return _value(index)
        return _value(max(total))

    def _forget(self, now: float) -> None:
        oldest = now - self.window
        while self._seconds and self._seconds[0][0] + 1 <= oldest:
            self._seconds.popleft()


def _bin(value: float) -> int:
    return 0 if value <= _SMALLEST else int(math.log(value / _SMALLEST) / _LOG_RATIO) + 1


def _value(index: int) -> float:
    # The middle of the bin, so the error is at most half a bin either way.
    return _SMALLEST if index == 0 else _SMALLEST * _RATIO ** (index - 0.5)
