"""Make the README's screenshots of the board: `.venv/bin/python docs/screenshots.py`.

A demo on embedded SQLite in a temporary folder: four queues, an hour of finished tasks written
straight into the table (so the per-minute charts have a past), then the real daemon with the demo
handler (which fails about one run in five) and its board; headless Chromium (Debian's, as in
the browser tests) saves the overview (one queue paused, where the store can pause), a queue and a
failed task into docs/.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.acceptance.browser import chromium, eventually  # noqa: E402

QUEUES = {"thumbnails": 4, "emails": 2, "reports": 1, "webhooks": 3}

CONFIG = """\
[backends.main]
kind = "sqlite"
url = "sqlite:///demo.db"
"""

WORKER = """
[[workers]]
name = "{name}"
handler = "apalis_cli.demo:resize_image"
concurrency = {concurrency}
max_attempts = 3
keep_alive = "2s"
middleware = [{{ kind = "retry", backoff = "exponential", base = "20s", max = "10m" }}]
"""


def apalis(folder: Path, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "apalis_cli", *argv, "--config", str(folder / "jobs.toml")],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def seed_history(folder: Path) -> None:
    """An hour of finished tasks, as if the daemon had been running."""
    now = time.time()
    rows = []
    rng = random.Random(7)
    for queue, weight in QUEUES.items():
        for minute in range(60):
            for _ in range(rng.randint(2, 9) * weight):
                done_at = now - 3600 + minute * 60 + rng.uniform(0, 59)
                failed = rng.random() < 0.06
                task_id = f"{int(done_at * 1000):012x}{rng.getrandbits(72):018x}"
                payload = json.dumps({"image": f"photo-{rng.randint(1000, 9999)}.jpg", "width": 256}).encode()
                error = "ConnectionError: image store did not answer (attempt 3 of 3, giving up)" if failed else None
                rows.append(
                    (
                        task_id,
                        queue,
                        payload,
                        "killed" if failed else "done",
                        3 if failed else 1,
                        3,
                        done_at - 0.4,
                        error,
                        None if failed else '{"thumbnail": "thumb-256px.png"}',
                        done_at - rng.uniform(0.5, 30),
                        done_at,
                    )
                )
    with sqlite3.connect(folder / "demo.db") as conn:
        conn.executemany(
            "INSERT INTO apalis_tasks (id, queue, payload, status, attempts, max_attempts, run_at, last_error,"
            " result, created_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="apalis-shots-"))
    (folder / "jobs.toml").write_text(
        CONFIG + "".join(WORKER.format(name=n, concurrency=c) for n, c in QUEUES.items())
    )
    apalis(folder, "check")
    seed_history(folder)
    images = [{"image": f"photo-{i}.jpg", "width": 128 + i % 4 * 64} for i in range(400)]
    (folder / "tasks.jsonl").write_text("\n".join(json.dumps(item) for item in images))
    for queue in QUEUES:
        apalis(folder, "push", "--worker", queue, "--file", "tasks.jsonl")
    apalis(folder, "push", "--worker", "reports", "--delay", "2h", '{"report": "weekly", "format": "pdf"}')
    later = apalis(folder, "push", "--worker", "reports", "--delay", "3h", '{"report": "monthly"}').strip()
    # The control plane, where the store has it: a paused queue and a cancelled task to show.
    subprocess.run([sys.executable, "-m", "apalis_cli", "pause", "reports", "--config", "jobs.toml"], cwd=folder)
    subprocess.run(
        [sys.executable, "-m", "apalis_cli", "cancel", later, "-w", "reports", "--config", "jobs.toml",
         "--reason", "superseded by the weekly report"],
        cwd=folder,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "apalis_cli", "run", "--config", "jobs.toml", "--no-live", "--log-level", "error",
         "--web", f"127.0.0.1:{port}", "--web-admin"],
        cwd=folder,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as reply:
                    return bool(json.loads(reply.read())["healthy"])
            except OSError:
                return False

        eventually(up, what="the board")
        time.sleep(12)  # some runs, some failures waiting for their retry
        docs = ROOT / "docs"
        with chromium(folder / "profile", width=1400, height=860) as driver:
            driver.get(url + "/")
            eventually(lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-queue="thumbnails"]'))
            time.sleep(1)
            driver.save_screenshot(str(docs / "board-overview.png"))
            driver.get(url + "/queues/thumbnails?status=failed")
            eventually(lambda: driver.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr"), what="failed tasks")
            driver.save_screenshot(str(docs / "board-queue.png"))
            link = driver.find_element(By.CSS_SELECTOR, "table.tasks tbody tr td a")
            link.click()
            eventually(lambda: driver.find_elements(By.ID, "last-error"), what="the task page")
            driver.save_screenshot(str(docs / "board-task.png"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    print(f"wrote {docs}/board-overview.png, board-queue.png, board-task.png")


if __name__ == "__main__":
    main()
