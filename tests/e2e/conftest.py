"""The browser tests' Chromium: Debian's ``chromium`` and ``chromium-driver``, headless. On a
machine without them a browser test says so loudly: a skip in capitals, and a failure under
``CI``, where a browser test that did not run must not pass for one that did."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


WAIT = 20.0
"""Seconds a browser test waits for what a page should show."""

T = TypeVar("T")


def did_not_run(message: str) -> NoReturn:
    """Say loudly that a browser test could not run: a failure under ``CI``, else a skip in
    capitals."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(f"!!! {message} !!!")


def wait_for(
    drv: webdriver.Chrome,
    what: str,
    cond: Callable[[webdriver.Chrome], T | None],
    *,
    shown: Callable[[], str] = lambda: "",
) -> T:
    """Wait until ``cond`` returns something truthy; fail naming ``what`` (and what
    ``shown`` says of the page) on timeout."""
    waiter = WebDriverWait(
        drv, WAIT, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )
    try:
        result = waiter.until(cond)
    except WebDriverException as exc:
        raise AssertionError(f"timed out after {WAIT}s waiting for {what}\n{shown()}") from exc
    assert result is not None  # until() only returns a truthy value
    return result


@pytest.fixture
def browser_binaries() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        did_not_run(
            f"BROWSER TEST DID NOT RUN: {', '.join(missing)} not found. "
            "Install with: apt-get install chromium chromium-driver"
        )


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
