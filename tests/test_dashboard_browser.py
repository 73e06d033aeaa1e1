"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a live server
on the demo data. Sign in, the journey map (persona, language, PNG and PDF exports), a funnel and
its dropped contacts saved as a segment, and script payloads sent through the collector that must
never run."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pypdf import PdfReader

from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine
from percorso.automation.store import save_automation
from percorso.config import Settings
from percorso.demo.command import demo_journey
from percorso.demo.generator import DemoSpec
from percorso.store import Store, open_store
from percorso.web.dashboard.users import add_user
from tests.conftest import free_port, load_demo_events

EXAMPLES = Path(__file__).parent.parent / "percorso" / "automation" / "examples"
ADMIN = ("ada@example.it", "correct horse battery")
VIEWER = ("vito@example.it", "viewer passphrase 1")
# Script payloads as a customer (or an attacker) can send them through the public collector.
PAYLOADS = [
    '<script>window.__xss = "script"</script>',
    '"><img src=x onerror="window.__xss=\'img\'">',
    "<svg onload=\"window.__xss='svg'\">",
    "javascript:window.__xss='link'",
]


@dataclass
class Site:
    url: str
    store: Store
    write_key: str
    contact: int


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from percorso.web.app import create_app

    data = tmp_path_factory.mktemp("dashboard")
    settings = Settings(data_dir=data, automation_worker=False, stage_interval=1, dashboard_cache_seconds=0)
    store = open_store(settings)
    load_demo_events(store, DemoSpec(contacts=1500, seed=11))
    demo_journey(store)
    add_user(store, ADMIN[0], ADMIN[1], role="admin", name="Ada")
    add_user(store, VIEWER[0], VIEWER[1], role="viewer", name="Vito")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    _, write_key = store.create_api_key("write", "browser tests")
    # One automation, and one contact it has touched, for the automation and timeline pages.
    text = (EXAMPLES / "registration-reminder.yaml").read_text(encoding="utf-8")
    save_automation(store, load_automation(text, "registration-reminder.yaml"), "registration-reminder.yaml")
    with store.session() as s:
        contact = int(s.rows("SELECT min(contact_id) FROM identities WHERE kind = 'email'")[0][0])
    Engine(store).enroll("registration-reminder", contact)
    yield Site(f"http://127.0.0.1:{port}", store, write_key, contact)
    server.should_exit = True
    thread.join(timeout=10)
    store.close()


@pytest.fixture(scope="module")
def browser(chromium: Any) -> Any:
    """Debian's Chromium (tests/conftest.py): a failure, never a skip, in CI."""
    return chromium


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, accept_downloads=True, locale="en-GB"
    )
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("dialog", lambda dialog: (page.errors.append("dialog: " + dialog.message), dialog.dismiss()))
    yield page
    context.close()


def sign_in(page: Any, site: Site, who: tuple[str, str] = ADMIN, target: str = "/") -> None:
    page.goto(site.url + target)
    assert "/login" in page.url
    page.fill("input[name=email]", who[0])
    page.fill("input[name=password]", who[1])
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_unauthenticated_visitors_only_see_sign_in(page: Any, site: Site) -> None:
    for path in ("/", "/map", "/funnels", "/paths", "/contacts", "/automations", "/settings"):
        page.goto(site.url + path)
        assert page.url.startswith(site.url + "/login"), path
        assert page.locator("input[name=password]").count() == 1
    page.fill("input[name=email]", ADMIN[0])
    page.fill("input[name=password]", "wrong password!")
    page.click("button[type=submit]")
    assert page.locator(".error").inner_text() == "Wrong e-mail or password."
    assert httpx.get(site.url + "/map.json").status_code == 401


