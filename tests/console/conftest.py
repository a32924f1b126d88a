"""A real headless browser for the console tests: Debian's ``chromium`` driven through its
``chromedriver`` (``scripts/test`` installs both from apt); selenium never downloads a browser."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if found:
            return found
    raise AssertionError(f"none of {names} is installed: apt-get install chromium chromium-driver")


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium-browser")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,1000",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_binary("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where each page's screenshot goes: a temp dir, or with ``MQTTPUSH_SCREENSHOTS=1`` the
    README's docs/screenshots (so a test run leaves the checkout clean unless asked)."""
    where = SCREENSHOTS if os.environ.get("MQTTPUSH_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    where.mkdir(parents=True, exist_ok=True)
    return where
