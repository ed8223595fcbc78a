"""Headless Debian chromium for the browser tests (Playwright drives it; no ``playwright
install`` download is needed): its path, its flags, and where screenshots go."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ARGS", "ARTIFACTS", "CHROMIUM", "HAVE_CHROMIUM"]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Screenshots of the views (git-ignored).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
