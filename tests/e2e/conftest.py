"""The browser tests' Chromium: Debian's ``chromium`` and ``chromium-driver``, headless. On a
machine without them a browser test says so loudly: a skip in capitals, and a failure under
``CI``, where a browser test that did not run must not pass for one that did."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def browser_binaries() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    message = (
        f"BROWSER TEST DID NOT RUN: {', '.join(missing)} not found. "
        "Install with: apt-get install chromium chromium-driver"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(f"!!! {message} !!!")


@pytest.fixture
def driver(browser_binaries: None, tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, its own profile, nothing fetched; the page's console kept
    (:func:`console_log`)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1100,900",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager never runs, nothing is downloaded.
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    drv = webdriver.Chrome(service=service, options=options)
    try:
        yield drv
    finally:
        drv.quit()


def console_log(drv: webdriver.Chrome) -> str:
    """What the page wrote to its console (errors, failed requests) since the last call."""
    try:
        entries: list[dict[str, Any]] = drv.get_log("browser")  # type: ignore[no-untyped-call]
    except WebDriverException as exc:  # a dead browser must not hide the test's failure
        return f"(no console log: {exc})"
    return "\n".join(f"{e.get('level')}: {e.get('message')}" for e in entries) or "(empty)"
