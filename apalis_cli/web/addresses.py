"""The board's address options, checked before anything starts (no web stack imported here)."""

from __future__ import annotations

from ..errors import UsageError
from .security import is_loopback

__all__ = ["TOKEN_ENV", "check_admin_address", "parse_addr"]

TOKEN_ENV = "APALIS_WEB_TOKEN"


def parse_addr(text: str, option: str) -> tuple[str, int]:
    """HOST:PORT (`[::1]:8080` for IPv6; port 0: any free port, as the start line shows); a
    usage error naming `option` otherwise."""
    from ..url_syntax import host_and_port

    any_port = text.endswith(":0")
    try:
        host, port = host_and_port(text[:-2] + ":1" if any_port else text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if not host or port is None:
        raise UsageError(f'{option}: expected HOST:PORT such as "127.0.0.1:8080" or "[::1]:8080", got "{text}"')
    return host.strip("[]"), 0 if any_port else port


def check_admin_address(host: str, admin: bool, token: str | None, option: str) -> None:
    """Refuse actions open to a network: --admin off loopback needs a token."""
    if admin and not is_loopback(host) and not token:
        raise UsageError(
            f"{option}: {host} is not a loopback address, and --admin there needs a token: "
            f"set {TOKEN_ENV} (clients then send it as a bearer token or sign in with it)"
        )
