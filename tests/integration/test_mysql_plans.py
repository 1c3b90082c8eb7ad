"""Guards on the plans MariaDB picks for statements whose correctness rests on their shape.

The claim's round trip (`claim_select`, then `claim_marked` in the same script) lists the ids it
locked in a user variable assigned in its select list: that is right only while the server
evaluates the select list once per row it sends, as it does when the rows stream from the join
(no sort or temporary table of the outer query: with either, the select list is evaluated for
every row before the sort and the LIMIT, and `claim_marked` would claim rows the client never
received). The hand-over's read (`handed`) must build no internal table: its earlier form, a JOIN
of JSON_TABLE sorted by its ordinality, crashed the shared MariaDB 10.11.19 once (signal 11 in
ha_maria::drop_table, in the join's cleanup). EXPLAIN FORMAT=JSON tells both; a server or a
statement that changes them fails here, before a claim goes wrong in production.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from apalis_cli.codec import JsonCodec
from apalis_mysql import MysqlStore

STREAMING_FORBIDDEN = (
    "filesort",
    "temporary_table",
    "read_sorted_file",
    "duplicate_removal",
    "window_functions_computation",
)
"""Plan nodes of a query block that evaluate its select list for rows before (or besides) the
ones it sends."""


async def _plan(store: MysqlStore, script: list[str], statement: str, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON plan of `statement` (bound to `params`) after the statements of `script`."""

    async def explain(conn: Any) -> dict[str, Any]:
        cursor = conn.cursor()
        for line in script:
            await cursor.execute(line)
        await cursor.execute("EXPLAIN FORMAT=JSON " + cursor.mogrify(statement, params))
        (plan,) = await cursor.fetchone()
        return dict(json.loads(_quoted(plan)))

    return await store.database.run(explain)


_STRING_LINE = re.compile(r'^(\s*"\w+": )"(.*)"(,?)$')


def _quoted(plan: str) -> str:
    """The plan with each one-line string value quoted again: MariaDB 10.11 writes a condition's
    literals into it unescaped (`json_value('["a"]', ...)`), which no JSON parser reads."""
    lines = []
    for line in plan.splitlines():
        match = _STRING_LINE.match(line)
        lines.append(f"{match[1]}{json.dumps(match[2])}{match[3]}" if match else line)
    return "\n".join(lines)


def _outer(node: Any) -> Iterator[tuple[str, Any]]:
    """Every key and value of a query block, not descending into materialized derived tables
    or subqueries (their select lists are not the one that counts)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("materialized", "subqueries"):
                continue
            yield key, value
            yield from _outer(value)
    elif isinstance(node, list):
        for item in node:
            yield from _outer(item)


def _tables(block: dict[str, Any]) -> list[dict[str, Any]]:
    loop = block.get("nested_loop") or [{"table": block["table"]}]
    return [step["table"] for step in loop]


async def test_a_claims_rows_stream_from_its_join_so_its_list_of_ids_is_the_rows_sent(
    mysql_store: MysqlStore,
) -> None:
    q = mysql_store.backend("q", codec=JsonCodec())
    await q.push_bulk(list(range(30)))
    sql = mysql_store.database.sql
    params = {"queue": "q", "limit": 4, "candidates": 12}
    plan = await _plan(mysql_store, [sql["claim_start"]], sql["claim_select"], params)
    block = plan["query_block"]
    found = sorted({key for key, _ in _outer(block)} & set(STREAMING_FORBIDDEN))
    assert not found, f"the claim's outer query sorts or buffers its rows: {found}\n{json.dumps(plan, indent=1)}"
    first, *joined = _tables(block)
    assert first["table_name"] == "<derived2>", plan  # the candidates, read in their order
    assert [(t["table_name"], t["access_type"], t["key"]) for t in joined] == [("t", "eq_ref", "PRIMARY")], plan

    async def claim_and_list(conn: Any) -> tuple[list[str], str]:
        cursor = conn.cursor()
        await cursor.execute("START TRANSACTION")
        try:
            await cursor.execute(sql["claim_start"])
            await cursor.execute(sql["claim_select"], params)
            sent = [row[0] for row in await cursor.fetchall()]
            await cursor.execute("SELECT @apalis_ids")
            (listed,) = await cursor.fetchone()
            return sent, listed
        finally:
            await cursor.execute("ROLLBACK")

    sent, listed = await mysql_store.database.run(claim_and_list)
    assert len(sent) == 4
    assert listed == ",".join(["''", *(f"'{task_id}'" for task_id in sent)]), "listed ids the claim did not send"


async def test_a_workers_read_of_its_hands_builds_no_internal_table(mysql_store: MysqlStore) -> None:
    q = mysql_store.backend("q", codec=JsonCodec())
    ids = await q.push_bulk([0, 1, 2])
    prefix, sql = mysql_store.config.table_prefix, mysql_store.database.sql

    async def hand(conn: Any) -> None:  # as three pushes would have handed them to w1
        cursor = conn.cursor()
        await cursor.execute(f"UPDATE {prefix}tasks SET status = 'running', lock_by = 'w1' WHERE queue = 'q'")
        await cursor.execute(
            f"INSERT INTO {prefix}idle (worker_id, queue, listener, until, free, handed)"
            " VALUES ('w1', 'q', 0, UNIX_TIMESTAMP() + 5, 2, %s)",
            (json.dumps([ids[2], ids[0], ids[1]]),),
        )

    await mysql_store.database.run(hand)
    read = sql["handed"].split(";")[-1]  # the read after the listing's locking read
    plan = await _plan(mysql_store, [], read, {"worker": "w1", "listener": 0, "seen": "[]"})
    text = json.dumps(plan)
    assert "json_table" not in text.lower(), plan
    block = plan["query_block"]
    found = sorted({key for key, _ in _outer(block)} & set(STREAMING_FORBIDDEN))
    assert not found, f"the read of the hands builds an internal table: {found}\n{json.dumps(plan, indent=1)}"
    # Each handed task by its primary key (a join buffer over a scan of the tasks needs a sort
    # to give the hands' order back: the earlier form's plan on a small table).
    assert [(t["table_name"], t["access_type"]) for t in _tables(block)] == [
        ("i", "const"),
        ("h", "range"),
        ("t", "eq_ref"),
    ], plan
    # And it reads them, each with its place in the order they were handed (the client sorts).
    rows = await mysql_store.database.fetch("handed", {"worker": "w1", "listener": 0, "seen": json.dumps([ids[1]])})
    assert sorted((row[-1], row[0]) for row in rows) == [(0, ids[2]), (1, ids[0])]
