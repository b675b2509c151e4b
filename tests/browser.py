"""Headless Chromium for the browser tests (selenium with Debian's chromium and chromedriver): the
``driver`` and ``artifacts`` fixtures live in conftest.py; these helpers load a page and take screenshots.
Screenshots go to $ICL_TEST_ARTIFACTS (make test sets it to test-output/)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1300, 1400


def start_driver():
    """A headless Chromium, or pytest.skip with the reason where it truly cannot start."""
    pytest.importorskip("selenium", reason="selenium is not installed")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"Chromium or chromedriver missing ({CHROMIUM}, {CHROMEDRIVER})")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="explorer-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts), profile
    except WebDriverException as e:
        pytest.skip(f"Chromium could not start: {(str(e).strip().splitlines() or ['?'])[0]}")


def artifacts_dir(tmp_path_factory) -> Path:
    out = Path(os.environ.get("ICL_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def load(driver, path: Path) -> list[dict]:
    """Open a page, wait until every plot is drawn (the loader marks the body), return its console log."""
    driver.set_window_size(WIDTH, HEIGHT)
    driver.get(path.as_uri())
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    return driver.get_log("browser")


def severe(log: list[dict]) -> list[str]:
    return [e["message"] for e in log if e["level"] == "SEVERE"]


def screenshot(driver, path: Path) -> None:
    """The whole page: grow the window to the page height first."""
    h = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, h + 20)
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))


