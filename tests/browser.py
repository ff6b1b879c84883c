"""Headless Chromium through selenium for the browser tests (the HTML report, the human-evaluation form).

``chrome()`` is a pytest fixture factory's body: it yields a WebDriver on Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs both when missing) and skips, with the reason, where either or selenium
is absent. Nothing downloads: the driver path is given, so selenium's manager never looks for one online.
Pages are opened as ``file://`` URLs; the network guard allows the driver's loopback connection.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _find(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    return next((path for name in names if (path := shutil.which(name))), None)


def chrome(download_dir: Path | None = None):
    """Yield a headless Chromium WebDriver (1280×1600 window); skip when no browser, driver or selenium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    browser, driver_path = _find(BROWSERS, "ADVBENCH_CHROMIUM"), _find(DRIVERS, "ADVBENCH_CHROMEDRIVER")
    if browser is None or driver_path is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1600", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        if download_dir is not None:  # headless Chromium needs downloads allowed explicitly
            driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                   {"behavior": "allow", "downloadPath": str(download_dir)})
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """The page's console messages of level SEVERE (errors), as text."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
