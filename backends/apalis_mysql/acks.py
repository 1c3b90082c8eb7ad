"""A batch of outcomes as the few statements that apply it.

Most batches are runs that all ended done under one worker with the same result (often none):
those are one `UPDATE ... WHERE id IN (...)`, which the server runs in about half the time of
the general statement that joins the tasks to a derived table of one row per outcome. Retries,
kills, releases and the rare mixed results still take the general statement. Every statement
applies only to tasks still running under the same worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apalis_sql import AckPlan

__all__ = ["ack_statements"]

_OUTCOME_FIRST = "SELECT %s AS id, %s AS lock_by, %s AS status, %s AS result, %s AS error, %s AS run_at"
_OUTCOME_MORE = " UNION ALL SELECT %s, %s, %s, %s, %s, %s"


def ack_statements(sql: Mapping[str, str], plan: AckPlan) -> list[tuple[str, list[Any]]]:
    """`(query, args)` per statement; together they apply every outcome of `plan`."""
    done: dict[tuple[str | None, Any], list[str]] = {}
    for result, _, task_id, lock_by in plan.done:
        done.setdefault((lock_by, result), []).append(task_id)
    statements: list[tuple[str, list[Any]]] = []
    for (lock_by, result), ids in done.items():
        query = sql["ack_done"].replace("{ids}", ", ".join(["%s"] * len(ids)))
        statements.append((query, [result, *ids, lock_by]))
    args: list[Any] = [value for row in plan.rows(done=False) for value in row]
    if args:
        outcomes = _OUTCOME_FIRST + _OUTCOME_MORE * (len(args) // 6 - 1)
        statements.append((sql["ack"].replace("{outcomes}", outcomes), args))
    return statements
