"""A worker's id names its host and pid and ends with a random part, so two processes that share
a host name and a pid (containers started from one image, each its own pid 1) still register as
two workers: the same id would make each one's heartbeat keep the other's tasks alive."""

from __future__ import annotations

import subprocess
import sys

_ID_OF_A_NEW_WORKER = """
from apalis_cli.codec import JsonCodec
from apalis_cli.memory import MemoryStore
from apalis_cli.worker import Worker

async def noop(args, task):
    return None

queue = MemoryStore().backend("jobs", codec=JsonCodec())
print(Worker(name="w", backend=queue, handler=noop).context.id)
"""


def test_the_ids_of_workers_in_separate_processes_end_differently() -> None:
    ids = [
        subprocess.run([sys.executable, "-c", _ID_OF_A_NEW_WORKER], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    ]
    tails = {worker_id.strip().rsplit("-", 1)[1] for worker_id in ids}
    assert len(tails) == 3, f"the random part repeats across processes: {ids}"
