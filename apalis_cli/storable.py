"""What a store keeps of a run's result: JSON text that every store takes.

Stores write many runs' outcomes in one statement, so text one store refuses would fail the
acknowledgement of every run written with it. Some text no store takes whole: a lone surrogate
(a file name that is not UTF-8, as `os.fsdecode` gives it) has no UTF-8 form, PostgreSQL refuses
a NUL character, and MySQL a statement past `max_allowed_packet`, RabbitMQ a header past its frame
size. Here, once, in the core: a result is JSON that every store takes, or the run fails with
`UnstorableResult`. A run's error is made storable the same way by `apalis_cli.errors`
(`describe_error`, `storable_text`).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from .errors import UnstorableResult, describe_error

__all__ = ["MAX_RESULT_BYTES", "check_result", "decode_result", "encode_result"]

MAX_RESULT_BYTES = 1 << 20
"""The largest result a task keeps (its JSON text, in UTF-8): well inside what one statement of
every store carries, many results of a batch included."""


# allow_nan=False: NaN/Infinity are not JSON (PostgreSQL jsonb rejects them); such a result is
# kept as its repr, like any other value JSON cannot hold.
_RESULT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr, allow_nan=False)
# A result with a lone surrogate: \u escapes keep it exactly, and every store takes ASCII.
_RESULT_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=repr, allow_nan=False)


def encode_result(value: Any) -> str | None:
    """A handler's return value as the JSON text stores keep (None for None); what JSON cannot
    hold is kept as its repr. Raises `UnstorableResult` when no JSON can be made of it."""
    if value is None:
        return None
    try:
        text = _encode(_RESULT, value)
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                text = _encode(_RESULT_ASCII, value)
    except Exception as exc:  # a repr that raises, a structure nested too deep to encode
        raise UnstorableResult(f"result cannot be stored: {describe_error(exc)}") from None
    return text


def decode_result(stored: Any) -> Any:
    """The value behind a result as a store keeps it (the JSON text of `encode_result`), for
    showing it; text that is not JSON is shown as it is."""
    if isinstance(stored, str):
        try:
            return json.loads(stored)
        except ValueError:
            return stored
    return stored


def _encode(encoder: json.JSONEncoder, value: Any) -> str:
    try:
        return encoder.encode(value)
    except (ValueError, TypeError):  # NaN, a circular structure, a dict with tuple keys
        return encoder.encode(repr(value))


def check_result(value: Any) -> None:
    """Raise `UnstorableResult` unless every store can keep `value` as a task's result.

    A coroutine or generator is refused (and closed): it means the handler's work never ran.
    """
    if inspect.iscoroutine(value) or inspect.isgenerator(value):
        value.close()
        kind = "coroutine (a missing await?)" if inspect.iscoroutine(value) else "generator"
        raise UnstorableResult(f"result cannot be stored: the handler returned a {kind}, whose code never ran")
    if inspect.isasyncgen(value):
        raise UnstorableResult("result cannot be stored: the handler returned an async generator, whose code never ran")
    text = encode_result(value)
    # A character is 1 to 4 bytes: most results are measured without encoding them.
    if text is not None and len(text) > MAX_RESULT_BYTES // 4:
        size = len(text.encode())
        if size > MAX_RESULT_BYTES:
            raise UnstorableResult(
                f"result cannot be stored: {size:,} bytes of JSON, more than the {MAX_RESULT_BYTES:,} a task"
                " keeps (store large data elsewhere and return where it is)"
            )
