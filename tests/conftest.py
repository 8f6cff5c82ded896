"""Fixtures shared by the test modules (one place, so the browser tests start Chromium the same way)."""
from __future__ import annotations

import pytest

from tests import ui_browser_helpers as ui


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through Playwright, one per test module."""
    if not ui.CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(ui.CHROMIUM), args=ui.CHROMIUM_ARGS)
        yield b
        b.close()
