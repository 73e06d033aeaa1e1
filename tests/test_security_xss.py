"""Cross-site scripting: text that customers and integrations send (event names, traits,
properties) and that editors write (automation and journey names) is shown escaped on every
dashboard page and export, and every page carries a script policy that would stop a miss.

Every GET page of the dashboard is listed from the app itself, so a new page is covered at once.
The browser-level proof (payloads that would set a global if they ran, in real Chromium) is
``test_attacker_text_never_runs`` in tests/test_dashboard_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fastapi.routing import APIRoute

from percorso.config import Settings
from tests.conftest import LiveServer
from tests.test_dashboard_pages import ADMIN, ATTR, SCRIPT, contact_of, signed_in, site

__all__ = ["site"]  # the fixture, shared with the dashboard page tests

RAW = (SCRIPT, "<img src=x onerror", "onerror=alert(1)>")


def dashboard_pages(settings: Settings, server: LiveServer) -> Iterator[str]:
    from percorso.web.app import create_app

    def walk(items: list[Any]) -> Iterator[APIRoute]:
        for route in items:
            if isinstance(route, APIRoute):
                yield route
            elif hasattr(route, "original_router"):
                yield from walk(route.original_router.routes)

    # Not dashboard pages: sign-in, and the API reference (Swagger UI draws the OpenAPI schema,
    # never stored data, with FastAPI's own inline start-up script; tests/test_api_docs_browser.py).
    outside = {"/login", "/docs", "/docs/oauth2-redirect"}
    for route in walk(create_app(settings, server.store).routes):
        if not route.include_in_schema and "GET" in route.methods and route.path not in outside:
            yield route.path


def test_attacker_text_is_escaped_on_every_page_and_export(settings: Settings, site: LiveServer) -> None:
    client = signed_in(site, ADMIN)
    mallory = contact_of(site.store, "mallory")
    seen = 0
    for path in dashboard_pages(settings, site):
        url = path.replace("{contact_id}", str(mallory)).replace("{key}", "welcome")
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code)
        kind = r.headers["content-type"].split(";")[0]
        if kind in ("text/html", "image/svg+xml"):
            for raw in RAW:
                assert raw not in r.text, (url, raw)
            if kind == "text/html" and not url.endswith("export.html"):
                policy = r.headers["content-security-policy"]
                assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]
                assert r.headers["x-content-type-options"] == "nosniff"
            # Inline script blocks carry data only, never code.
            for block in re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", r.text):
                assert 'type="application/json"' in block, (url, block)
            seen += 1
    assert seen >= 10
    # The attacker's text really is on the pages (escaped), so the check above looked at it.
    profile = client.get(f"/contacts/{mallory}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in profile
    assert client.get(f"/contacts/{mallory}.json").json()["contact"]["traits"]["nickname"] == ATTR


def test_the_standalone_html_export_runs_no_script(site: LiveServer) -> None:
    client = signed_in(site, ADMIN)
    export = client.get("/map/export.html").text
    assert "<script" not in export and SCRIPT not in export
