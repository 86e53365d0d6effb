"""Fixtures of the report tests: the hand-built results folder and one headless Chromium per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from report_helpers import Page, chromium_path, hand_records, write_store


@pytest.fixture
def hand_run(tmp_path) -> Path:
    return write_store(tmp_path / "hand", hand_records())


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module's tests (``--no-sandbox``: CI containers run as root)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    opened = Page(browser)
    yield opened
    opened.page.close()
