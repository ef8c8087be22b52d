"""Take docs/dashboard-run.png: the run page of an order canceled while it ships.

    .venv/bin/python docs/dashboard_screenshot.py

Serves examples/order_pipeline.py with ``trioflow serve`` on a free port and a fresh
database, starts an order from the dashboard, cancels it from the page once ``ship``
runs, and photographs the page with Playwright driving /usr/bin/chromium.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "dashboard-run.png"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "trioflow", "serve", "--port", "0"]
        command += [str(ROOT / "examples" / "order_pipeline.py:workflow")]
        command += ["--db", str(Path(folder) / "runs.db")]
        server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            assert server.stderr is not None
            for line in server.stderr:
                found = re.search(r"dashboard at (\S+)/ ", line)
                if found:
                    url = found.group(1)
                    break
            photograph(url)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=15)
            server.stderr.close()  # type: ignore[union-attr]
    print(f"wrote {OUT.relative_to(ROOT)}")


def photograph(url: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=ARGS
        )
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(url + "/")
        page.get_by_label("order_id").fill("A-1001")
        page.get_by_label("sku").fill("trio-mug")
        page.get_by_label("quantity").fill("2")
        page.get_by_label("latency").fill("40")
        page.get_by_role("button", name="Start").click()
        ship = page.locator('#timeline tr[data-step="ship"] .status')
        expect(ship).to_have_text("running", timeout=30_000)
        page.get_by_label("Reason").fill("the customer called to cancel")
        page.get_by_role("button", name="Cancel run").click()
        expect(page.locator("#run-status")).to_have_text("canceled")
        page.locator('#timeline tr[data-step="charge-payment"] summary').click()
        page.screenshot(path=str(OUT), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
