"""`apalis web`: open the config's stores, serve the board until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from ..config import Config, load_config
from .addresses import TOKEN_ENV, check_admin_address, parse_addr
from .app import create_app
from .board import Board
from .security import is_loopback
from .server import bind, serving

__all__ = ["run_board"]


def run_board(config_path: Path, addr: str, *, admin: bool) -> None:
    """Serve the board of `config_path` on `addr` until a signal."""
    host, port = parse_addr(addr, "--addr")
    token = os.environ.get(TOKEN_ENV) or None
    check_admin_address(host, admin, token, "--addr")
    config = load_config(config_path)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(_serve(config, host, port, admin=admin, token=token))


async def _serve(config: Config, host: str, port: int, *, admin: bool, token: str | None) -> None:
    sock = bind(host, port, option="--addr")
    board = Board(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await board.open()
        for view in board.queues:
            if view.error is not None:
                print(f"apalis web: backend {view.backend_name}: {view.error} (retrying)", file=sys.stderr)
        app = create_app(board, admin=admin, token=token, loopback=is_loopback(host))
        async with serving(app, sock):
            bound = sock.getsockname()
            shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
            mode = "admin" if admin else "read-only (--admin for actions)"
            print(f"apalis web: serving http://{shown}:{bound[1]}/ ({mode})", flush=True)
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await board.close()
