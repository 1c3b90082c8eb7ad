"""The board in a real headless Chromium, served by a real daemon (`apalis run --web`).

The story the board exists for: a person finds a failed task, reads its error and payload,
retries it once the cause is fixed, and watches it succeed, without touching the CLI. The page
is never reloaded by the test: what changes, the live refresh brings.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .browser import chromium, eventually
from .conftest import Apalis

pytestmark = pytest.mark.slow

HANDLERS = """
from pathlib import Path

def resize(args):
    if args["image"] == "broken.png" and not Path("fixed").exists():
        raise ValueError("image store refused <b>broken.png</b>: 507 Insufficient Storage")
    return {"thumbnail": "thumb-" + args["image"]}
"""

CONFIG = """\
[backends.main]
kind = "sqlite"
url = "sqlite:///jobs.db"

[[workers]]
name = "images"
handler = "board_handlers:resize"
concurrency = 2
max_attempts = 1
keep_alive = "1s"
poll_interval = "100ms"

[[workers]]
name = "nightly"
backend = "cron"
schedule = "0 0 3 * * *"
pipe_to = "main"
queue = "reports"
handler = "board_handlers:resize"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def daemon(apalis: Apalis) -> Iterator[str]:
    """`apalis run --web --web-admin` on a free port; its board's URL once it answers."""
    (apalis.cwd / "board_handlers.py").write_text(HANDLERS)
    apalis.write_config(CONFIG)
    port = free_port()
    process = apalis.start("run", "--no-live", "--web", f"127.0.0.1:{port}", "--web-admin")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:
                return bool(json.loads(reply.read())["healthy"])
        except OSError:  # not listening yet, or 503 while the workers start
            return False

    try:
        eventually(up, what="the daemon's board to answer")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def shoot(driver: WebDriver, name: str) -> None:
    """Save a screenshot for the README when APALIS_SCREENSHOTS names a folder."""
    folder = os.environ.get("APALIS_SCREENSHOTS")
    if folder:
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_find_a_failed_task_read_it_retry_it_and_watch_it_succeed(apalis: Apalis, daemon: str, tmp_path: Path) -> None:
    for image in ("cat.png", "broken.png", "dog.png"):
        assert apalis("push", "--worker", "images", json.dumps({"image": image, "width": 128})).code == 0
    eventually(lambda: apalis.statuses("--worker", "images") == {"done": 2, "killed": 1}, what="the runs")

    with chromium(tmp_path / "profile") as driver:
        driver.get(daemon + "/")
        # The overview: the queue, its counts, and a way to the failure.
        row = eventually(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-queue="images"]'))
        eventually(lambda: text_of(driver, 'tr[data-queue="images"] td[data-count="killed"]') == "1")
        assert text_of(driver, 'tr[data-queue="images"] td[data-count="done"]') == "2"
        shoot(driver, "board-overview")
        row.find_element(By.CSS_SELECTOR, 'td[data-count="killed"] a').click()

        # The queue, filtered to what failed: one task, its error in the row.
        eventually(lambda: "status=killed" in driver.current_url, what="the queue page")
        rows = driver.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
        assert len(rows) == 1
        assert "507 Insufficient Storage" in rows[0].text
        rows[0].find_element(By.CSS_SELECTOR, "td a").click()

        # The task: its error (markup shown as text) and its payload, decoded.
        eventually(lambda: driver.find_elements(By.ID, "last-error"), what="the task page")
        assert text_of(driver, "#last-error").startswith(
            "ValueError: image store refused <b>broken.png</b>: 507 Insufficient Storage"
        )
        assert json.loads(text_of(driver, "#payload")) == {"image": "broken.png", "width": 128}
        assert "killed" in text_of(driver, "#task-status")
        shoot(driver, "board-task")

        # The cause is fixed; retry from the page, and watch the same page show it done.
        (apalis.cwd / "fixed").write_text("yes")
        driver.find_element(By.CSS_SELECTOR, 'button[data-action="retry"]').click()
        flash = eventually(lambda: driver.find_element(By.ID, "flash").text, what="the retry's outcome")
        assert "will run again" in flash
        page = driver.find_element(By.TAG_NAME, "html")
        eventually(lambda: "done" in text_of(driver, "#task-status"), what="the task to run again and succeed")
        assert json.loads(text_of(driver, "#result")) == {"thumbnail": "thumb-broken.png"}
        shoot(driver, "board-task-retried")
        assert driver.find_element(By.TAG_NAME, "html") == page  # no reload: the live refresh did it
        assert not driver.find_elements(By.ID, "last-error") or "507" in text_of(driver, "#last-error")
    assert apalis.statuses("--worker", "images") == {"done": 3}


def test_every_page_loads_with_what_it_shows(apalis: Apalis, daemon: str, tmp_path: Path) -> None:
    pushed = apalis("push", "--worker", "images", "--delay", "1h", json.dumps({"image": "later.png"}))
    task_id = pushed.out.strip()
    with chromium(tmp_path / "profile") as driver:
        driver.get(daemon + "/workers")
        worker = eventually(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-worker="images"]'))
        assert socket.gethostname() in worker.text
        cron = driver.find_element(By.CSS_SELECTOR, 'tr[data-cron="nightly"]')
        assert "0 0 3 * * *" in cron.text
        assert cron.text.count("T03:00:00.000Z") == 3  # its next three ticks

        driver.get(daemon + "/queues/images?status=pending")
        eventually(lambda: task_id in driver.find_element(By.CSS_SELECTOR, "table.tasks").text)
        assert "in 59m" in driver.find_element(By.CSS_SELECTOR, f'tr[data-task="{task_id}"]').text
        shoot(driver, "board-queue")

        # Push from the JSON editor: refused until the text is JSON.
        editor = driver.find_element(By.CSS_SELECTOR, "#push-form textarea")
        button = driver.find_element(By.CSS_SELECTOR, "#push-form button[type=submit]")
        editor.send_keys('{"image": "typed.png"')
        eventually(lambda: "Not JSON" in text_of(driver, "#push-form .json-state"))
        assert not button.is_enabled()
        editor.send_keys("}")
        eventually(lambda: button.is_enabled(), what="the editor to accept the JSON")
        button.click()
        flash = eventually(lambda: driver.find_element(By.ID, "flash").text, what="the push's outcome")
        assert flash.startswith("Pushed task ")
        eventually(lambda: "typed.png" in apalis("inspect", "--worker", "images", "--json").out, what="the push")

        driver.get(daemon + "/")
        eventually(lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-queue="reports"]'))


