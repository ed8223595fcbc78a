"""The browser the dashboard tests drive (one launch per test)."""

from __future__ import annotations

from typing import AsyncIterator

import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from tests.support.browser import ARGS, CHROMIUM, HAVE_CHROMIUM


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian chromium; missing, the test fails (it does not skip)."""
    assert HAVE_CHROMIUM, "install Debian's chromium: apt-get install -y chromium"
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()
