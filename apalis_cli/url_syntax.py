"""The syntax of a store's URL, checked once when the config is read, for every kind alike.

Each store checks that its URL has the right scheme; what lies between `://` and the path (the
hosts and ports) is checked here, so that a port of 99999, a port that is not a number or an IPv6
address without its closing bracket is a config error at the `url` line, not a driver's message
when the store is opened. Forms the drivers accept are kept: several hosts (`postgresql://a:5432,
b:5433/db`), several URLs (`nats://a:4222,nats://b:4222`), a user and password before an `@`.

Messages never repeat the user name or password: only the host part is quoted.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["check_url", "host_and_port"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_END_OF_NETLOC = re.compile(r"[/?#]")


def check_url(url: str) -> None:
    """Raise ValueError (a message fit for a person) when a URL's hosts or ports cannot be parsed.

    Text without `://` is left to the store (it is not a URL this module knows how to read).
    """
    if "://" not in url:
        return
    for one in _NEXT_URL.split(url.strip()):
        _check_one(one)


def _check_one(url: str) -> None:
    scheme = _SCHEME.match(url)
    if scheme is None:
        raise ValueError('expected a URL such as "scheme://host:port/..." (the scheme is missing or malformed)')
    rest = url[scheme.end() :]
    end = _END_OF_NETLOC.search(rest)
    netloc = rest[: end.start()] if end else rest
    _, at, hosts = netloc.rpartition("@")
    try:
        for host in hosts.split(","):
            _check_host(host)
    except ValueError:
        if not at and "@" in rest[len(netloc) :]:
            # "user:pa/ss@host": a driver reads "user:pa" as the host and port. Quoting that
            # would print part of the password.
            raise ValueError(
                'cannot read the host and port: a "/", "?" or "#" in the user name or password must be '
                "percent-encoded (%2F, %3F, %23)"
            ) from None
        raise


def _check_host(text: str) -> None:
    if text:
        host_and_port(text)


def host_and_port(text: str) -> tuple[str, int | None]:
    """`("::1", 6379)` from `"[::1]:6379"`, `("db", None)` from `"db"`; ValueError when the host
    or the port cannot be read."""
    if any(ch.isspace() for ch in text):
        raise ValueError(f'the host "{text}" has a space in it')
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f'the IPv6 host "{text}" has no closing "]"')
        host, after = text[1:close], text[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{host}" is not an IPv6 address') from None
        if after and not after.startswith(":"):
            raise ValueError(f'expected ":port" after the IPv6 host "[{host}]", got "{after}"')
        port = after[1:]
    else:
        host, _, port = text.partition(":")
        if ":" in port:
            raise ValueError(f'an IPv6 host goes in brackets, as in "[::1]:6379"; got "{text}"')
    if not port:
        return host, None
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f'the port must be a number from 1 to 65535, got "{port}"')
    return host, int(port)
