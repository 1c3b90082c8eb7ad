"""Who may look and who may act: loopback by default, a token off it, CSRF on every form.

- **Binding.** `apalis web` listens on 127.0.0.1 unless told otherwise. With `--admin` on any
  other address it refuses to start without `APALIS_WEB_TOKEN`: actions must not be open to a
  network.
- **Token.** When `APALIS_WEB_TOKEN` is set, every page and API call needs it (`/healthz`,
  `/metrics`, the login form and static files aside): an `Authorization: Bearer` header, or the
  session cookie the login form sets (an HMAC of the token: nothing to store, and it changes
  when the token does).
- **CSRF.** A browser sends cookies with a form posted from any site, so every form carries a
  token: an HMAC, under a secret made when the board starts, of a random value kept in a
  `SameSite=Strict` cookie. A JSON body needs none: a page on another site cannot post
  `application/json` here without a CORS preflight, which this board never grants.
- **DNS rebinding.** On a loopback address, a request whose Host is not a loopback name is
  refused, so a page on another site cannot reach the board through a name that resolves here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

__all__ = ["LOOPBACK_HOSTS", "Guard", "is_loopback"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
SESSION_COOKIE = "apalis_session"
CSRF_COOKIE = "apalis_csrf"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """The board's checks: the token (if any), its session cookie, and CSRF tokens."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None
        self._secret = secrets.token_bytes(32)

    @property
    def needs_login(self) -> bool:
        """True when a token protects the board."""
        return self.token is not None

    def session_value(self) -> str:
        """The session cookie's value for this token."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"apalis-web-session", hashlib.sha256).hexdigest()

    def token_matches(self, offered: str) -> bool:
        """True when `offered` is the token (compared in constant time)."""
        return self.token is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    def allowed(self, authorization: str | None, session: str | None) -> bool:
        """True when no token is set, or the request carries it (header) or its session cookie."""
        if self.token is None:
            return True
        if authorization:
            scheme, _, offered = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_matches(offered.strip()):
                return True
        return session is not None and hmac.compare_digest(session, self.session_value())

    @staticmethod
    def new_nonce() -> str:
        """A fresh value for the CSRF cookie."""
        return secrets.token_urlsafe(24)

    def csrf_token(self, nonce: str) -> str:
        """The form token that goes with the CSRF cookie `nonce`."""
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, nonce: str | None, offered: str | None) -> bool:
        """True when the form's token was made for the cookie the browser sent."""
        if not nonce or not offered:
            return False
        return hmac.compare_digest(self.csrf_token(nonce), offered)
