"""The middleware layers: backoff math, retry decisions, timeout, limits, catch, compose order."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from apalis_cli.errors import Abort, DecodeError, Retry
from apalis_cli.layers import (
    Backoff,
    CatchLayer,
    ConcurrencyLayer,
    RateLimitLayer,
    RetryLayer,
    TaskTimeout,
    TimeoutLayer,
    TracingLayer,
)
from apalis_cli.service import Outcome, OutcomeKind, Service, compose
from apalis_cli.task import Task, TaskContext
from structlog.testing import capture_logs


def make_task(attempts: int = 1, max_attempts: int = 3) -> Task[Any]:
    return Task(id="t1", args={"x": 1}, ctx=TaskContext(queue="q", attempts=attempts, max_attempts=max_attempts))


def raising(exc: BaseException) -> Service:
    async def service(task: Task[Any]) -> Outcome:
        raise exc

    return service


async def succeed(task: Task[Any]) -> Outcome:
    return Outcome.done("ok")


# -- backoff -------------------------------------------------------------------------------


def test_constant_backoff_is_the_base_every_time() -> None:
    backoff = Backoff(kind="constant", base=2.5, jitter=False)
    assert [backoff.delay(n) for n in (1, 2, 10)] == [2.5, 2.5, 2.5]


def test_linear_backoff_grows_by_the_base() -> None:
    backoff = Backoff(kind="linear", base=2.0, max=7.0, jitter=False)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 10)] == [2.0, 4.0, 6.0, 7.0, 7.0]


def test_exponential_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(kind="exponential", base=1.0, max=10.0, jitter=False)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_exponential_backoff_survives_huge_attempt_counts() -> None:
    backoff = Backoff(kind="exponential", base=1.0, max=600.0, jitter=False)
    assert backoff.delay(10_000) == 600.0
    assert backoff.delay(0) == 1.0, "attempt 0 is treated as the first"


def test_jitter_stays_between_half_and_the_full_delay() -> None:
    backoff = Backoff(kind="exponential", base=1.0, max=100.0, jitter=True)
    samples = [backoff.delay(4) for _ in range(500)]
    assert all(4.0 <= s <= 8.0 for s in samples)
    assert len(set(samples)) > 100, "jitter spreads retries out"
    capped = [Backoff(kind="exponential", base=1.0, max=5.0, jitter=True).delay(20) for _ in range(200)]
    assert all(2.5 <= s <= 5.0 for s in capped), "jitter applies to the capped delay"


# -- retry ---------------------------------------------------------------------------------


async def test_retry_passes_success_through() -> None:
    outcome = await RetryLayer()(succeed)(make_task())
    assert outcome == Outcome.done("ok")


async def test_an_exception_with_attempts_left_is_a_retry_after_the_backoff() -> None:
    layer = RetryLayer(Backoff(kind="linear", base=10.0, jitter=False))
    before = time.time()
    outcome = await layer(raising(ValueError("bad input\nsecond line")))(make_task(attempts=2, max_attempts=3))
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error == "ValueError: bad input"
    assert outcome.run_at is not None
    assert before + 20.0 <= outcome.run_at <= time.time() + 20.0


async def test_an_exception_on_the_last_attempt_kills() -> None:
    outcome = await RetryLayer()(raising(KeyError("gone")))(make_task(attempts=3, max_attempts=3))
    assert outcome.kind is OutcomeKind.KILL
    assert outcome.error == "KeyError: 'gone' (attempt 3 of 3, giving up)"


async def test_retry_with_a_delay_overrides_the_backoff() -> None:
    layer = RetryLayer(Backoff(kind="constant", base=1000.0, jitter=False))
    before = time.time()
    outcome = await layer(raising(Retry(5.0, reason="rate limited upstream")))(make_task())
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error == "rate limited upstream"
    assert outcome.run_at is not None
    assert before + 5.0 <= outcome.run_at <= time.time() + 5.0


async def test_retry_without_a_delay_uses_the_backoff() -> None:
    layer = RetryLayer(Backoff(kind="constant", base=30.0, jitter=False))
    before = time.time()
    outcome = await layer(raising(Retry()))(make_task())
    assert outcome.run_at is not None
    assert before + 30.0 <= outcome.run_at <= time.time() + 30.0


async def test_retry_on_the_last_attempt_kills() -> None:
    outcome = await RetryLayer()(raising(Retry(1.0)))(make_task(attempts=3, max_attempts=3))
    assert outcome.kind is OutcomeKind.KILL


async def test_abort_kills_with_attempts_left() -> None:
    outcome = await RetryLayer()(raising(Abort("card declined")))(make_task(attempts=1, max_attempts=10))
    assert outcome == Outcome.kill("aborted: card declined")


async def test_decode_error_kills_with_attempts_left() -> None:
    outcome = await RetryLayer()(raising(DecodeError("payload is not valid JSON")))(make_task(max_attempts=10))
    assert outcome == Outcome.kill("decode error: payload is not valid JSON")


async def test_cancellation_is_not_a_failure() -> None:
    entered = asyncio.Event()

    async def hangs(task: Task[Any]) -> Outcome:
        entered.set()
        await asyncio.sleep(30)
        return Outcome.done()

    run = asyncio.ensure_future(RetryLayer()(hangs)(make_task()))
    await entered.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_a_cancelled_error_that_is_no_stop_is_the_runs_failure() -> None:
    # Raised by the run itself (or got from awaiting something else that was cancelled): were
    # it taken for a stop, the task would be released, its attempt uncounted, again and again.
    outcome = await RetryLayer()(raising(asyncio.CancelledError()))(make_task(attempts=1, max_attempts=3))
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error == "CancelledError (not a stop of this run)"


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
async def test_a_base_exception_from_a_layer_fails_the_run(exc: BaseException) -> None:
    outcome = await RetryLayer()(raising(exc))(make_task(attempts=1, max_attempts=3))
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error is not None
    assert outcome.error.startswith(type(exc).__name__)


# -- timeout -------------------------------------------------------------------------------


async def test_timeout_fails_a_slow_run() -> None:
    async def slow(task: Task[Any]) -> Outcome:
        await asyncio.sleep(10)
        return Outcome.done()

    started = time.monotonic()
    with pytest.raises(TaskTimeout, match="timed out after 50ms"):
        await TimeoutLayer(0.05)(slow)(make_task())
    assert time.monotonic() - started < 5


async def test_timeout_lets_a_quick_run_through() -> None:
    assert await TimeoutLayer(1.0)(succeed)(make_task()) == Outcome.done("ok")


async def test_timeout_inside_retry_becomes_a_retry() -> None:
    async def slow(task: Task[Any]) -> Outcome:
        await asyncio.sleep(10)
        return Outcome.done()

    outcome = await compose([RetryLayer(), TimeoutLayer(0.05)], slow)(make_task())
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error == "TaskTimeout: timed out after 50ms"


# -- limits --------------------------------------------------------------------------------


async def test_concurrency_layer_bounds_runs_in_flight() -> None:
    in_flight = peak = 0

    async def busy(task: Task[Any]) -> Outcome:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return Outcome.done()

    service = ConcurrencyLayer(2)(busy)
    outcomes = await asyncio.gather(*(service(make_task()) for _ in range(8)))
    assert peak == 2
    assert all(o.kind is OutcomeKind.DONE for o in outcomes)


async def test_rate_limit_allows_a_burst_then_spaces_runs_out() -> None:
    starts: list[float] = []

    async def record(task: Task[Any]) -> Outcome:
        starts.append(time.monotonic())
        return Outcome.done()

    service = RateLimitLayer(rate=5, per=0.5)(record)
    began = time.monotonic()
    await asyncio.gather(*(service(make_task()) for _ in range(10)))
    burst, rest = starts[:5], starts[5:]
    assert max(burst) - began < 0.25, "the first `rate` runs start at once"
    # Five more tokens take `per` seconds to refill (loose bounds: a shared machine).
    assert max(rest) - began >= 0.45
    assert max(rest) - began < 2.0


# -- catch and composition -----------------------------------------------------------------


async def test_catch_turns_listed_errors_into_a_kill() -> None:
    service = compose([RetryLayer(), CatchLayer((ValueError,))], raising(ValueError("invalid email")))
    outcome = await service(make_task(attempts=1, max_attempts=5))
    assert outcome == Outcome.kill("aborted: ValueError: invalid email")


async def test_catch_lets_other_errors_be_retried() -> None:
    service = compose([RetryLayer(), CatchLayer((ValueError,))], raising(ConnectionError("reset")))
    outcome = await service(make_task(attempts=1, max_attempts=5))
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error == "ConnectionError: reset"


async def test_compose_puts_the_first_layer_outermost() -> None:
    trail: list[str] = []

    def marker(name: str) -> Any:
        def layer(inner: Service) -> Service:
            async def wrapped(task: Task[Any]) -> Outcome:
                trail.append(f"{name} in")
                outcome = await inner(task)
                trail.append(f"{name} out")
                return outcome

            return wrapped

        return layer

    async def handler(task: Task[Any]) -> Outcome:
        trail.append("handler")
        return Outcome.done()

    await compose([marker("a"), marker("b"), marker("c")], handler)(make_task())
    assert trail == ["a in", "b in", "c in", "handler", "c out", "b out", "a out"]


def test_layers_describe_themselves_for_the_worker_registry() -> None:
    assert repr(TimeoutLayer(30)) == "timeout(30s)"
    assert repr(RateLimitLayer(100, 1.0)) == "rate_limit(100/1s)"
    assert repr(ConcurrencyLayer(4)) == "concurrency(4)"
    assert repr(CatchLayer((ValueError, KeyError))) == "catch(ValueError, KeyError)"
    assert (
        repr(RetryLayer(Backoff(kind="constant", base=2, max=60, jitter=False))) == "retry(constant, base=2s, max=60s)"
    )


async def test_tracing_logs_one_line_per_run_with_its_decision() -> None:
    with capture_logs() as logs:
        await compose([TracingLayer(), RetryLayer()], raising(ValueError("bad")))(make_task(attempts=1, max_attempts=2))
        await TracingLayer()(succeed)(make_task(attempts=2))
    assert [(e["event"], e["outcome"], e["attempt"], e["error"]) for e in logs] == [
        ("task finished", "retry", 1, "ValueError: bad"),
        ("task finished", "done", 2, None),
    ]
    assert all(e["task_id"] == "t1" and e["queue"] == "q" and e["duration"] >= 0 for e in logs)


async def test_tracing_inside_retry_sees_the_exception() -> None:
    with capture_logs() as logs:
        outcome = await compose([RetryLayer(), TracingLayer()], raising(ValueError("bad")))(make_task())
    assert outcome.kind is OutcomeKind.RETRY
    [entry] = logs
    assert entry["event"] == "task raised"
    assert entry["log_level"] == "error"


async def test_a_reason_that_is_no_string_is_kept_as_its_text() -> None:
    # `raise Retry(60, exc)` is natural to write: the task must still get its outcome.
    retried = await RetryLayer()(raising(Retry(60, ValueError("rate limited"))))(make_task(max_attempts=3))  # type: ignore[arg-type]
    assert (retried.kind, retried.error) == (OutcomeKind.RETRY, "rate limited")
    aborted = await RetryLayer()(raising(Abort(KeyError("gone"))))(make_task())  # type: ignore[arg-type]
    assert aborted == Outcome.kill("aborted: 'gone'")
