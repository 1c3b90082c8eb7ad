"""The backend's SQL, read once from `sql/*.sql` by the loader every SQL store uses
(`apalis_sql.files`) and rendered per queue: `{q}` and `{a}` are the queue's pgmq tables, and
`{status}`, `{archived}`, `{notify_waiters}` and `{all_tasks}` the fragments of the files of those
names; `{key_index}` is the name of the queue table's index by limit key (`{old_key_indexes}`
those of earlier versions) and `{claim_fn}` that of the queue's limited claim function
(`limits.sql`)."""

from __future__ import annotations

import re
from functools import cache

from apalis_sql.files import Queries, load_queries, render

__all__ = [
    "SCHEMA",
    "check_queue_name",
    "claim_fn_of",
    "key_index_of",
    "old_key_indexes_of",
    "statement",
    "statements_for",
]

_NAME = re.compile(r"^[a-z0-9_]{1,47}$")
_FRAGMENTS = ("status", "archived", "notify_waiters")


@cache
def _queries() -> Queries:
    return load_queries("apalis_pgmq")


SCHEMA = _queries()["schema"]


def statement(name: str) -> str:
    """A statement that names no queue table."""
    return _queries()[name]


def check_queue_name(queue: str) -> str | None:
    """Why `queue` cannot be a pgmq queue name, or None when it can."""
    if _NAME.match(queue):
        return None
    return f'pgmq queue names are 1 to 47 characters of a-z, 0-9 and "_", got "{queue}"'


def key_index_of(queue: str) -> str:
    """The name of the index of `queue`'s claimable messages by the hash of their limit key (in
    schema pgmq, beside pgmq's own `q_<queue>_vt_idx`; 61 characters at most, under PostgreSQL's
    63)."""
    return f"q_{queue}_apalis_rkey"


def old_key_indexes_of(queue: str) -> tuple[str, ...]:
    """The names of the indexes by limit key that earlier versions gave `queue`, newest first: of
    every message by the key's hash, and by its text (dropped when this version makes its own:
    `limits.sql`'s `drop_old_key_index`)."""
    return f"q_{queue}_apalis_hkey", f"q_{queue}_apalis_key"


def claim_fn_of(queue: str) -> str:
    """The name of `queue`'s limited claim function (in schema apalis_pgmq; 60 characters at most).
    Earlier versions' were `limit_claim_<queue>` and `limit_claim2_<queue>`, walking their own
    indexes: they are left to them."""
    return f"limit_claim3_{queue}"


@cache
def statements_for(queue: str) -> dict[str, str]:
    """Every named statement with the queue's tables filled in (the name is checked first)."""
    if (why := check_queue_name(queue)) is not None:
        raise ValueError(why)
    queries = _queries()
    names = {
        "q": f'pgmq."q_{queue}"',
        "a": f'pgmq."a_{queue}"',
        "key_index": f'"{key_index_of(queue)}"',
        "old_key_indexes": ", ".join(f'pgmq."{name}"' for name in old_key_indexes_of(queue)),
        "claim_fn": f'apalis_pgmq."{claim_fn_of(queue)}"',
    }
    names.update({fragment: render(queries[fragment], names) for fragment in _FRAGMENTS})
    names["all_tasks"] = render(queries["all_tasks"], names)
    skip = {"schema", "all_tasks", *_FRAGMENTS}
    return {name: render(sql, names) for name, sql in queries.items() if name not in skip}
