"""The customer 360 header on a contact's page (and its JSON twin), on both stores: name, stage and
time in it, personas, orders and lifetime value, latest NPS, what needs attention ("Registration
Submitted 6 days ago, not yet “Registration Confirmed”") and what the automations will do next.

Events go in through the collector over HTTP; the automation engine enrolls on a clock set six
days back; the page is read signed in, in English and Italian."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from percorso.analytics.customer import customer_summary, next_action
from percorso.analytics.stages import get_journey, save_journey, update
from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine, EngineSettings, ManualClock
from percorso.automation.store import save_automation
from percorso.journey import load_journey, template_text
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import ADMIN, signed_in

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)

REMINDER = """
key: confirm
name: {en: Confirm your registration, it: Conferma la registrazione}
trigger: {event: Registration Submitted}
goal: {event: Registration Confirmed}
steps:
  - {id: pause, wait: 10d}
  - id: reminder
    name: {en: Reminder, it: Promemoria}
    email: {subject: "One click left", text: "Confirm your account."}
"""


def _event(user: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "timestamp": at.isoformat(), **fields}


def _history() -> list[dict[str, Any]]:
    giulia = [
        {"type": "identify", "userId": "giulia", "timestamp": (NOW - 61 * DAY).isoformat(),
         "traits": {"firstName": "Giulia", "lastName": "Colombo", "email": "giulia@example.it"}},
        {"type": "page", "userId": "giulia", "name": "Home", "properties": {"path": "/"},
         "timestamp": (NOW - 60 * DAY).isoformat()},
        _event("giulia", NOW - 58 * DAY, event="Product Viewed"),
        _event("giulia", NOW - 50 * DAY, event="Order Completed", properties={"revenue": 120.5}),
        _event("giulia", NOW - 47 * DAY, event="Order Completed", properties={"revenue": 79.5}),
        _event("giulia", NOW - 45 * DAY, event="Order Completed", properties={"revenue": 50}),
        _event("giulia", NOW - 44 * DAY, event="Survey Answered", properties={"kind": "nps", "score": 4}),
        _event("giulia", NOW - 30 * DAY, event="Survey Answered", properties={"kind": "csat", "score": 5}),
        _event("giulia", NOW - 6 * DAY, event="Registration Submitted"),
    ]  # fmt: skip
    marco = [
        {"type": "page", "userId": "marco", "name": "Home", "properties": {"path": "/"},
         "timestamp": (NOW - 100 * DAY).isoformat()},
    ]  # fmt: skip
    return giulia + marco


@pytest.fixture
def shop(server: LiveServer) -> LiveServer:
    # Applied first: an automation acts on what arrives after it is applied.
    save_automation(server.store, load_automation(REMINDER), "test")
    r = httpx.post(f"{server.url}/v1/batch", json={"batch": _history()}, auth=(server.write_key, ""))
    assert r.status_code == 200, r.text
    journey = load_journey(template_text("five-stages"))
    save_journey(server.store, journey, "test")
    update(server.store, journey)
    # The engine met the registration six days ago (a minute after it happened).
    engine = Engine(
        server.store, clock=ManualClock(NOW - 6 * DAY + timedelta(minutes=1)), settings=EngineSettings()
    )
    engine.run_until_idle()
    add_user(server.store, ADMIN[0], ADMIN[1], role="admin", name="Anna")
    return server


def _contact(site: LiveServer, user: str) -> int:
    with site.store.session() as s:
        return int(
            s.rows("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value = ?", [user])[0][0]
        )


def test_the_header_gives_each_figure_by_the_shared_definitions(shop: LiveServer) -> None:
    journey = get_journey(shop.store, "customer-journey")
    summary = customer_summary(shop.store, journey, _contact(shop, "giulia"), now=NOW)
    assert summary["name"] == "Giulia Colombo"
    # Two orders within 26 weeks enter Retention (the template's rule): 47 days ago, over 30 → stuck.
    stage = summary["stage"]
    assert (stage["key"], stage["name"], stage["since"]) == (
        "retention",
        "Retention & Advocacy",
        (NOW - 47 * DAY).isoformat().replace("+00:00", "Z"),
    )
    assert stage["seconds"] == 47 * 86_400 and stage["stuck"]
    assert [p["key"] for p in summary["personas"]] == ["loyal-customer"]  # three orders
    assert summary["orders"] == {
        "count": 3,
        "value": 250.0,
        "currency": "EUR",
        "last": (NOW - 45 * DAY).isoformat().replace("+00:00", "Z"),
        "events": ["Order Completed"],
    }
    assert summary["nps"]["score"] == 4 and summary["csat"]["score"] == 5
    flags = {f["kind"]: f for f in summary["flags"]}
    assert sorted(flags) == ["detractor", "stuck", "waiting"]
    waiting = flags["waiting"]
    assert (waiting["trigger"], waiting["goal"], waiting["automation"]) == (
        "Registration Submitted",
        "Registration Confirmed",
        "confirm",
    )
    assert waiting["seconds"] == pytest.approx(6 * 86_400 - 60)
    assert summary["upcoming"] == [
        {
            "automation": "confirm",
            "name": "Confirm your registration",
            "step": "pause",
            "status": "waiting",
            "due": (NOW + 4 * DAY + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            "action": {"id": "reminder", "kind": "email", "name": "Reminder"},
        }
    ]

    marco = customer_summary(shop.store, journey, _contact(shop, "marco"), now=NOW)
    assert marco["name"] is None and marco["orders"]["count"] == 0 and marco["orders"]["value"] == 0
    assert [p["key"] for p in marco["personas"]] == ["first-time-visitor"]
    assert [f["kind"] for f in marco["flags"]] == ["stuck", "inactive"]
    assert marco["upcoming"] == [] and marco["nps"] is None


def test_reaching_the_goal_clears_the_flag_and_what_comes_next(shop: LiveServer) -> None:
    r = httpx.post(
        f"{shop.url}/v1/track",
        json=_event("giulia", NOW - DAY, event="Registration Confirmed"),
        auth=(shop.write_key, ""),
    )
    assert r.status_code == 200, r.text
    Engine(
        shop.store, clock=ManualClock(NOW - DAY + timedelta(minutes=1)), settings=EngineSettings()
    ).run_until_idle()
    journey = get_journey(shop.store, "customer-journey")
    summary = customer_summary(shop.store, journey, _contact(shop, "giulia"), now=NOW)
    assert "waiting" not in [f["kind"] for f in summary["flags"]] and summary["upcoming"] == []


def test_the_page_shows_the_header_in_each_language_and_its_twin_holds_it(shop: LiveServer) -> None:
    giulia = _contact(shop, "giulia")
    client = signed_in(shop)
    twin = client.get(f"/contacts/{giulia}.json").json()
    summary = twin["summary"]
    assert summary["orders"]["count"] == 3 and summary["stage"]["key"] == "retention"
    english = client.get(f"/contacts/{giulia}").text
    client.cookies.set("percorso_lang", "it")
    italian = client.get(f"/contacts/{giulia}").text
    client.close()
    assert "Registration Submitted 6 days ago, not yet “Registration Confirmed”" in english
    assert "Stuck: in Retention &amp; Advocacy for 47 days (longer than 30 days)" in english
    assert "€250.00" in english and "Loyal customer" in english
    assert "Detractor: gave NPS 4 on" in english
    assert 'Reminder</strong> <span class="muted small">(e-mail)</span>' in english
    assert "Registration Submitted 6 giorni fa, non ancora “Registration Confirmed”" in italian
    assert "Bloccato: in Fidelizzazione e passaparola da 47 giorni (oltre 30 giorni)" in italian
    assert "250,00\xa0€" in italian and "Cliente fedele" in italian
    assert "Promemoria" in italian


def test_next_action_stops_where_a_condition_decides() -> None:
    branching = load_automation(
        """
key: b
name: B
trigger: {event: X}
steps:
  - {id: pause, wait: 1d}
  - {id: check, condition: {traits: {vip: true}}, then: gift, otherwise: exit}
  - {id: gift, email: {subject: Gift, text: Hi}}
"""
    )
    assert next_action(branching, "pause") is None
    assert next_action(branching, "gift") == {"id": "gift", "kind": "email", "name": "gift"}
    assert next_action(branching, "missing") is None
