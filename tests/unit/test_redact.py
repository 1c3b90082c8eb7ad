"""The one redaction module: every URL and DSN form a store accepts, and the text of drivers'
errors that echo them, shown without their secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from apalis_cli.config import parse_config
from apalis_cli.errors import describe_error
from apalis_cli.redact import redact, redact_url, secrets_in

SECRET = "S3cr3tPw"

# (a URL or DSN as a user writes it, how it is shown). Each hides SECRET (or "pw", "x", ...).
FORMS = [
    ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
    ("redis://:pw@localhost/0", "redis://:***@localhost/0"),
    ("amqp://guest@localhost/", "amqp://guest@localhost/"),
    ("sqlite:///apalis.db", "sqlite:///apalis.db"),
    ("sqlite:////var/lib/a:b@c.db", "sqlite:////var/lib/a:b@c.db"),
    ("mysql://u:p@h/db?password=x&ssl=1", "mysql://u:***@h/db?password=***&ssl=1"),
    ("mysql://root@h/db", "mysql://root@h/db"),
    # unencoded '@', ':', '/', '#' and '?' inside the password
    (f"postgresql://u:{SECRET}@x@127.0.0.1:5/db", "postgresql://u:***@127.0.0.1:5/db"),
    (f"redis://u:a:{SECRET}@h:6379/0", "redis://u:***@h:6379/0"),
    (f"amqp://u:{SECRET}/x#y?z@h:5672/vhost", "amqp://u:***@h:5672/vhost"),
    (f"postgresql://u:{SECRET.replace('3', '%40')}@h/db", "postgresql://u:***@h/db"),
    # IPv6 hosts
    (f"postgresql://app:{SECRET}@[::1]:5432/x", "postgresql://app:***@[::1]:5432/x"),
    (f"redis://:{SECRET}@[fe80::1%25eth0]:6379", "redis://:***@[fe80::1%25eth0]:6379"),
    # query-string and fragment secrets, and the parameters that are not secret
    (f"postgresql://u@h/db?password={SECRET}", "postgresql://u@h/db?password=***"),
    (
        f"postgresql://u@h/db?sslmode=require&sslpassword={SECRET}",
        "postgresql://u@h/db?sslmode=require&sslpassword=***",
    ),
    (f"unix:///tmp/redis.sock?db=0&password={SECRET}", "unix:///tmp/redis.sock?db=0&password=***"),
    (f"nats://h:4222?token={SECRET}&name=a", "nats://h:4222?token=***&name=a"),
    (f"amqps://h/vh?auth_secret={SECRET}&access_key={SECRET}", "amqps://h/vh?auth_secret=***&access_key=***"),
    (f"redis://h/0#token={SECRET}", "redis://h/0#token=***"),
    # comma lists: several hosts after one userinfo, or several URLs
    (f"redis://u:{SECRET}@a:6379,b:6379/0", "redis://u:***@a:6379,b:6379/0"),
    (f"postgresql://u:{SECRET}@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
    (f"nats://u:{SECRET}@a:4222,nats://u:{SECRET}@b:4222", "nats://u:***@a:4222,nats://u:***@b:4222"),
    (f"nats://{SECRET}@a:4222, tls://b:4222", "nats://***@a:4222, tls://b:4222"),
    # libpq key=value strings
    (f"host=127.0.0.1 port=5 user=u password={SECRET} dbname=x", "host=127.0.0.1 port=5 user=u password=*** dbname=x"),
    (f"host=h password = '{SECRET} it\\'s' dbname=x", "host=h password = *** dbname=x"),
    (f"host=h sslpassword={SECRET} sslmode=verify-full", "host=h sslpassword=*** sslmode=verify-full"),
]


@pytest.mark.parametrize(("url", "shown"), FORMS)
def test_every_form_is_shown_without_its_secret(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact(url) == shown  # the patterns alone find it too (a URL inside any text)
    assert redact_url(shown) == shown  # masking twice changes nothing


@pytest.mark.parametrize(("url", "shown"), FORMS)
def test_a_url_inside_an_error_message_is_masked(url: str, shown: str) -> None:
    for template in ('cannot connect to "{}": refused', "at {}.", "url={} (retrying)", "'{}'"):
        assert redact(template.format(url), secrets_in(url)) == template.format(shown)


def test_a_password_with_a_space_is_known_from_its_url() -> None:
    url = "redis://u:my secret@h:6379/0"
    assert redact_url(url) == "redis://u:***@h:6379/0"
    assert redact(f"cannot reach {url}: refused", secrets_in(url)) == "cannot reach redis://u:***@h:6379/0: refused"


def test_driver_text_that_echoes_a_piece_of_the_password() -> None:
    # libpq splits userinfo at the first '@': the rest of the password becomes the host it names.
    url = f"postgresql://u:{SECRET}@x@127.0.0.1:5432/x"
    error = "failed to resolve host 'x@127.0.0.1': [Errno -2] Name or service not known (x=1)"
    assert redact(error, secrets_in(url)) == (
        "failed to resolve host '***@127.0.0.1': [Errno -2] Name or service not known (x=1)"
    )
    url = f"postgresql://u:p@{SECRET}@127.0.0.1/db"
    assert redact(f"failed to resolve host '{SECRET}@127.0.0.1'", secrets_in(url)) == (
        "failed to resolve host '***@127.0.0.1'"
    )
    # mysql names the password it decoded
    url = "mysql://u:pa%20ss%2Fword@h/db"
    assert redact("denied for 'pa ss/word'", secrets_in(url)) == "denied for '***'"


def test_known_secrets_hide_whole_words_only() -> None:
    secrets = secrets_in("postgresql://u:p@ssword@h/db")
    assert redact("password authentication failed for user u", secrets) == ("password authentication failed for user u")
    assert redact("host 'ssword@h' not found", secrets) == "host '***@h' not found"


def test_text_without_secrets_is_left_alone() -> None:
    for text in (
        "Access denied for user 'root'@'127.0.0.1' (using password: YES)",
        "ValueError: cannot send to ada@example.com",
        "redis://127.0.0.1:6379/0 and amqp://guest@h/",
        "a password is required",
    ):
        assert redact(text) == text


def test_reprs_of_settings_hide_their_secret_values() -> None:
    text = f"{{'host': 'h', 'password': '{SECRET}', \"api_key\": \"{SECRET}\"}}"
    assert SECRET not in redact(text)
    assert "'host': 'h'" in redact(text)


def test_describe_error_masks_what_it_describes() -> None:
    url = f"postgresql://u:{SECRET}@x@127.0.0.1/db"
    error = OSError(f"cannot open {url}: failed to resolve host 'x@127.0.0.1'")
    assert describe_error(error, secrets_in(url)) == (
        "OSError: cannot open postgresql://u:***@127.0.0.1/db: failed to resolve host '***@127.0.0.1'"
    )
    assert SECRET not in describe_error(error)


def test_a_config_knows_the_secrets_of_its_backends() -> None:
    source = (
        f'[backends.a]\nkind = "postgres"\nurl = "host=h password={SECRET}"\n'
        f'[backends.b]\nkind = "nats"\nurl = "nats://tok{SECRET}@h:4222"\n'
    )
    secrets = parse_config(source, Path("c.toml")).secrets
    assert SECRET in secrets
    assert f"tok{SECRET}" in secrets
