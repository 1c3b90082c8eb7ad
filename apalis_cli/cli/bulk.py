"""Bulk actions by filter: `apalis retry|cancel|kill|purge` given a filter instead of a task id.

The filter's options are the same on the four commands (`FilterOptions`). A run counts first
(the store's dry run, per queue), prints what it would change, asks before changing anything
unless `--yes` (and refuses to ask where nobody can answer: stdin not a terminal), then acts and
prints what it changed. Without `--queue`/`--worker` it acts on every queue of the config, as
`stats` counts them; `--limit` caps the total. `cancel` and `kill` take `--reason`, kept on each
task they end as for one task by id.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..bounds import COUNT, check_time
from ..durations import parse_duration
from ..errors import Unsupported, UsageError
from ..task import Status
from .app import checked, text

if TYPE_CHECKING:
    from ..api import QueueTarget
    from ..config import Config
    from ..control import BulkAction, BulkActor, BulkFilter
    from .common import Opened

__all__ = [
    "DryRunOption",
    "ErrorContainsOption",
    "FilterOptions",
    "LimitOption",
    "SinceOption",
    "StatusesOption",
    "UntilOption",
    "YesOption",
    "parse_moment",
    "run_bulk",
]

StatusesOption = Annotated[
    list[Status] | None,
    typer.Option("--status", "-s", help="Only tasks in this status (repeat for several)."),
]
SinceOption = Annotated[
    str | None,
    typer.Option(help='Only tasks that last changed at or after this: an ISO 8601 time, or "2h" (ago).'),
]
UntilOption = Annotated[
    str | None,
    typer.Option(help='Only tasks that last changed at or before this: an ISO 8601 time, or "2h" (ago).'),
]
ErrorContainsOption = Annotated[
    str | None, typer.Option(callback=text, help="Only tasks whose last error contains this text (any case).")
]
LimitOption = Annotated[int | None, typer.Option(help="Act on at most this many tasks.")]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Count what would change; change nothing.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

# The control plane's module (and asyncio with it) is imported when a command runs: `apalis
# --help` and the other commands do without.
_DONE = {"retry": "retried", "cancel": "cancelled", "kill": "killed", "purge": "purged"}


@dataclass(frozen=True, slots=True)
class FilterOptions:
    """The filter as given on the command line (text, checked by `to_filter`)."""

    statuses: Sequence[Status] | None = None
    since: str | None = None
    until: str | None = None
    error_contains: str | None = None
    limit: int | None = None
    dry_run: bool = False
    yes: bool = False

    @property
    def given(self) -> bool:
        """True when any option of a bulk request was given."""
        return bool(self.statuses) or any(
            value is not None for value in (self.since, self.until, self.error_contains, self.limit)
        )

    def to_filter(self, action: BulkAction) -> BulkFilter:
        """The checked `BulkFilter`; a usage error names a bad option."""
        from ..control import BulkFilter, statuses_text

        statuses = frozenset(self.statuses or ())
        cannot = statuses - action.applies_to
        if cannot:
            raise UsageError(
                f"--status: {action.value} cannot change {statuses_text(cannot)} tasks "
                f"(it takes {statuses_text(action.applies_to)})"
            )
        since = None if self.since is None else parse_moment("--since", self.since)
        until = None if self.until is None else parse_moment("--until", self.until)
        if since is not None and until is not None and since > until:
            raise UsageError("--since must come before --until")
        if self.error_contains is not None and not self.error_contains:
            raise UsageError("--error-contains must not be empty")
        limit = None if self.limit is None else checked("--limit", self.limit, COUNT.check)
        return BulkFilter(statuses=statuses, since=since, until=until, error_contains=self.error_contains, limit=limit)


def parse_moment(option: str, value: str) -> float:
    """Epoch seconds of an ISO 8601 time (UTC without an offset) or of a duration ago ("2h")."""
    raw = value.strip()
    try:
        return time.time() - parse_duration(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f'{option}: expected an ISO 8601 time such as "2030-01-31T09:30:00Z" or a duration ago such as "2h", '
            f'got "{value}"'
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return check_time(moment.timestamp())
    except (ValueError, OverflowError):
        raise UsageError(f'{option}: "{value}" must fall in the years 1 to 9999 once in UTC') from None


def run_bulk(
    verb: str,
    options: FilterOptions,
    config_path: Path,
    worker: str | None,
    queue: str | None,
    reason: str | None = None,
) -> None:
    """Count, confirm and act: the whole of a bulk command (`verb`: retry, cancel, kill, purge;
    `reason`, for cancel and kill, is kept on each task they end instead of the default one)."""
    from ..control import BulkAction, statuses_text

    action = BulkAction(verb)
    where = options.to_filter(action)
    done = _DONE[verb]
    if not options.dry_run and not options.yes and not sys.stdin.isatty():
        # A script or a pipe cannot answer the question; acting without it would be a surprise.
        raise UsageError(f"{verb} by filter asks for confirmation: add --yes (or --dry-run to count)")
    import asyncio

    from ..config import load_config

    config = load_config(config_path)
    targets = _targets(config, worker, queue)
    counts = asyncio.run(_each(config, targets, action, where, dry_run=True, reason=reason))
    total = sum(n for _, n in counts)
    if options.dry_run:
        for described, n in counts:
            print(f"would {verb} {_tasks(n)} in {described}")
        return
    if total == 0:
        print(f"no task to {verb}: nothing matches ({statuses_text(where.statuses_for(action))})")
        return
    if not options.yes and not _confirm(verb, total, counts, where, action):
        print("apalis: nothing changed", file=sys.stderr)
        raise typer.Exit(1)
    changed = asyncio.run(_each(config, targets, action, where, dry_run=False, reason=reason))
    for described, n in changed:
        print(f"{done} {_tasks(n)} in {described}")


def _tasks(n: int) -> str:
    return f"{n} task{'' if n == 1 else 's'}"


def _confirm(verb: str, total: int, counts: list[tuple[str, int]], where: BulkFilter, action: BulkAction) -> bool:
    from ..control import statuses_text

    where_text = "; ".join(f"{n} in {described}" for described, n in counts if n)
    question = f"{verb} {_tasks(total)} ({statuses_text(where.statuses_for(action))}): {where_text}? [y/N] "
    from ..printable import printable

    sys.stderr.write(printable(question))
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _targets(config: Config, worker: str | None, queue: str | None) -> list[QueueTarget]:
    from ..api import resolve_target
    from .common import all_targets

    if worker is not None or queue is not None:
        return [resolve_target(config, worker, queue)]
    return all_targets(config)


async def _each(
    config: Config,
    targets: Sequence[QueueTarget],
    action: BulkAction,
    where: BulkFilter,
    *,
    dry_run: bool,
    reason: str | None,
) -> list[tuple[str, int]]:
    """The action (or its dry run) on each target, `where.limit` shared among them."""
    from dataclasses import replace

    from .common import open_resolved

    left = where.limit
    results = []
    for target in targets:
        async with open_resolved(config, target) as opened:
            actor = _actor(opened, action)
            if left == 0:
                results.append((opened.describe(), 0))
                continue
            n = await actor.bulk(action, replace(where, limit=left), dry_run=dry_run, reason=reason)
            if left is not None:
                left = max(left - n, 0)
            results.append((opened.describe(), n))
    return results


def _actor(opened: Opened, action: BulkAction) -> BulkActor:
    from ..backend import Capability
    from ..control import BulkActor
    from .common import require

    backend: Any = opened.backend
    doing = f"{action.value} tasks by filter"
    require(opened, Capability.BULK, doing)
    if not isinstance(backend, BulkActor):
        raise Unsupported(f"{opened.describe()} cannot {doing}: the store has no bulk actions")
    return backend
