"""/docs renders in a real headless Chromium with every non-loopback request refused: the
Swagger UI assets are shipped in web/static/docs (no CDN), and the page loads without a console
error (its icon included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.service import Service

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent: run `make browser` (apt chromium)")
def test_docs_work_offline(api: Service) -> None:
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    errors: list[str] = []
    console: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)

            def guard(route, request) -> None:  # type: ignore[no-untyped-def]
                if request.url.startswith(api.base_url):
                    route.continue_()
                else:
                    outside.append(request.url)
                    route.abort()

            page.route("**/*", guard)
            page.goto(api.url("/docs"))
            page.wait_for_selector(".opblock", timeout=60_000)
            summaries = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".info .title").inner_text()
            icon = page.evaluate("document.querySelector('link[rel=icon]').href")
            fetched = page.request.get(icon)
            assert fetched.status == 200 and fetched.headers["content-type"] == "image/svg+xml"
        finally:
            browser.close()
    assert outside == [] and errors == [] and console == [], (outside, errors, console)
    assert "RFUAV Model Service" in title
    assert any("/api/v2/training/start" in s for s in summaries)
    assert len(summaries) >= 25
