"""Keeping secrets out of everything apalis-cli shows: error lines, `check`, logs, the live view,
`/healthz`, stored task errors and the worker registry.

Two ways in, used together:

- **Patterns**, for any text: a URL's password (`postgresql://app:***@db/app`), also when it holds
  an unencoded `@`, `:`, `/`, `?` or `#`; a bare userinfo token (`nats://***@host`); query and
  fragment parameters named like a secret (`?password=`, `sslpassword`, `token`, `secret`,
  `key`, ...); `password=...` pairs of a libpq key=value string, quoted values included; in
  comma-separated lists of URLs or hosts and around IPv6 hosts.
- **Known secrets**: `secrets_in(url)` lists the secret values a configured URL carries and the
  pieces of them a driver may echo when it splits an unencoded `@` where we did not (libpq says
  "failed to resolve host 'x@127.0.0.1'" of `postgresql://u:S3cret@x@127.0.0.1`);
  `redact(text, secrets)` masks those wherever they stand as a word of their own.

Masking errs on the side of hiding: an `@` inside a URL's query may hide part of the URL too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote

__all__ = ["MASK", "redact", "redact_url", "secrets_in"]

MASK = "***"

# A URL starts at its scheme; one in a comma list ends where the next scheme begins.
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_END = re.compile(r"\s|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# A configured URL is read whole: a password with an unencoded space is still a password.
_LIST_END = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
# Schemes whose userinfo without a colon is itself a credential (`nats://TOKEN@host`).
_TOKEN_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})

_SECRET_WORD = r"pass|pwd|token|secret|key|auth|credential|signature"
# `?password=...`, `&sslpassword=...`, `#token=...`: the value up to the next parameter (in
# prose, a full stop or a parenthesis after the URL is not part of it).
_PARAMETER = re.compile(rf"(?i)(?<=[?&;#])[\w.-]*(?:{_SECRET_WORD})[\w.-]*=([^&#;\s'\"]*?)(?=[.,:)]*(?:[&#;\s'\"]|$))")
# `password=S3cret`, `password = 'it\'s'` (libpq key=value), and `"password": "..."` (a repr).
_VALUE = r"""'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?"""
_PAIR = re.compile(
    rf"""(?ix)(?<![\w.-])(?:ssl)?(?:password|passwd|passphrase|pwd|secret|token|api_?key)\s*=\s*
    ({_VALUE}|[^\s'",;&]+?(?=[.:)]*(?:[\s'",;&]|$)))"""
)
_QUOTED_KEY = re.compile(
    rf"""(?ix)(['"])[\w.-]*(?:password|passwd|passphrase|secret|token|api_?key)[\w.-]*\1\s*:\s*
    ({_VALUE}|[^\s,}}\]]+)"""
)
# A driver that splits an unencoded character elsewhere than we did echoes these pieces.
_SPLIT = re.compile(r"[@:/?#,]")
_SHORT = 4


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret it seems to carry, and each of `secrets`, replaced by `***`."""
    merged: list[list[int]] = []
    for start, end in sorted((*_pattern_spans(text), *_known_spans(text, secrets))):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)  # overlapping or adjacent: one mask
        elif start < end:
            merged.append([start, end])
    shown: list[str] = []
    done = 0
    for start, end in merged:
        shown += [text[done:start], MASK]
        done = end
    shown.append(text[done:])
    return "".join(shown)


def redact_url(url: str) -> str:
    """A configured URL (or libpq key=value string) as it may be shown: its secrets masked."""
    return redact(url, secrets_in(url))


def secrets_in(url: str) -> frozenset[str]:
    """The secret values `url` carries, decoded and raw, with the pieces a driver may echo."""
    found: set[str] = set()
    for start, end in _pattern_spans(url, whole=True):
        value = _unquoted(url[start:end])
        for form in (value, unquote(value)):
            found.add(form)
            found.update(_SPLIT.split(form))
    found.discard("")
    found.discard(MASK)
    return frozenset(found)


def _pattern_spans(text: str, *, whole: bool = False) -> Iterator[tuple[int, int]]:
    yield from _userinfo_spans(text, _LIST_END if whole else _URL_END)
    for pattern in (_PARAMETER, _PAIR):
        for match in pattern.finditer(text):
            yield match.span(1)
    for match in _QUOTED_KEY.finditer(text):
        yield match.span(2)


def _userinfo_spans(text: str, url_end: re.Pattern[str]) -> Iterator[tuple[int, int]]:
    """The password (or token) of each URL in `text`: after the userinfo's first `:`, up to the
    URL's last `@` (as urllib and redis-py read it; libpq takes the first `@`, and the pieces
    in between are what `secrets_in` adds for that)."""
    for match in _SCHEME.finditer(text):
        start = match.end()
        if text.startswith("/", start):
            continue  # `sqlite:///path`, `unix:///path`: no authority, no userinfo
        end_match = url_end.search(text, start)
        end = end_match.start() if end_match else len(text)
        at = text.rfind("@", start, end)
        if at < 0:
            continue
        colon = text.find(":", start, at)
        if colon >= 0:
            yield colon + 1, at
        elif match.group(1).lower() in _TOKEN_SCHEMES:
            yield start, at


def _known_spans(text: str, secrets: Iterable[str]) -> Iterator[tuple[int, int]]:
    """Where each known secret stands in `text` as a word of its own, not inside a longer word.
    One shorter than `_SHORT` counts only before an `@`: the "x" of "S3cret@x" hides the host a
    driver echoed ('x@127.0.0.1'), not every "x" of the text."""
    for secret in secrets:
        if not secret or secret == MASK:
            continue
        start = text.find(secret)
        while start >= 0:
            end = start + len(secret)
            before = text[start - 1 : start]
            after = text[end : end + 1]
            inside_word = (_is_word(before) and _is_word(secret[0])) or (_is_word(after) and _is_word(secret[-1]))
            if not inside_word and (len(secret) >= _SHORT or after == "@"):
                yield start, end
            start = text.find(secret, start + 1)


def _is_word(char: str) -> bool:
    return char.isascii() and char.isalnum()


def _unquoted(value: str) -> str:
    """A libpq or repr value without its quotes and backslash escapes (`'it\\'s'` is `it's`)."""
    if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value
