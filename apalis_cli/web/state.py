"""`WebState`: what every route of the board reads (`request.app.state.web`), set up by
`create_app` (app.py); the routes (api.py, pages.py) take it from here, not from the app that
imports them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from .board import Board
from .security import Guard
from .snapshots import Snapshots

if TYPE_CHECKING:
    from ..metrics import Metrics

__all__ = ["WebState", "web_state"]


@dataclass(slots=True, kw_only=True)
class WebState:
    """What the routes share: the board, its snapshots, the guard and the mode."""

    board: Board
    snapshots: Snapshots
    guard: Guard
    admin: bool
    loopback: bool
    metrics: Metrics | None = None
    started: float = field(default_factory=time.time)


def web_state(request: Request) -> WebState:
    """The shared state of the request's application."""
    state: WebState = request.app.state.web
    return state
