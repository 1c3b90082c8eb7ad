"""Config loading: typed values, defaults, ${ENV} substitution, and file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from apalis_cli.config import CommandHandler, ImportHandler, load_config, parse_config
from apalis_cli.errors import ConfigError, UsageError

FILE = Path("jobs.toml")

GOOD = """\
[backends.main]
kind = "sqlite"
url = "sqlite:///${DB_NAME}.db"
journal = "wal"

[[workers]]
name = "emails"
backend = "main"
handler = "myapp.jobs:send_email"
concurrency = 8
keep_alive = "2s"
middleware = [
  { kind = "retry", max_attempts = 5, backoff = "linear", base = "1s", max = "10m" },
  { kind = "timeout", after = "30s" },
  { kind = "rate_limit", rate = 100, per = "1s" },
  { kind = "catch", kill_on = ["ValueError"] },
]

[[workers]]
name = "resize"
queue = "images"
codec = "msgpack"
backend = "main"
handler = { command = ["./resize.sh", "--fast"] }
max_attempts = 2
"""


def parse(source: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(source, FILE, env if env is not None else {"DB_NAME": "jobs"})


def error_of(source: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(source, env)
    return str(info.value)


def test_a_full_config_is_typed_with_defaults() -> None:
    config = parse(GOOD)
    main = config.backends["main"]
    assert (main.kind, main.url, dict(main.options)) == ("sqlite", "sqlite:///jobs.db", {"journal": "wal"})
    emails, resize = config.workers
    assert emails.queue == "emails"
    assert emails.handler == ImportHandler(path="myapp.jobs:send_email")
    assert emails.concurrency == 8
    assert emails.keep_alive == 2.0
    assert emails.stale_after == 6.0
    assert emails.max_attempts == 5  # from the retry middleware
    assert emails.retention == 7 * 86400
    assert [m.kind for m in emails.middleware] == ["retry", "timeout", "rate_limit", "catch"]
    assert emails.backoff is not None
    assert emails.backoff.kind == "linear"
    assert emails.backoff.max == 600
    assert resize.queue == "images"
    assert resize.codec == "msgpack"
    assert resize.handler == CommandHandler(command=("./resize.sh", "--fast"))
    assert resize.max_attempts == 2
    assert resize.keep_alive == 10.0
    assert resize.stale_after == 30.0


def test_no_backends_table_means_embedded_sqlite() -> None:
    config = parse('[[workers]]\nname = "w"\nhandler = "m:f"\n')
    assert config.backends["default"].url == "sqlite:///apalis.db"
    assert config.workers[0].backend == "default"


def test_errors_point_at_the_line_of_the_key() -> None:
    source = GOOD.replace("max_attempts = 2", "concurrency = 0")
    assert error_of(source) == "jobs.toml:25: workers[1].concurrency: must be >= 1, got 0"


def test_unknown_keys_are_errors() -> None:
    assert error_of(GOOD.replace('queue = "images"', 'queu = "images"')) == "jobs.toml:21: workers[1].queu: unknown key"
    assert error_of("colour = 1\n") == "jobs.toml:1: colour: unknown key"


def test_values_inside_inline_tables_point_at_the_enclosing_key() -> None:
    source = GOOD.replace('after = "30s"', 'after = "soon"')
    message = error_of(source)
    assert message.startswith("jobs.toml:12: workers[0].middleware[1].after: expected a duration")


def test_missing_environment_variable_is_named() -> None:
    assert error_of(GOOD, env={}) == "jobs.toml:3: backends.main.url: environment variable DB_NAME is not set"


def test_environment_default() -> None:
    config = parse(GOOD.replace("${DB_NAME}", "${DB_NAME:-fallback}"), env={})
    assert config.backends["main"].url == "sqlite:///fallback.db"


def test_toml_syntax_error_has_line_and_column() -> None:
    message = error_of('[[workers]]\nname = "a\n')
    assert message.startswith("jobs.toml:2:")
    assert "invalid TOML" in message


def test_unknown_backend_lists_the_defined_ones() -> None:
    source = GOOD.replace('backend = "main"\nhandler = "myapp', 'backend = "mian"\nhandler = "myapp')
    assert (
        error_of(source)
        == 'jobs.toml:8: workers[0].backend: no backend named "mian"; did you mean "main"? (defined: main)'
    )


def test_bad_handler_path() -> None:
    message = error_of(GOOD.replace('"myapp.jobs:send_email"', '"myapp.jobs.send_email"'))
    assert message.startswith("jobs.toml:9: workers[0].handler: expected")


def test_stale_after_must_exceed_keep_alive() -> None:
    message = error_of(GOOD.replace('keep_alive = "2s"', 'keep_alive = "2s"\nstale_after = "1s"'))
    assert message.startswith("jobs.toml:12: workers[0].stale_after: must be longer than keep_alive")


def test_duplicate_worker_names() -> None:
    message = error_of(GOOD.replace('name = "resize"', 'name = "emails"'))
    assert message == 'jobs.toml:20: workers[1].name: "emails" is already the name of another worker'


def test_missing_required_key_names_the_table() -> None:
    assert error_of("[backends.x]\nurl = 'memory://'\n") == 'jobs.toml:1: backends.x: missing required key "kind"'


def test_unknown_middleware_kind() -> None:
    message = error_of(GOOD.replace('kind = "timeout"', 'kind = "bulkhead"'))
    assert message.startswith("jobs.toml:12: workers[0].middleware[1].kind: expected one of retry, timeout")


def test_worker_lookup() -> None:
    config = parse(GOOD)
    assert config.worker("resize").name == "resize"
    with pytest.raises(UsageError, match="several workers"):
        config.worker(None)
    with pytest.raises(UsageError, match=r'no worker named "nope".*emails, resize'):
        config.worker("nope")


def test_lines_after_multiline_arrays_and_strings_stay_right(tmp_path: Path) -> None:
    source = (
        'description = """\nname = "not a key"\n"""\n'
        "[[workers]]\n"
        'name = "a"\n'
        'handler = { command = [\n  "x",\n  "y",\n] }\n'
        "concurrency = -1\n"
    )
    path = tmp_path / "c.toml"
    path.write_text(source.replace('description = """\nname = "not a key"\n"""\n', ""))
    with pytest.raises(ConfigError, match=r"c\.toml:7: workers\[0\]\.concurrency"):
        load_config(path)
    assert "description" in error_of(source)  # unknown key, line 1


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


CRON = """\
[backends.main]
kind = "memory"

