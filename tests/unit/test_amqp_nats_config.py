"""Config validation of the amqp and nats stores: bad keys are named, passwords never shown."""

from __future__ import annotations

from typing import Any

import pytest
from apalis_amqp import AmqpStore
from apalis_cli.backend import StoreSpec
from apalis_cli.codec import JsonCodec
from apalis_cli.errors import ConfigError
from apalis_nats import NatsStore


def _spec(kind: str, url: str, **options: Any) -> StoreSpec:
    return StoreSpec(name="main", kind=kind, url=url, options=options)


@pytest.mark.parametrize(
    ("url", "options", "key"),
    [
        ("redis://localhost", {}, "url"),
        ("amqp://localhost", {"prefix": "has space"}, "prefix"),
        ("amqp://localhost", {"max_priority": 256}, "max_priority"),
        ("amqp://localhost", {"max_priority": True}, "max_priority"),
        ("amqp://localhost", {"durable": False}, "durable"),
    ],
)
def test_amqp_rejects_bad_settings_naming_the_key(url: str, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AmqpStore.from_spec(_spec("amqp", url, **options))
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("url", "options", "key"),
    [
        ("http://localhost:4222", {}, "url"),
        ("nats://localhost:4222", {"stream": "has.dot"}, "stream"),
        ("nats://localhost:4222", {"prefix": "a.b"}, "prefix"),
        ("nats://localhost:4222", {"storage": "disk"}, "storage"),
        ("nats://localhost:4222", {"duplicate_window": "soon"}, "duplicate_window"),
        ("nats://localhost:4222", {"duplicate_window": 0}, "duplicate_window"),
        ("nats://localhost:4222", {"ack_wait": "30s"}, "ack_wait"),
    ],
)
def test_nats_rejects_bad_settings_naming_the_key(url: str, options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        NatsStore.from_spec(_spec("nats", url, **options))
    assert caught.value.key == key


def test_passwords_are_redacted_in_url_errors() -> None:
    with pytest.raises(ConfigError) as amqp:
        AmqpStore.from_spec(_spec("amqp", "http://user:s3cret@host/"))
    with pytest.raises(ConfigError) as nats:
        NatsStore.from_spec(_spec("nats", "nats://a:4222,http://user:s3cret@host:4222"))
    for caught in (amqp, nats):
        assert "s3cret" not in str(caught.value)
        assert "***" in str(caught.value)


def test_defaults_and_options_are_read() -> None:
    amqp = AmqpStore.from_spec(_spec("amqp", "amqps://h/vhost", prefix="jobs", max_priority=0))
    assert (amqp.config.prefix, amqp.config.max_priority) == ("jobs", 0)
    nats = NatsStore.from_spec(_spec("nats", "nats://a:4222, nats://b:4222", duplicate_window="5m"))
    assert nats.config.servers == ["nats://a:4222", "nats://b:4222"]
    assert (nats.config.stream, nats.config.prefix, nats.config.duplicate_window) == ("APALIS", "apalis", 300.0)


def test_nats_queue_names_must_fit_a_subject() -> None:
    store = NatsStore.from_spec(_spec("nats", "nats://localhost:4222"))
    assert store.backend("emails.high", codec=JsonCodec()).work == "apalis.q.emails.high"
    with pytest.raises(ConfigError):
        store.backend("bad queue", codec=JsonCodec())
    with pytest.raises(ConfigError):
        store.backend("wild.*", codec=JsonCodec())


@pytest.mark.parametrize("queue", ["é", "x.>", "tab\there", "a*b"])
def test_amqp_refuses_a_queue_name_its_client_cannot_declare(queue: str) -> None:
    # aio-pika refused it at the first declare, as "ValueError: Invalid value for queue" (exit 1).
    store = AmqpStore.from_spec(_spec("amqp", "amqp://localhost"))
    with pytest.raises(ConfigError) as caught:
        store.backend(queue, codec=JsonCodec())
    assert caught.value.key == "queue"
    assert store.backend("emails:high/eu", codec=JsonCodec()).queue == "emails:high/eu"
