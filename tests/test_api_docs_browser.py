"""The API reference the README points to (/docs) draws in Debian's Chromium with every
request outside percorso refused: Swagger UI comes from percorso itself, not a CDN."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer


def offline_page(chromium: Any, server: LiveServer) -> tuple[Any, list[str]]:
    context = chromium.new_context()
    refused: list[str] = []

    def only_percorso(route: Any) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_percorso)
    return context.new_page(), refused


def test_the_api_reference_draws_offline(server: LiveServer, chromium: Any) -> None:
    page, refused = offline_page(chromium, server)
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=30_000)
    paths = page.locator(".swagger-ui .opblock-summary-path").all_inner_texts()
    assert any(p.strip() == "/v1/track" for p in paths), paths[:10]
    assert any("/v1/surveys/{key}/results" in p for p in paths)
    assert "percorso" in page.title()
    # An operation opens with its responses, as the schema describes them.
    page.locator(".opblock-summary-path", has_text="/v1/track").first.click()
    page.wait_for_selector(".opblock-body .responses-table", timeout=30_000)
    assert refused == [], refused
    assert page.request.get(f"{server.url}/openapi.json").json()["info"]["title"] == "percorso"
    assert refused == [], refused
    page.context.close()
