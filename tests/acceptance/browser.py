"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven by selenium.

Nothing is downloaded: the driver and the browser are the system's, selenium's own manager is
kept offline, and each browser gets a fresh profile directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from ..services import need_binary

__all__ = ["CHROMIUM_FLAGS", "chromium", "eventually"]

T = TypeVar("T")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@contextmanager
def chromium(profile: Path, *, width: int = 1440, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile in `profile`, closed afterwards."""
    driver_path = need_binary("chromedriver")
    browser_path = need_binary("chromium")
    os.environ["SE_OFFLINE"] = "true"  # selenium's manager must never fetch a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def eventually(check: Callable[[], T], *, within: float = 30.0, what: str = "the page to change") -> T:
    """`check()` once it returns something truthy (it may raise meanwhile: the page is changing
    under it, swapped by the live refresh); a generous bound proves only that nothing hung."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (StaleElementReferenceException, WebDriverException, AssertionError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"waited {within:.0f}s for {what}" + (f": {last}" if last else ""))