CONTROL_HANDLERS = """
import asyncio

async def render(args):
    await asyncio.sleep(args.get("sleep", 0))
    return {"rendered": args["page"]}
"""

CONTROL_WORKER = """
[[workers]]
name = "pages"
backend = "main"
handler = "control_handlers:render"
concurrency = 2
keep_alive = "500ms"
poll_interval = "100ms"
"""

CONTROL_TABLES = {
    # The daemon lends its memory store to its board: one process, which is all this story needs.
    "memory": '[backends.main]\nkind = "memory"\n',
    "sqlite": '[backends.main]\nkind = "sqlite"\nurl = "sqlite:///jobs.db"\n',
}


@pytest.fixture(params=sorted(CONTROL_TABLES))
def control_daemon(request: pytest.FixtureRequest, apalis: Apalis) -> Iterator[str]:
    """`apalis run --web --web-admin` over a store that can cancel and pause (else skipped)."""
    from apalis_cli.backend import Capability
    from apalis_cli.registry import Registry

    kind = request.param
    capabilities = Registry().store_class(kind).capabilities
    for capability in (Capability.CANCEL, Capability.PAUSE):
        why = capabilities.why_not(capability)
        if why is not None:
            pytest.skip(f"{kind} lacks {capability.value}: {why}")
    (apalis.cwd / "control_handlers.py").write_text(CONTROL_HANDLERS)
    apalis.write_config(CONTROL_TABLES[kind] + CONTROL_WORKER)
    yield from _serve(apalis)


def _serve(apalis: Apalis) -> Iterator[str]:
    port = free_port()
    process = apalis.start("run", "--no-live", "--web", f"127.0.0.1:{port}", "--web-admin")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as reply:
                return bool(json.loads(reply.read())["healthy"])
        except OSError:
            return False

    try:
        eventually(up, what="the daemon's board to answer")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def api(url: str, method: str = "GET", body: object = None) -> object:
    """The board's JSON API (a JSON POST needs no CSRF token)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def task_status(board: str, task_id: str) -> str:
    answer = api(f"{board}/api/tasks/{task_id}?queue=pages")
    assert isinstance(answer, dict)
    return str(answer["status"])


def test_pause_a_queue_and_cancel_a_running_task_from_the_board(control_daemon: str, tmp_path: Path) -> None:
    board = control_daemon
    with chromium(tmp_path / "profile") as driver:
        # Pause the queue from the overview: its row says so, and the daemon starts nothing.
        driver.get(board + "/")
        eventually(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-queue="pages"] .badge.active'))
        driver.find_element(By.CSS_SELECTOR, 'tr[data-queue="pages"] button[data-action="pause"]').click()
        flash = eventually(lambda: driver.find_element(By.ID, "flash").text, what="the pause's outcome")
        assert "is paused" in flash
        eventually(lambda: driver.find_element(By.CSS_SELECTOR, 'tr[data-queue="pages"] .badge.paused'))
        pushed = api(f"{board}/api/queues/pages/tasks", "POST", {"args": {"page": "cover"}})
        assert isinstance(pushed, dict)
        held = str(pushed["id"])
        time.sleep(1.5)  # fifteen poll intervals: a daemon that ignored the pause would have run it
        assert task_status(board, held) == "pending"

        # Resume it from the queue's page: the held task runs.
        driver.get(board + "/queues/pages")
        eventually(lambda: "paused" in text_of(driver, "#paused-badge"))
        driver.find_element(By.CSS_SELECTOR, 'button[data-action="resume"]').click()
        eventually(lambda: "active" in text_of(driver, "#paused-badge"), what="the queue to show active")
        eventually(lambda: task_status(board, held) == "done", what="the held task to run")

        # A long task, cancelled from its page while it runs: it ends cancelled, with the reason.
        pushed = api(f"{board}/api/queues/pages/tasks", "POST", {"args": {"page": "atlas", "sleep": 120}})
        assert isinstance(pushed, dict)
        slow = str(pushed["id"])
        driver.get(f"{board}/tasks/{slow}?queue=pages")
        eventually(lambda: "running" in text_of(driver, "#task-status"), what="the task to start")
        driver.find_element(By.CSS_SELECTOR, 'button[data-action="cancel"]').click()
        driver.switch_to.alert.accept()  # "Cancel task ...? It will not run again."
        flash = eventually(lambda: driver.find_element(By.ID, "flash").text, what="the cancel's outcome")
        assert "was told to stop it" in flash
        eventually(lambda: "cancelled" in text_of(driver, "#task-status"), what="the run to be stopped")
        assert text_of(driver, "#last-error") == "cancelled by an operator"
        assert driver.find_element(By.CSS_SELECTOR, 'button[data-action="retry"]').is_displayed()

        # The overview counts it.
        driver.get(board + "/")
        eventually(lambda: text_of(driver, 'tr[data-queue="pages"] td[data-count="cancelled"]') == "1")
        assert text_of(driver, 'div[data-total="cancelled"]') == "1"
