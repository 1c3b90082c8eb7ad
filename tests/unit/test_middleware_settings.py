"""Middleware settings travel from the config file to the layers a worker runs, with their values
and units: not only the kinds in the right order, but `timeout.after`, `rate_limit.rate/per`,
the retry backoff and the exception types of `catch.kill_on`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.cli.assembly import Assembly, assemble
from apalis_cli.config import load_config
from apalis_cli.layers import (
    Backoff,
    CatchLayer,
    ConcurrencyLayer,
    RateLimitLayer,
    RetryLayer,
    TimeoutLayer,
    TracingLayer,
)
from apalis_cli.service import Outcome, OutcomeKind, compose
from apalis_cli.task import Task, TaskContext

CONFIG = """\
[backends.mem]
kind = "memory"

[[workers]]
name = "mailer"
backend = "mem"
handler = "apalis_cli.demo:resize_image"
middleware = [
  {{ kind = "tracing", level = "warning" }},
  {{ kind = "retry", max_attempts = 4, backoff = "linear", base = "1500ms", max = "2m", jitter = false }},
  {{ kind = "timeout", after = "250ms" }},
  {{ kind = "rate_limit", rate = 7, per = "2m" }},
  {{ kind = "concurrency", limit = 3 }},
  {{ kind = "catch", kill_on = ["LookupError", "{module}:Bounced"] }},
]
"""


@pytest.fixture
def assembly(tmp_path: Path) -> Assembly:
    module = f"mailer_errors_{uuid.uuid4().hex}"  # a fresh module name: sys.modules caches
    (tmp_path / f"{module}.py").write_text("class Bounced(Exception):\n    pass\n")
    path = tmp_path / "jobs.toml"
    path.write_text(CONFIG.format(module=module))
    config = load_config(path)
    built = assemble(config, config.workers)
    for loaded in built.handlers.values():
        loaded.close()
    return built


def test_each_setting_reaches_its_layer_in_seconds(assembly: Assembly) -> None:
    tracing, retry, timeout, rate, concurrency, catch = assembly.layers["mailer"]
    assert isinstance(tracing, TracingLayer)
    assert tracing.level == "warning"
    assert isinstance(retry, RetryLayer)
    assert retry.backoff == Backoff(kind="linear", base=1.5, max=120.0, jitter=False)
    assert isinstance(timeout, TimeoutLayer)
    assert timeout.after == pytest.approx(0.25)
    assert isinstance(rate, RateLimitLayer)
    assert (rate.rate, rate.per) == (7, 120.0)
    assert isinstance(concurrency, ConcurrencyLayer)
    assert concurrency.limit == 3
    assert isinstance(catch, CatchLayer)
    assert catch.kill_on[0] is LookupError
    assert catch.kill_on[1].__name__ == "Bounced"
    assert issubclass(catch.kill_on[1], Exception)


def test_the_worker_runs_them_and_registers_them_as_configured(assembly: Assembly) -> None:
    (config,) = assembly.workers
    worker = assembly.factory(config)
    assert worker.context.layers == (
        "tracing(warning)",
        "retry(linear, base=1.5s, max=120s)",
        "timeout(250ms)",
        "rate_limit(7/2m)",
        "concurrency(3)",
        "catch(LookupError, Bounced)",
    )
    assert config.max_attempts == 4
    assert config.backoff == Backoff(kind="linear", base=1.5, max=120.0, jitter=False)


@pytest.mark.parametrize(
    ("raised", "kind"),
    [(KeyError("no such user"), OutcomeKind.KILL), (ConnectionError("reset"), OutcomeKind.RETRY)],
    ids=["subclass-of-kill_on", "not-listed"],
)
async def test_kill_on_decides_by_the_configured_types(
    assembly: Assembly, raised: Exception, kind: OutcomeKind
) -> None:
    async def failing(task: Task[Any]) -> Outcome:
        raise raised

    service = compose(assembly.layers["mailer"], failing)
    outcome = await service(Task(id="t", args={}, ctx=TaskContext(queue="mailer", attempts=1, max_attempts=4)))
    assert outcome.kind is kind


async def test_a_custom_exception_named_in_kill_on_kills(assembly: Assembly) -> None:
    catch = assembly.layers["mailer"][-1]
    assert isinstance(catch, CatchLayer)
    bounced = catch.kill_on[1]

    async def failing(task: Task[Any]) -> Outcome:
        raise bounced("mailbox full")

    service = compose(assembly.layers["mailer"], failing)
    outcome = await service(Task(id="t", args={}, ctx=TaskContext(queue="mailer", attempts=1, max_attempts=4)))
    assert outcome == Outcome.kill("aborted: Bounced: mailbox full")
