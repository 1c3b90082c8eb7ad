"""Dropping a NATS store's stream the way tests must: with the two key-value buckets the store
keeps beside it (`<stream>_CTL`, `<stream>_FIN`: see `apalis_nats.control`), which would
otherwise outlive every test run on the server."""

from __future__ import annotations

import contextlib
from typing import Any

from nats.js.errors import NotFoundError

__all__ = ["drop_stream"]


async def drop_stream(js: Any, stream: str) -> None:
    """Delete `stream` and its control buckets (any of them already gone is fine)."""
    for name in (stream, f"KV_{stream}_CTL", f"KV_{stream}_FIN"):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)
