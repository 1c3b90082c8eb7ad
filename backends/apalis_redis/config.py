"""The Redis store's settings: the URL (redis://, rediss://, unix://), the key namespace, and
whether the URL names a Redis Cluster (`cluster = true`: one or more seed nodes, comma-separated)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apalis_cli.errors import ConfigError
from apalis_cli.redact import redact, redact_url, secrets_in

__all__ = ["RedisConfig", "check_namespace", "check_url", "cluster_seeds"]

_SCHEMES = ("redis", "rediss", "unix")
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_url(url: str, kind: str) -> str:
    """`url` if it is a Redis URL; a `ConfigError` on `url` otherwise (password redacted)."""
    if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
        shown = redact_url(url) if isinstance(url, str) else repr(url)
        raise ConfigError(f'{kind} needs a "redis://", "rediss://" or "unix://" URL, got "{shown}"', key="url")
    parts = urlsplit(url)
    database = parts.path.strip("/") if parts.scheme != "unix" else ""
    # redis-py reads a path that is not a number as database 0: a typo would share another's data.
    if database and not (database.isascii() and database.isdigit() and int(database) < 2**31):
        raise ConfigError(f'the database after the host must be a number such as "/0", got "/{database}"', key="url")
    try:
        from redis.connection import parse_url
    except ImportError:  # the store class says which extra is missing
        return url
    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # the driver's own reading of the query options, without connecting
    except ValueError as exc:  # its message may quote a piece of the password ("as 'S3cret'")
        raise ConfigError(redact(str(exc), secrets_in(url)), key="url") from None
    return url


def check_namespace(value: Any, default: str) -> str:
    """A key namespace: letters, digits, `_`, `.` and `-` (they are also glob-safe)."""
    if value is None:
        return default
    if not isinstance(value, str) or not _NAMESPACE.match(value):
        raise ConfigError(f"must be 1-64 letters, digits, '_', '.' or '-', got {value!r}", key="namespace")
    return value


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster URL (`redis://:pw@h1:7000,h2:7001/`) as the URL of its first seed node and the
    (host, port) of the others; a `ConfigError` on `url` when it cannot name a cluster."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f'a Redis Cluster is reached over TCP: "redis://" or "rediss://", got "{redact_url(url)}"', key="url"
        )
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError(f'a Redis Cluster has only database 0, got "{redact_url(url)}"', key="url")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    seeds = [_host_port(one.strip(), url) for one in hosts.split(",")]
    first = f"[{seeds[0][0]}]" if ":" in seeds[0][0] else seeds[0][0]
    netloc = f"{userinfo}{at}{first}:{seeds[0][1]}"
    return urlunsplit(parts._replace(netloc=netloc, path="")), seeds[1:]


def _host_port(text: str, url: str) -> tuple[str, int]:
    host, port = text, "6379"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'expected "host:port" seed nodes, got "{redact_url(url)}"', key="url")
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """A validated `[backends.NAME]` table of kind redis."""

    url: str
    namespace: str = "apalis"
    cluster: bool = False

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> RedisConfig:
        """Validate the URL and the options; errors name the key."""
        unknown = set(options) - {"namespace", "cluster"}
        if unknown:
            raise ConfigError("unknown key", key=sorted(unknown)[0])
        cluster = options.get("cluster", False)
        if not isinstance(cluster, bool):
            raise ConfigError(f"must be true or false, got {cluster!r}", key="cluster")
        if cluster and isinstance(url, str):
            check_url(cluster_seeds(url)[0], "redis")  # the driver reads the first seed's URL
        else:
            check_url(url, "redis")
        return cls(url=url, namespace=check_namespace(options.get("namespace"), "apalis"), cluster=cluster)
