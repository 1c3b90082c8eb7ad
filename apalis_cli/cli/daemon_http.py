"""What `apalis run` serves over HTTP: `--metrics-addr` (/metrics and /healthz) and `--web` (the
board, with /metrics and /healthz beside it). Both need the web stack (Starlette, uvicorn), so
it is imported only when one is asked for."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import MissingExtra, UsageError
from ..events import EventListener
from ..worker import Worker
from .assembly import Assembly

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["HttpOptions", "parse_http_options", "serving_http"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOptions:
    """The daemon's HTTP options, addresses already parsed."""

    metrics_addr: tuple[str, int] | None = None
    web_addr: tuple[str, int] | None = None
    web_admin: bool = False

    def __bool__(self) -> bool:
        return self.metrics_addr is not None or self.web_addr is not None


def parse_http_options(metrics_addr: str | None, web: str | None, web_admin: bool) -> HttpOptions:
    """Check the options before anything starts (a bad address is exit 2, one line)."""
    from ..web.addresses import check_admin_address, parse_addr

    metrics = parse_addr(metrics_addr, "--metrics-addr") if metrics_addr else None
    board = parse_addr(web, "--web") if web else None
    if web_admin and board is None:
        raise UsageError("--web-admin: give the board's address with --web HOST:PORT")
    if board is not None:
        check_admin_address(board[0], web_admin, os.environ.get("APALIS_WEB_TOKEN"), "--web")
    return HttpOptions(metrics_addr=metrics, web_addr=board, web_admin=web_admin)


@contextlib.asynccontextmanager
async def serving_http(
    assembly: Assembly, workers: Callable[[], Sequence[Worker | None]], options: HttpOptions
) -> AsyncIterator[EventListener]:
    """Serve what `options` asks for for the block; yields the metrics' event listener."""
    needs = "--web" if options.web_addr is not None else "--metrics-addr"
    try:
        from ..metrics import Metrics
        from ..web.health import serving_metrics
    except ImportError as exc:
        extra = "web" if options.web_addr is not None else "metrics"
        raise MissingExtra(
            f"{needs} needs the extra: pip install 'apalis-cli[{extra}]' ({exc.name} is missing)"
        ) from None
    metrics = Metrics(workers, assembly.inspectors(), assembly.pools())
    async with contextlib.AsyncExitStack() as stack:
        if options.metrics_addr is not None:
            await stack.enter_async_context(serving_metrics(metrics, *options.metrics_addr, option="--metrics-addr"))
        if options.web_addr is not None:
            await stack.enter_async_context(_serving_board(assembly, metrics, options))
        yield metrics


@contextlib.asynccontextmanager
async def _serving_board(assembly: Assembly, metrics: Metrics, options: HttpOptions) -> AsyncIterator[None]:
    try:
        from ..web.app import create_app
        from ..web.board import Board
        from ..web.security import is_loopback
        from ..web.server import bind, serving
    except ImportError as exc:
        raise MissingExtra(f"--web needs the extra: pip install 'apalis-cli[web]' ({exc.name} is missing)") from None
    assert options.web_addr is not None
    host, port = options.web_addr
    sock = bind(host, port, option="--web")
    # The daemon's open stores are lent to the board; it opens those of queues no worker here runs.
    board = Board(assembly.config, {name: s for name, s in assembly.stores.items() if not name.startswith("cron:")})
    await board.open()
    try:
        app = create_app(
            board,
            admin=options.web_admin,
            token=os.environ.get("APALIS_WEB_TOKEN") or None,
            loopback=is_loopback(host),
            metrics=metrics,
        )
        async with serving(app, sock):
            yield
    finally:
        await board.close()
