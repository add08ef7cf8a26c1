"""Headless Chromium for the console tests: Debian's ``chromium`` driven by Playwright.

Skips with the reason when the browser or the Playwright package is missing, except under
``CI=true`` (``.ci/run`` installs both), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(
    os.environ.get("STAGELINE_SCREENSHOTS", REPO / ".ci" / "artifacts" / "screenshots")
)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and no browser: {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def browser_page() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright Python package is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        missing("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            yield page
            page.close()
            context.close()
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