[[workers]]
name = "nightly"
backend = "cron"
schedule = "0 0 3 * * *"
timezone = "Europe/Paris"
pipe_to = "main"
handler = "m:f"
"""


def test_cron_worker_keys() -> None:
    (worker,) = parse(CRON).workers
    assert worker.cron == {"schedule": "0 0 3 * * *", "timezone": "Europe/Paris"}
    assert worker.pipe_to == "main"


def test_cron_keys_only_for_cron_workers() -> None:
    message = error_of(CRON.replace('backend = "cron"', 'backend = "main"'))
    assert message == 'jobs.toml:7: workers[0].schedule: only for a cron worker (backend "main" is memory)'


def test_pipe_to_names_a_durable_backend() -> None:
    message = error_of(CRON.replace('pipe_to = "main"', 'pipe_to = "mian"'))
    assert message == 'jobs.toml:9: workers[0].pipe_to: no backend named "mian"; did you mean "main"? (defined: main)'


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("keep_alive = nan", "jobs.toml:10: workers[0].keep_alive: a duration must be a number, got nan"),
        ("poll_interval = inf", "jobs.toml:10: workers[0].poll_interval: a duration must be at most 100 years"),
        ('retention = "999999999999d"', "jobs.toml:10: workers[0].retention: a duration must be at most 100 years"),
        ("shutdown_timeout = -inf", "jobs.toml:10: workers[0].shutdown_timeout: a duration cannot be negative"),
        ("concurrency = 10001", "jobs.toml:10: workers[0].concurrency: must be <= 10000, got 10001"),
        ("max_attempts = 2147483648", "jobs.toml:10: workers[0].max_attempts: must be <= 2147483647, got 2147483648"),
    ],
)
def test_numbers_beyond_what_a_store_or_a_timer_can_hold_are_refused(setting: str, message: str) -> None:
    source = GOOD.replace('keep_alive = "2s"\n', "").replace("concurrency = 8\n", setting + "\n", 1)
    assert error_of(source).startswith(message)


def test_middleware_numbers_are_bounded_too() -> None:
    message = error_of(GOOD.replace('base = "1s"', "base = nan"))
    assert message == "jobs.toml:12: workers[0].middleware[0].base: a duration must be a number, got nan"
    message = error_of(GOOD.replace("rate = 100", "rate = 9223372036854775807"))
    assert message.startswith("jobs.toml:12: workers[0].middleware[2].rate: must be <= 2147483647")


@pytest.mark.parametrize("kind", ["postgres", "pgmq", "mysql", "redis", "rsmq", "amqp", "nats", "someone-elses"])
@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("[::1", 'the IPv6 host "[::1" has no closing "]"'),
        ("[zz::1]:80", '"zz::1" is not an IPv6 address'),
        ("::1:6379", 'an IPv6 host goes in brackets, as in "[::1]:6379"; got "::1:6379"'),
        ("db:99999", 'the port must be a number from 1 to 65535, got "99999"'),
        ("db:notaport", 'the port must be a number from 1 to 65535, got "notaport"'),
        ("db:0", 'the port must be a number from 1 to 65535, got "0"'),
        ("a:5432,b:99999", 'the port must be a number from 1 to 65535, got "99999"'),
    ],
)
def test_a_url_a_driver_cannot_read_is_an_error_at_the_url_line(kind: str, host: str, message: str) -> None:
    scheme = {"postgres": "postgresql", "pgmq": "postgresql", "rsmq": "redis", "someone-elses": "x"}.get(kind, kind)
    source = f'[backends.main]\nkind = "{kind}"\nurl = "{scheme}://user:hunter2@{host}/db"\n'
    message_seen = error_of(source)
    assert message_seen == f"jobs.toml:3: backends.main.url: {message}"
    assert "hunter2" not in message_seen


def test_a_password_with_a_slash_is_not_read_as_a_port_nor_printed() -> None:
    message = error_of('[backends.main]\nkind = "redis"\nurl = "redis://user:hun/ter2@db:6379/0"\n')
    assert message.startswith('jobs.toml:3: backends.main.url: cannot read the host and port: a "/", "?" or "#"')
    assert "hun" not in message.partition("url:")[2].replace("host and port", "")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:p@ss@db:5432/app",  # an "@" in the password: the host is after the last one
        "postgresql://a:5432,b:5433/app",  # libpq's several hosts
        "nats://a:4222, nats://b:4222",  # nats' several servers
        "redis://[::1]:6379/0",
        "redis://[fe80::1%25eth0]:6379/0",
        "redis://db/0",
        "sqlite:////var/lib/my jobs@2024.db",
        "memory://",
        "host=db port=5432",  # not a URL: left to the store
    ],
)
def test_urls_drivers_accept_are_accepted(url: str) -> None:
    config = parse(f'[backends.main]\nkind = "any"\nurl = "{url}"\n')
    assert config.backends["main"].url == url


def test_a_config_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_bytes(b'[[workers]]\nname = "w"\nhandler = "m:f" # caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:3: not UTF-8 text (byte 0xe9)"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (f'name = "{"w" * 101}"', "jobs.toml:7: workers[0].name: must be at most 100 characters, got 101"),
        (f'queue = "{"q" * 101}"', "jobs.toml:10: workers[0].queue: must be at most 100 characters, got 101"),
        ('queue = "a\\u0007b"', "jobs.toml:10: workers[0].queue: must not contain control characters, got 'a\\x07b'"),
        ('queue = " "', "jobs.toml:10: workers[0].queue: must not be empty"),
    ],
)
def test_worker_and_queue_names_fit_every_store(setting: str, message: str) -> None:
    # A worker's id and a broker's queue names are built from them: they must fit a 191-character
    # column (MySQL) and AMQP's 255, and never carry control characters into logs and terminals.
    key = setting.partition(" ")[0]
    source = GOOD.replace('name = "emails"', setting if key == "name" else 'name = "emails"', 1)
    if key == "queue":
        source = source.replace("concurrency = 8", setting, 1)
    assert error_of(source) == message
