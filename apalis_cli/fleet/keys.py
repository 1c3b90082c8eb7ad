"""The key a task is limited under, taken from its arguments when it is pushed, and a sink that
takes it for every push (`open_sink` wraps a worker's queue in one when its limits are keyed)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..backend import NewTask, TaskSink
from ..bounds import KEY_LENGTH
from ..codec import Codec
from ..errors import DecodeError
from ..task import TaskId

__all__ = ["KeyedSink", "key_of"]


def key_of(args: Any, path: str) -> str:
    """The value at `path` ("account_id", or "customer.id" into nested objects) in `args`, as
    text; "" when it is missing (such tasks share one key of their own)."""
    value = args
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    return text[:KEY_LENGTH]


class KeyedSink:
    """`sink` with each task's limit key taken from its arguments at `path`."""

    def __init__(self, sink: TaskSink, path: str, codec: Codec) -> None:
        self._sink = sink
        self._path = path
        self._codec = codec

    def __getattr__(self, name: str) -> Any:  # the store's other faces (capabilities, inspect)
        return getattr(self._sink, name)

    async def push(self, args: Any, **options: Any) -> TaskId:
        """Encode `args` and enqueue it under its key."""
        options.setdefault("limit_key", key_of(args, self._path))
        return await self._sink.push(args, **options)

    async def push_compact(self, compact: bytes, **options: Any) -> TaskId:
        """Enqueue encoded bytes under the key their decoded arguments name."""
        if "limit_key" not in options:
            try:
                options["limit_key"] = key_of(self._codec.decode(compact), self._path)
            except DecodeError:
                options["limit_key"] = ""
        return await self._sink.push_compact(compact, **options)

    async def push_bulk(self, items: Iterable[Any], **options: Any) -> list[TaskId]:
        """Enqueue many values, each under its own key, in one `enqueue` call."""
        from ..sink import new_task

        default = getattr(self._sink, "max_attempts", 1)
        if options.get("task_id") is not None or options.get("idempotency_key") is not None:
            return await self._sink.push_bulk(items, **options)  # the sink says why not
        encode = self._codec.encode
        tasks = [
            new_task(encode(item), default_max_attempts=default, limit_key=key_of(item, self._path), **options)
            for item in items
        ]
        return await self._sink.enqueue(tasks) if tasks else []

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[TaskId]:
        """The store's insert, as it is."""
        return await self._sink.enqueue(tasks)
