"""Fixtures for the browser tests: one headless Chromium per session, a fresh context
(cookies, storage) per test, and the page's console errors and requests recorded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.web.browser import CHROMIUM, LAUNCH_ARGS, missing_browser


@dataclass
class Seen:
    """What a browser page reported: console errors, uncaught exceptions, request URLs."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    reason = missing_browser()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium) -> Iterator[tuple[object, Seen]]:  # noqa: ANN001
    """A page in a fresh context, with what it reports."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    seen = Seen()
    page.on("console", lambda m: m.type == "error" and seen.errors.append(m.text))
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("request", lambda r: seen.requests.append(r.url))
    yield page, seen
    context.close()
