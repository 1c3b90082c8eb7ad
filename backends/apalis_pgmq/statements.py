"""The backend's SQL, read once from `sql/*.sql` and rendered per queue."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

__all__ = ["SCHEMA", "check_queue_name", "statement", "statements_for"]

_DIR = Path(__file__).parent / "sql"
_NAME = re.compile(r"^[a-z0-9_]{1,47}$")
SCHEMA = (_DIR / "schema.sql").read_text()


def _named(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for chunk in text.split("-- name: ")[1:]:
        name, _, body = chunk.partition("\n")
        found[name.strip()] = body.strip()
    return found


_QUERIES = _named((_DIR / "queries.sql").read_text())


def _expression(name: str) -> str:
    return "\n".join(line for line in (_DIR / name).read_text().splitlines() if not line.startswith("--")).strip()


_STATUS = _expression("status.sql")
_ARCHIVED = _expression("archived.sql")
_NOTIFY_WAITERS = _expression("notify_waiters.sql")
_TASKS = _expression("tasks.sql")


def statement(name: str) -> str:
    """A statement that names no queue table."""
    return _QUERIES[name]


def check_queue_name(queue: str) -> str | None:
    """Why `queue` cannot be a pgmq queue name, or None when it can."""
    if _NAME.match(queue):
        return None
    return f'pgmq queue names are 1 to 47 characters of a-z, 0-9 and "_", got "{queue}"'


@cache
def statements_for(queue: str) -> dict[str, str]:
    """Every named statement with the queue's tables filled in (the name is checked first)."""
    if (why := check_queue_name(queue)) is not None:
        raise ValueError(why)
    tables = {
        "q": f'pgmq."q_{queue}"',
        "a": f'pgmq."a_{queue}"',
        "status": _STATUS,
        "archived": _ARCHIVED,
        "notify_waiters": _NOTIFY_WAITERS,
    }
    tables["tasks"] = _TASKS.format(**tables)
    return {name: body.format(**tables) for name, body in _QUERIES.items()}
