"""The settings of a `kind = "postgres"` table: its URL and options, validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url
from apalis_sql import identifier, pool_options
from apalis_sql.options import ServerUrl

__all__ = ["PostgresConfig"]

_OPTIONS = {"schema", "application_name", "min_size", "max_size", "connect_timeout", "durable_push"}


def _schema(value: Any) -> str:
    name = identifier(value, key="schema")
    if not name:
        raise ConfigError("must not be empty", key="schema")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresConfig(ServerUrl):
    """A validated PostgreSQL store configuration."""

    url: str
    schema: str = "apalis"
    application_name: str = "apalis-cli"
    min_size: int = 1
    max_size: int = 10
    connect_timeout: float = 10.0
    durable_push: bool = True

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> PostgresConfig:
        """Validate a URL and the table's options, naming the bad key in a `ConfigError`."""
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("postgresql", "postgres"):
            shown = redact_url(url) if isinstance(url, str) else repr(url)
            raise ConfigError(f'expected a "postgresql://user:pass@host:port/db" URL, got "{shown}"', key="url")
        pool = pool_options(options, _OPTIONS)
        name = options.get("application_name", "apalis-cli")
        if not isinstance(name, str) or not name.isprintable() or len(name) > 63:
            raise ConfigError(f"must be printable text of at most 63 characters, got {name!r}", key="application_name")
        durable = options.get("durable_push", True)
        if not isinstance(durable, bool):
            raise ConfigError(f"must be true or false, got {durable!r}", key="durable_push")
        return cls(
            url=url,
            schema=_schema(options.get("schema", "apalis")),
            application_name=name,
            min_size=pool.min_size,
            max_size=pool.max_size,
            connect_timeout=max(pool.connect_timeout, 0.1),
            durable_push=durable,
        )
