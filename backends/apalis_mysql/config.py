"""The settings of a `kind = "mysql"` table: its URL and options, validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact_url
from apalis_sql import identifier, pool_options
from apalis_sql.options import ServerUrl

__all__ = ["MysqlConfig"]

_OPTIONS = {"table_prefix", "min_size", "max_size", "connect_timeout"}


@dataclass(frozen=True, slots=True, kw_only=True)
class MysqlConfig(ServerUrl):
    """A validated MySQL/MariaDB store configuration (`mysql://user:pass@host:port/db`)."""

    url: str
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""
    database: str = ""
    unix_socket: str | None = None
    table_prefix: str = "apalis_"
    min_size: int = 1
    max_size: int = 10
    connect_timeout: float = 10.0

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> MysqlConfig:
        """Validate a URL and the table's options, naming the bad key in a `ConfigError`."""
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        expected = f'expected a "mysql://user:pass@host:port/database" URL, got "{shown}"'
        try:
            parts = urlsplit(url)
            port = parts.port or 3306
        except (ValueError, TypeError, AttributeError):
            raise ConfigError(expected, key="url") from None
        database = unquote(parts.path.lstrip("/"))
        if parts.scheme not in ("mysql", "mariadb") or not database or "/" in database:
            raise ConfigError(expected, key="url")
        query = parse_qs(parts.query)
        pool = pool_options(options, _OPTIONS)
        return cls(
            url=url,
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
            unix_socket=query.get("unix_socket", [None])[0],
            table_prefix=identifier(options.get("table_prefix", "apalis_"), key="table_prefix"),
            min_size=pool.min_size,
            max_size=pool.max_size,
            connect_timeout=max(pool.connect_timeout, 0.1),
        )
