"""A demo handler for `config.example.toml`: pretends to resize images, failing now and then.

It exists so a newcomer's first `make run` shows tasks running, succeeding, failing and being
retried with backoff in the live view, without writing any code first.
"""

from __future__ import annotations

import random
import time
from typing import Any

__all__ = ["resize_image"]

_FAILURE_RATE = 0.2


def resize_image(args: dict[str, Any]) -> dict[str, Any]:
    """Sleep 0.1-0.6 s as if resizing `args["image"]` to `args["width"]`; fails about 1 run in 5."""
    time.sleep(random.uniform(0.1, 0.6))
    if random.random() < _FAILURE_RATE:
        raise ConnectionError("image store did not answer (demo failure: this run will be retried)")
    width = int(args.get("width", 256))
    return {"image": args.get("image", "unnamed.png"), "thumbnail": f"thumb-{width}px.png", "width": width}
