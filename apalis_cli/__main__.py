"""`python -m apalis_cli ...`: the `apalis` command without the console script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
