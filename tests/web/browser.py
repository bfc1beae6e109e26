"""Headless Chromium for the dashboard tests and screenshots: Debian's build, driven by
Playwright, never a browser downloaded by Playwright itself."""

from __future__ import annotations

import shutil

__all__ = ["CHROMIUM", "LAUNCH_ARGS", "missing_browser"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Playwright adds --headless and a fresh temporary --user-data-dir itself.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing_browser() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: bash scripts/setup test installs it"
    if shutil.which(CHROMIUM) is None:
        return (
            "Debian's chromium is not installed (scripts/test installs it with apt-get); "
            "Playwright's own browser downloads are never used"
        )
    return None
