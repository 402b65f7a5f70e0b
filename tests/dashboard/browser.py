"""Headless Chromium for the dashboard tests (Debian's chromium and chromedriver, via Selenium).

``chromium_driver()`` fails the test, rather than skipping it, when the browser is missing
and ``POCKETTUNE_REQUIRE_BROWSER`` is set (``make test`` sets it after installing the
browser), so CI can never pass without having looked at the pages. ``console_errors``
returns what the page's JavaScript logged as errors: a chart that throws is a broken page.

Live pages (``static/live.js``) replace parts of themselves while a test looks at them, so a
test never holds on to an element of a live part across WebDriver commands: ``snapshot`` reads
rows, their cells and chart points in one ``execute_script``, which runs between two refreshes
(a refresh is applied in one synchronous step), and ``hold_refresh`` stops a page replacing
anything before a test clicks in it. ``refreshes`` counts the refreshes a page has applied.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# The dashboard tests reuse the coordinator and fleet test harnesses.
_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("coordinator", "fleet"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver",)


def _find(candidates, name) -> str | None:
    for path in candidates:
        if Path(path).exists():
            return path
    return shutil.which(name)


def chromium_driver(width: int = 1400, height: int = 1000):
    chromium = _find(CHROMIUM_CANDIDATES, "chromium")
    chromedriver = _find(CHROMEDRIVER_CANDIDATES, "chromedriver")
    if chromium is None or chromedriver is None:
        message = "chromium and chromedriver are needed for the dashboard tests: run scripts/install_browser.sh"
        if os.environ.get("POCKETTUNE_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def console_errors(driver, expected_statuses: tuple[int, ...] = ()) -> list[str]:
    """Errors the page logged, less failed loads with a status the test itself provoked."""
    allowed = tuple(f"status of {status} " for status in expected_statuses)
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"
            and not ("Failed to load resource" in entry["message"] and any(a in entry["message"] for a in allowed))]


def wait_for(driver, condition, timeout: float = 20.0, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d), message)


def screenshot(driver, name: str) -> None:
    """Save a screenshot when ``POCKETTUNE_SCREENSHOTS`` names a folder (how docs/ get theirs)."""
    folder = os.environ.get("POCKETTUNE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(int(height) + 40, 600), 4000))
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))
        driver.set_window_size(1400, 1000)


_SNAPSHOT_JS = """
const [rowSelectors, rowParts, chartIds] = arguments;
const shown = (el) => el.getClientRects().length > 0;
const text = (el) => (shown(el) ? el.innerText.trim() : "");
const rows = {};
for (const [name, selector] of Object.entries(rowSelectors)) {
  rows[name] = Array.from(document.querySelectorAll(selector), (row) => {
    const parts = {};
    for (const [part, css] of Object.entries(rowParts)) {
      const el = row.querySelector(css);
      parts[part] = el === null ? null : text(el);
    }
    return {attrs: Object.fromEntries(Array.from(row.attributes, (a) => [a.name, a.value])),
            text: text(row), cells: Array.from(row.querySelectorAll("td"), text), displayed: shown(row), parts};
  });
}
const charts = {};
for (const id of chartIds) {
  const chart = document.getElementById(id);
  charts[id] = chart === null ? null : Array.from(chart.querySelectorAll(".pt-point"),
                                                  (p) => ({series: p.dataset.series, x: p.dataset.x, y: p.dataset.y}));
}
const refresh = window.pocketTuneRefresh;
return {rows, charts, live: document.body.dataset.live, refreshes: refresh ? refresh.count : null};
"""


def snapshot(driver, rows: dict[str, str] | None = None, parts: dict[str, str] | None = None,
             charts: tuple[str, ...] = ()) -> dict:
    """What the page shows now, read in one script so that no live refresh lands halfway.

    ``rows`` names CSS selectors; each matching row comes back as ``attrs`` (its attributes),
    ``text`` and ``cells`` (visible text, as WebDriver's ``.text``: empty when not displayed),
    ``displayed``, and ``parts``: the text of the first element inside the row matching each
    of ``parts``' selectors (None when none does). ``charts`` names chart ids; each comes back
    as its points' data-series, data-x and data-y (None for a chart not on the page).
    """
    return driver.execute_script(_SNAPSHOT_JS, rows or {}, parts or {}, list(charts))


def refreshes(driver) -> int:
    """How many live refreshes the page has applied since it loaded."""
    count = driver.execute_script("return window.pocketTuneRefresh ? window.pocketTuneRefresh.count : null")
    assert count is not None, "the page has no window.pocketTuneRefresh: live.js did not run"
    return count


def hold_refresh(driver) -> None:
    """Stop the page's live refresh replacing anything (until it is left or resumed)."""
    assert driver.execute_script(
        "if (!window.pocketTuneRefresh) return false; window.pocketTuneRefresh.pause();"
        " return window.pocketTuneRefresh.paused;"), "the page has no window.pocketTuneRefresh: live.js did not run"
