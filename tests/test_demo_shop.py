"""The demo shop as a newcomer uses it, in Debian's Chromium on both stores: the shop on its own
port loads percorso.js from percorso; browse, add to the cart, register, read the Club's terms
(an on-site message arrives), buy (the NPS survey appears in Italian and is answered), then the
whole visit, the answer and the NPS are on the API and on the dashboard's contact page."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from percorso.automation.engine import Engine, EngineSettings
from percorso.demo.command import demo_journey
from percorso.demo.shop import prepare_shop, shop_app
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer, free_port
from tests.test_dashboard import signed_in


@pytest.fixture
def shop(server: LiveServer) -> Iterator[str]:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    key = prepare_shop(server.store, origin)
    instance = uvicorn.Server(
        uvicorn.Config(shop_app(server.url, key), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the shop did not start"
        time.sleep(0.02)
    yield origin
    instance.should_exit = True
    thread.join(timeout=10)


def wait_for_event(server: LiveServer, event: str, path: str | None = None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with server.store.session() as s:
            where, params = ("event = ?", [event]) if path is None else ("page_path = ?", [path])
            if s.rows(f"SELECT count(*) FROM events WHERE {where}", params)[0][0]:
                return
        time.sleep(0.1)
    raise AssertionError(f"{event or path} never arrived")


def ready(page: Any) -> None:
    page.wait_for_function(
        "() => window.percorso && window.percorso.user && window.percorso.user().anonymousId"
    )


def test_a_visit_to_the_demo_shop_shows_on_the_dashboard(
    server: LiveServer, shop: str, chromium: Any
) -> None:
    context = chromium.new_context(locale="it-IT")
    page = context.new_page()
    page.goto(shop + "/")
    ready(page)
    page.click("text=Lampada Luna")
    ready(page)
    page.click("#add")
    page.wait_for_url(shop + "/carrello")
    page.goto(shop + "/registrati")
    ready(page)
    page.fill("#name", "Giulia")
    page.fill("#email", "giulia@example.it")
    page.click("button[type=submit]")
    page.wait_for_selector("#done:not([hidden])")
    page.goto(shop + "/membership/termini")
    ready(page)
    wait_for_event(server, "", "/membership/termini")

    # The worker (run here by hand) queues the automation's on-site message; the next page shows it.
    Engine(server.store, settings=EngineSettings(base_url=server.url)).run_until_idle()
    page.goto(shop + "/")
    message = page.locator("[data-percorso-message]")
    message.wait_for()
    assert "Il Club in due minuti" in message.inner_text()
    message.locator("button").click()

    page.goto(shop + "/checkout")
    ready(page)
    page.fill("#email", "giulia@example.it")
    page.click("button[type=submit]")
    page.wait_for_url(shop + "/ordine/completato")
    survey = page.locator("[data-percorso-survey=nps-ordine]")
    survey.wait_for()
    assert "Quanto è probabile che consiglieresti Casa Aurora a un amico?" in survey.inner_text()
    survey.locator("button[data-value='10']").click()
    survey.locator("textarea").fill("Consegna velocissima")
    survey.locator("button[type=submit]").click()
    page.wait_for_function("() => document.querySelector('[data-percorso-survey]').textContent === 'Grazie!'")
    page.evaluate("() => percorso.flush()")
    wait_for_event(server, "Onsite Message Dismissed")
    context.close()

    with server.client() as api:
        contact = api.get("/v1/contacts/lookup", params={"email": "giulia@example.it"}).json()
        events = api.get(f"/v1/contacts/{contact['id']}/timeline", params={"limit": 200}).json()["events"]
        nps = api.get("/v1/surveys/nps-ordine/results").json()
    names = {e.get("event") for e in events if e["type"] == "track"}
    assert {
        "Product Added",
        "Registration Started",
        "Registration Submitted",
        "Checkout Started",
        "Order Completed",
        "Onsite Message Shown",
        "Onsite Message Dismissed",
        "Survey Shown",
        "Survey Answered",
    } <= names, names
    paths = {e["properties"].get("path") for e in events if e["type"] == "page"}
    assert {
        "/",
        "/prodotti/lampada-luna",
        "/registrati",
        "/membership/termini",
        "/ordine/completato",
    } <= paths
    assert contact["traits"]["firstName"] == "Giulia"
    assert nps["score"]["promoters"] == 1 and nps["score"]["nps"] == 100.0

    add_user(server.store, "anna@example.it", "a long enough secret", role="admin")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    page_html = dashboard.get(f"/contacts/{contact['id']}").text
    assert "Survey Answered" in page_html and "Order Completed" in page_html

    # The clicks are on the heatmaps (the survey's and the message's own buttons are not).
    heat = dashboard.get("/heatmaps.json", params={"page": "/prodotti/*", "band": "desktop"}).json()
    assert heat["result"]["clicks"] >= 1, heat["result"]  # "add to cart", sent as the page was left
    assert "#add" in {e["selector"] for e in heat["result"]["elements"]}

    # And on the journey map the demo draws: the answer counts in the stage Giulia was in.
    journey = demo_journey(server.store)
    twin = dashboard.get("/map.json", params={"journey": journey}).json()
    dashboard.close()
    feeling = {s["stage"]: s["emotion"] for s in twin["map"]["stages"]}
    answered = [k for k, e in feeling.items() if e.get("nps_responses")]
    assert len(answered) == 1 and feeling[answered[0]]["nps"] == 100.0, feeling