def test_journey_map_persona_language_and_exports(page: Any, site: Site) -> None:
    sign_in(page, site, target="/map")
    assert page.url.startswith(site.url + "/map")
    heads = page.locator(".stage-head h2")
    assert heads.all_inner_texts() == [
        "Awareness",
        "Consideration",
        "Decision",
        "Purchase",
        "Retention & Advocacy",
    ]
    # The emotion curve is drawn (an SVG inside the chart) and pain points are named with evidence.
    page.wait_for_selector(".chart.emotion[data-drawn] svg path")
    assert page.locator("details.pain").count() >= 1
    everyone = int(page.locator(".stage-head [data-entered]").first.inner_text().replace(",", ""))
    twin = httpx.Client(base_url=site.url, cookies={c["name"]: c["value"] for c in page.context.cookies()})
    numbers = twin.get("/map.json").json()
    assert numbers["map"]["stages"][0]["contacts"]["entered"] == everyone

    page.select_option("#persona", "loyal-customer")
    page.click("#map-filters button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "persona=loyal-customer" in page.url
    loyal = int(page.locator(".stage-head [data-entered]").first.inner_text().replace(",", ""))
    assert 0 < loyal < everyone

    # Italian: text, and numbers formatted the Italian way; the choice is remembered.
    page.click("[data-lang-switch=it]")
    page.wait_for_load_state("networkidle")
    assert page.locator("h1").inner_text().startswith("Mappa del percorso")
    assert page.locator(".stage-head h2").first.inner_text() == "Consapevolezza"
    page.goto(site.url + "/")
    assert page.locator("[data-nav=map]").inner_text() == "Mappa del percorso"
    contacts = page.locator("[data-metric=contacts] .value").inner_text()
    assert "." in contacts and "," not in contacts  # 1.500, not 1,500

    page.goto(site.url + "/map?persona=loyal-customer")
    with page.expect_download() as info:
        page.click("#export-png")
    png = Path(info.value.path()).read_bytes()
    width, height = png_size(png)
    assert width >= 1000 and height >= 600 and len(png) > 20_000
    with page.expect_download() as info:
        page.click("#export-pdf")
    pdf = PdfReader(BytesIO(Path(info.value.path()).read_bytes()))
    text = pdf.pages[0].extract_text()
    assert "Consapevolezza" in text and "Cliente fedele" in text
    assert page.errors == []


def test_funnel_dropped_contacts_become_a_segment(page: Any, site: Site) -> None:
    sign_in(page, site, target="/funnels?funnel=checkout")
    page.wait_for_selector(".chart[data-chart=funnel][data-drawn] svg")
    entered = int(page.locator("[data-metric=entered]").inner_text().replace(",", ""))
    assert entered > 0
    link = page.locator("[data-dropped-link='2']")
    dropped = int(link.inner_text().replace(",", ""))
    assert dropped > 0
    link.click()
    page.wait_for_load_state("networkidle")
    rows = page.locator("table.dropped-contacts tbody tr")
    assert rows.count() == min(dropped, 100)  # a hundred a page
    page.fill("#save-segment input[name=name]", "Lost at checkout")
    page.click("#save-segment button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "/map?segment=lost-at-checkout" in page.url
    with site.store.session() as s:
        members = s.rows("SELECT count(*) FROM segment_members WHERE segment_key = 'lost-at-checkout'")[0][0]
    assert members == dropped
    # The map filtered to the segment counts only its contacts.
    first = int(page.locator(".stage-head [data-entered]").first.inner_text().replace(",", ""))
    assert 0 < first <= dropped
    assert page.errors == []


def test_script_payloads_never_run(page: Any, site: Site) -> None:
    client = httpx.Client(base_url=site.url, auth=(site.write_key, ""))
    batch = []
    for n, payload in enumerate(PAYLOADS):
        batch.append(
            {
                "type": "identify",
                "userId": f"xss-{n}",
                "traits": {"name": payload, "email": f"x{n}@example.com", "city": payload},
            }
        )
        batch.append(
            {"type": "track", "userId": f"xss-{n}", "event": payload, "properties": {"note": payload}}
        )
        batch.append(
            {
                "type": "page",
                "userId": f"xss-{n}",
                "name": payload,
                "properties": {"path": "/" + payload, "url": "https://shop.example/" + payload},
            }
        )
    assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
    sign_in(page, site)
    visited = ["/", "/paths", "/contacts?q=example.com"]
    visited += [f"/funnels?step={PAYLOADS[0]}&step={PAYLOADS[1]}", f"/map?from={PAYLOADS[0]}"]
    with site.store.session() as s:
        ids = [
            r[0]
            for r in s.rows("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value LIKE 'xss-%'")
        ]
    visited += [f"/contacts/{cid}" for cid in ids]
    for path in visited:
        page.goto(site.url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__xss") is None, path
    # The payload is shown as text where it belongs (the overview's recent activity, the contact page).
    page.goto(site.url + "/")
    assert PAYLOADS[0] in page.locator("body").inner_text()
    assert page.errors == []


def test_viewer_reads_but_cannot_change(page: Any, site: Site) -> None:
    sign_in(page, site, VIEWER, target="/map")
    assert page.locator(".note-form").count() == 0
    csrf = page.evaluate("document.body.getAttribute('hx-headers')")
    status = page.evaluate(
        """async (headers) => {
            const body = new URLSearchParams({journey: 'customer-journey', stage: 'awareness', text: 'x'});
            const r = await fetch('/map/notes', {method: 'POST', body, headers: JSON.parse(headers)});
            return r.status;
        }""",
        csrf,
    )
    assert status == 403
    with site.store.session() as s:
        assert s.rows("SELECT count(*) FROM map_notes")[0][0] == 0
    page.goto(site.url + "/settings")
    assert page.locator("h1").inner_text() == "Not allowed"


def test_contact_timeline_shows_touchpoints_and_automation_steps(page: Any, site: Site) -> None:
    sign_in(page, site, target="/contacts")
    with site.store.session() as s:
        email = s.rows(
            "SELECT value FROM identities WHERE kind = 'email' AND contact_id = ?", [site.contact]
        )[0][0]
    page.fill("input[name=q]", email)
    page.keyboard.press("Enter")
    page.wait_for_load_state("networkidle")
    page.click(f"a[href='/contacts/{site.contact}']")
    page.wait_for_load_state("networkidle")
    assert page.url.endswith(f"/contacts/{site.contact}")
    rows = page.locator("ol.timeline li")
    assert rows.count() > 1
    automation_rows = page.locator("ol.timeline li.automation")
    assert automation_rows.count() >= 1
    assert automation_rows.first.get_attribute("data-automation") == "registration-reminder"
    # In the language Ada last chose (another test switches her to Italian; the choice is kept).
    text = automation_rows.first.inner_text()
    assert "Confirm your registration" in text or "Conferma la registrazione" in text
    assert page.errors == []


def test_editor_pauses_an_automation(page: Any, site: Site) -> None:
    sign_in(page, site, target="/automations")
    page.click("a[href='/automations/registration-reminder']")
    page.wait_for_load_state("networkidle")
    page.wait_for_selector(".chart[data-drawn] svg")  # the step graph
    page.click("#status-form button[type=submit]")
    page.wait_for_load_state("networkidle")
    with site.store.session() as s:
        status = s.rows("SELECT status FROM automations WHERE automation_key = 'registration-reminder'")[0][0]
    assert status == "paused"
    assert page.locator("#status-form").get_attribute("action") == "/automations/registration-reminder/resume"
    page.click("#status-form button[type=submit]")
    page.wait_for_load_state("networkidle")
    with site.store.session() as s:
        status = s.rows("SELECT status FROM automations WHERE automation_key = 'registration-reminder'")[0][0]
    assert status == "active"
    assert page.errors == []


def test_attribution_page_draws_every_model_and_agrees_with_the_api(page: Any, site: Site) -> None:
    """The demo's orders credited to its channels by the seven models: the chart is drawn, every
    model hands out exactly the conversions on the tile, and the page, its JSON twin and the
    REST API give the same numbers; in Italian the models have Italian names."""
    sign_in(page, site, target="/attribution")
    page.click("[data-lang-switch=en]")  # the language is the user's: an earlier test may have chosen Italian
    page.wait_for_selector(".chart[data-chart=grouped][data-drawn] svg")
    conversions = int(page.locator("[data-metric=conversions]").inner_text().replace(",", ""))
    assert conversions > 0
    rows = page.locator("#attribution-table tbody tr")
    assert rows.count() >= 3  # the demo's orders come through several channels
    twin = page.request.get(site.url + "/attribution.json").json()
    result = twin["result"]
    assert result["conversions"] == conversions
    for model in result["models"]:
        assert sum(v["conversions"][model] for v in result["values"]) == pytest.approx(conversions, abs=0.01)
    first_value = rows.first.get_attribute("data-value")
    shown = float(rows.first.locator("td[data-model=linear]").inner_text().replace(",", ""))
    linear = next(v["conversions"]["linear"] for v in result["values"] if v["value"] == first_value)
    assert shown == pytest.approx(linear, abs=0.05)
    _, secret = site.store.create_api_key("secret", "attribution test")
    period = result["period"]  # the page's period, as the instants it covers
    api = httpx.get(
        site.url + "/v1/attribution",
        params={"from": period["start"], "to": period["end"], "conversion": twin["form"]["conversion"]},
        auth=(secret, ""),
    ).json()
    assert api["conversions"] == conversions and api["values"] == result["values"]
    page.click("[data-lang-switch=it]")
    page.wait_for_selector(".chart[data-chart=grouped][data-drawn] svg")
    assert page.locator("th[data-model=markov]").inner_text() == "Catena di Markov"
    assert page.locator("th[data-model=first_touch]").inner_text() == "Prima interazione"
    page.click("[data-lang-switch=en]")
    assert page.errors == []
