"""The rsmq store's options: each bad value names its key; queue names follow rsmq's rule."""

from __future__ import annotations

from typing import Any

import pytest
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import ConfigError, UsageError
from apalis_rsmq import RsmqStore
from apalis_rsmq.config import RsmqConfig


def spec(url: str = "redis://127.0.0.1:6379/0", **options: Any) -> StoreSpec:
    return StoreSpec(name="x", kind="rsmq", url=url, options=options)


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ({"vt": -1}, "vt"),
        ({"vt": "30s"}, "vt"),
        ({"delay": 10_000_000}, "delay"),
        ({"maxsize": 100}, "maxsize"),
        ({"realtime": "yes"}, "realtime"),
        ({"namespace": "a b"}, "namespace"),
        ({"ns": "rsmq"}, "ns"),
    ],
)
def test_a_bad_option_names_its_key(bad: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RsmqStore.from_spec(spec(**bad))
    assert caught.value.key == key


def test_a_bad_url_is_named_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        RsmqStore.from_spec(spec("amqp://user:hunter2@host/"))
    assert caught.value.key == "url"
    assert "hunter2" not in str(caught.value)


def test_defaults_are_rsmqs_except_maxsize() -> None:
    settings = RsmqConfig.parse("redis://localhost", {})
    assert (settings.namespace, settings.vt, settings.delay, settings.realtime) == ("rsmq", 30.0, 0.0, False)
    assert settings.maxsize == -1


@pytest.mark.parametrize("name", ["has space", "dots.are.pyrsmq.only", "x" * 156, ""])
def test_queue_names_follow_rsmq(name: str) -> None:
    store = RsmqStore.from_spec(spec())
    with pytest.raises(UsageError):
        store.backend(name, codec=JsonCodec())
