"""Task ids: unique, and in the order they were made within one process (stores break ties of
priority and run_at by id, so tasks pushed together run first in, first out)."""

from __future__ import annotations

import os
import warnings

from apalis_cli.task import new_task_id


def test_ids_sort_in_the_order_they_were_made() -> None:
    ids = [new_task_id() for _ in range(50_000)]  # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {len(i) for i in ids} == {30}
    assert all(c in "0123456789abcdef" for c in "".join(ids[:100]))


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    before = new_task_id()
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12 warns when a test run has threads: this child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its ids, then exit at once
        os.write(write, "".join(new_task_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    child = {text[i : i + 30] for i in range(0, len(text), 30)}
    parent = {new_task_id() for _ in range(100)}
    assert len(child) == 100
    assert not child & parent
    assert {i[12:22] for i in child} != {before[12:22]}, "the child draws its own process bits"
