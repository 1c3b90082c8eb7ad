"""The whole suite's setting: asyncio's event loop unless APALIS_LOOP says otherwise.

`make venv` installs uvloop (the `dev` extra) so that its tests run (they set APALIS_LOOP
themselves); installed, it would otherwise become the loop of every `apalis` the suite starts and
of every `SyncSink`, where a user of `apalis-cli[all]` runs asyncio's. `APALIS_LOOP=uvloop make
test` runs the suite on uvloop.
"""

from __future__ import annotations

import os

os.environ.setdefault("APALIS_LOOP", "asyncio")
