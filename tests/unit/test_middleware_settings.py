"""Middleware settings travel from the config file to the layers a worker runs, with their values
and units: not only the kinds in the right order, but `timeout.after`, `rate_limit.rate/per`,
the retry backoff and the exception types of `catch.kill_on`."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from apalis_cli.cli.assembly import Assembly, assemble, build_layers
from apalis_cli.config import load_config, parse_config
from apalis_cli.errors import ConfigError
from apalis_cli.layers import (
    LAYERS,
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


# The keys each kind cannot do without: a kind added to LAYERS must be added here too.
_REQUIRED = {
    "retry": "",
    "timeout": 'after = "1s", ',
    "rate_limit": "rate = 1, ",
    "concurrency": "limit = 1, ",
    "catch": 'kill_on = ["ValueError"], ',
    "tracing": "",
}


def test_the_config_offers_every_layer_and_only_those() -> None:
    assert list(LAYERS) == list(_REQUIRED)
    config = "[[workers]]\nname = 'w'\nhandler = 'm:f'\nmiddleware = [{ kind = 'retrying' }]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(config, Path("jobs.toml"))
    assert str(error.value) == (
        "jobs.toml:4: workers[0].middleware[0].kind: expected one of retry, timeout, rate_limit, concurrency, "
        "catch, tracing, got 'retrying'"
    )


@pytest.mark.parametrize("kind", list(LAYERS))
def test_each_layer_reads_its_own_table_and_refuses_other_keys_at_their_line(kind: str) -> None:
    entry = f'{{ kind = "{kind}", {_REQUIRED[kind]}colour = "red" }}'
    config = f"[[workers]]\nname = 'w'\nhandler = 'm:f'\nmiddleware = [\n  {{ kind = 'tracing' }},\n  {entry},\n]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(config, Path("jobs.toml"))
    assert str(error.value) == "jobs.toml:4: workers[0].middleware[1].colour: unknown key"  # the list's line
    (layer,) = parse_config(config.replace(', colour = "red"', ""), Path("jobs.toml")).workers[0].middleware[1:]
    assert isinstance(layer, LAYERS[kind])


def test_reading_the_config_imports_no_exception_class_it_names(tmp_path: Path) -> None:
    # `apalis push` reads the config too: only assembling a worker imports the application.
    module = f"mailer_errors_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text("class Bounced(Exception):\n    pass\n")
    path = tmp_path / "jobs.toml"
    path.write_text(CONFIG.format(module=module))
    config = load_config(path)
    assert module not in sys.modules
    (worker,) = config.workers
    catch = build_layers(config, worker)[-1]
    assert isinstance(catch, CatchLayer)
    assert catch.kill_on[1] is sys.modules[module].Bounced


def test_an_exception_class_that_cannot_be_found_is_a_config_error_at_kill_on(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(CONFIG.format(module="no_such_module_here"))
    config = load_config(path)
    with pytest.raises(ConfigError) as error:
        build_layers(config, config.workers[0])
    assert str(error.value).startswith(
        f'{path}:8: workers[0].middleware[5].kill_on: cannot import "no_such_module_here:Bounced"'
    )
