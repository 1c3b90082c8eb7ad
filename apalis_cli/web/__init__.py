"""The web board and its HTTP JSON API (`apalis web`, `apalis run --web`); the `web` extra.

- `board`: the queues of a config over their opened stores; `snapshots`: their figures,
  counted in the background.
- `ops`: what the board does (pages of tasks, actions), once for both faces; `control`: the
  control-plane verbs (cancel, pause).
- `api` (JSON) and `pages` (HTML, Jinja2 templates, htmx for live refresh), assembled by `app`;
  `security`: loopback, token, CSRF; `server`: uvicorn inside a running loop.
"""

from __future__ import annotations

__all__: list[str] = []
