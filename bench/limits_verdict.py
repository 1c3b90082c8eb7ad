"""Issue 15's bar for `bench.limits`: unrelated keys' throughput while one key is saturated is at
least 90 % of the unlimited drain, judged from the ratio of each round's two adjacent drains.

One drain's rate swings by a third from minute to minute on the shared machine, so medians of
rates taken apart (the saturated drains' median over the unlimited drains') can say "met" one run
and "not met" the next. Drift between two drains a second apart is small next to that: each round
runs `unlimited` and `saturated` back to back (their order alternates from round to round, so
that neither is always the warmer), and the bar is judged on the median of the rounds' ratios,
printed with their range so a reader sees how settled it is.
"""

from __future__ import annotations

import statistics
from typing import NamedTuple

__all__ = ["BAR", "Verdict", "judge", "pair_order"]

BAR = 0.90


class Verdict(NamedTuple):
    """The median of the rounds' saturated / unlimited ratios, their range and count, and whether
    the median reaches `BAR`."""

    median: float
    low: float
    high: float
    rounds: int

    @property
    def met(self) -> bool:
        return self.median >= BAR

    def line(self, kind: str) -> str:
        """e.g. "sqlite: no head-of-line blocking: met, ratio 0.94 (range 0.88-1.01 over 5 rounds)"."""
        return (
            f"{kind}: no head-of-line blocking: {'met' if self.met else 'not met'},"
            f" ratio {self.median:.2f} (range {self.low:.2f}-{self.high:.2f} over {self.rounds} rounds)"
        )


def judge(ratios: list[float]) -> Verdict:
    """The verdict of the per-round ratios (saturated rate / unlimited rate of the same round)."""
    if not ratios:
        raise ValueError("no round to judge")
    return Verdict(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


def pair_order(round_index: int) -> tuple[str, str]:
    """The two drains the bar compares, back to back, the first of them alternating by round."""
    return ("unlimited", "saturated") if round_index % 2 == 0 else ("saturated", "unlimited")
