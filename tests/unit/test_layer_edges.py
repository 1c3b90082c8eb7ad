"""Edges of the layers that a plausible slip would break unnoticed: jitter past the cap, and
`catch.kill_on` matching subclasses."""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from apalis_cli.layers import Backoff, CatchLayer, RetryLayer
from apalis_cli.service import Outcome, OutcomeKind, Service, compose
from apalis_cli.task import Task, TaskContext


def make_task(attempts: int = 1, max_attempts: int = 5) -> Task[Any]:
    return Task(id="t1", args={}, ctx=TaskContext(queue="q", attempts=attempts, max_attempts=max_attempts))


def raising(exc: BaseException) -> Service:
    async def service(task: Task[Any]) -> Outcome:
        raise exc

    return service


@pytest.mark.parametrize(
    ("backoff", "attempt"),
    [
        (Backoff(kind="exponential", base=1.0, max=10.0), 30),
        (Backoff(kind="linear", base=4.0, max=10.0), 9),
        (Backoff(kind="constant", base=25.0, max=10.0), 1),
    ],
    ids=["exponential", "linear", "constant"],
)
def test_a_delay_past_the_cap_is_still_jittered(backoff: Backoff, attempt: int) -> None:
    # Jitter applies after the cap: a burst of tasks failing long enough to reach `max` must not
    # come back all together at exactly `max`, which is when spreading them out matters most.
    samples = [backoff.delay(attempt) for _ in range(2000)]
    assert all(5.0 <= s <= 10.0 for s in samples), "between half the cap and the cap"
    assert sum(s == 10.0 for s in samples) < 20, "capped retries are not all at exactly max"
    assert min(samples) < 5.5, "the lower end of the range is reached"
    assert max(samples) > 9.5, "the upper end of the range is reached"
    assert statistics.mean(samples) == pytest.approx(7.5, abs=0.25), "spread evenly over [max/2, max]"


async def test_catch_kills_on_a_subclass_of_a_listed_type() -> None:
    service = compose([RetryLayer(), CatchLayer((LookupError,))], raising(KeyError("user 7")))
    outcome = await service(make_task())
    assert outcome == Outcome.kill("aborted: KeyError: 'user 7'")


async def test_catch_does_not_kill_on_a_parent_of_a_listed_type() -> None:
    service = compose([RetryLayer(), CatchLayer((KeyError,))], raising(LookupError("somewhere")))
    outcome = await service(make_task())
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error == "LookupError: somewhere"
