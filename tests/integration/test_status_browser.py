"""The status page in a real browser (Debian's chromium + chromium-driver, driven by
selenium) against a node with traffic: right counts, a live update when a suspension is
added, no console errors (a CSP violation is one), and a screenshot kept as an artefact.

Skipped, saying why, only where the browser or selenium is not installed (tests/run
installs both). Selenium blocks, so it runs in a thread while the node serves in this loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.traffic import HELD, node_with_traffic

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCREENSHOT = ARTIFACTS / "status_page.png"
WAIT = 15  # seconds; the page polls every 2 s

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# The Debian wrapper script /usr/bin/chromium execs this binary.
CHROMIUM = next(
    (
        p
        for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"))
        if p and os.access(p, os.X_OK)
    ),
    None,
)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed "
    "(apt-get install chromium chromium-driver; tests/run does it)",
)


def start_browser(profile: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,900",  # a laptop screen
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium refuses to run as root otherwise
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium must not look for (or fetch) one itself.
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


def text(driver: Any, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


ROWS = """return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'),
    (tr) => Array.from(tr.cells, (td) => td.innerText.trim()));"""


def row(driver: Any, table: str, first_cell: str) -> list[str]:
    """The cells of the row of ``table`` whose first cell is ``first_cell`` ([] if none),
    read in one script: the page replaces its rows at each poll."""
    rows = driver.execute_script(ROWS, f"#{table}")
    return next((cells for cells in rows if cells and cells[0] == first_cell), [])


def open_page(driver: Any, url: str) -> dict[str, list[str]]:
    """Load the page, wait for one successful poll, and read what it shows."""
    driver.get(url)
    WebDriverWait(driver, WAIT).until(lambda d: text(d, "#conn") == "live")
    return {
        "state": [text(driver, "header .pill[data-field='node.state']")],
        "scheduled": [text(driver, "#scheduled-messages")],
        "delivery": row(driver, "rates-table", "Delivery"),
        "deferred": row(driver, "rates-table", "TransientFailure"),
        "held": row(driver, "scheduled-table", HELD),
        "destination": row(driver, "destinations", HELD),
    }


REASON = "maintenance <b>window</b>"


def wait_for_suspension(driver: Any) -> dict[str, Any]:
    """Wait until the page (by itself) shows the new suspension; then screenshot it."""
    WebDriverWait(driver, WAIT).until(lambda d: row(d, "holds-table", "admin"))
    WebDriverWait(driver, WAIT).until(lambda d: row(d, "scheduled-table", HELD)[3:4] == [REASON])
    shown = {
        "hold": row(driver, "holds-table", "admin"),
        "held": row(driver, "scheduled-table", HELD),
        "bold": len(driver.find_elements(By.CSS_SELECTOR, "#holds-table b, #scheduled-table b")),
        "errors": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"],
    }
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(900, int(height) + 200))  # the whole page, chrome aside
    driver.save_screenshot(str(SCREENSHOT))
    return shown


async def test_status_page_in_chromium_shows_counts_and_updates_live(tmp_path, capsys):
    """4 delivered, 2 deferred: the page shows them; a suspension added over the admin API
    appears without a reload, its reason as text; a screenshot is saved."""
    async with node_with_traffic(tmp_path, delivered=4, deferred=2) as node:
        base = f"http://127.0.0.1:{node.http_port}"
        driver = await asyncio.to_thread(start_browser, tmp_path / "chrome-profile")
        try:
            seen = await asyncio.to_thread(open_page, driver, f"{base}/status")
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{base}/api/admin/suspend/v1",
                    json={"domain": HELD, "reason": REASON, "duration": "1h"},
                ) as resp:
                    assert resp.status == 200, await resp.text()
            after = await asyncio.to_thread(wait_for_suspension, driver)
        finally:
            await asyncio.to_thread(driver.quit)
    with capsys.disabled():
        print(f"\nstatus page screenshot: {SCREENSHOT}")
    assert seen["state"] == ["up"] and seen["scheduled"] == ["2"]
    assert seen["delivery"][:3] == ["Delivery", "4", "4"]
    assert seen["deferred"][:3] == ["TransientFailure", "2", "2"]
    assert seen["held"][:2] == [HELD, "2"] and seen["held"][3] == "\u2014"
    assert seen["destination"] == [HELD, "2"]
    assert after["hold"][:4] == ["admin", "suspend", f"domain={HELD}", REASON]
    assert after["held"][3] == REASON and after["bold"] == 0  # text, not markup
    assert after["errors"] == []
    assert SCREENSHOT.stat().st_size > 10_000
