"""From a pain point to an automation, in the dashboard alone and in Italian: the contacts lost at a
checkout step become a segment, the segment's banner offers to reach them, the form (no YAML)
starts an automation that the engine runs on its schedule, sending real e-mail (aiosmtpd) to the
segment's members who gave consent, with the holdout and the goal the form set. Both stores."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from percorso.automation.engine import Engine, EngineSettings, ManualClock
from percorso.automation.stats import automation_stats
from percorso.automation.store import automation_document, get_automation
from percorso.demo.command import demo_journey
from percorso.demo.generator import DemoSpec
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer, load_demo_events
from tests.test_automation import smtp  # noqa: F401  (the aiosmtpd fixture)
from tests.test_dashboard import EDITOR, csrf_of, signed_in

VIEWER = ("vera@example.it", "a viewer's passphrase")
ROME = ZoneInfo("Europe/Rome")


def _italian(site: LiveServer, who: tuple[str, str]) -> httpx.Client:
    client = signed_in(site, who)
    client.cookies.set("percorso_lang", "it")
    return client


def test_a_segment_lost_at_checkout_is_reached_from_the_dashboard(server: LiveServer, smtp: Any) -> None:  # noqa: F811
    inbox, smtp_settings = smtp
    store = server.store
    load_demo_events(store, DemoSpec(contacts=400, seed=5))
    demo_journey(store)
    add_user(store, EDITOR[0], EDITOR[1], role="editor")
    add_user(store, VIEWER[0], VIEWER[1], role="viewer")
    client = _italian(server, EDITOR)
    # The pain point's contacts: those lost after adding to cart, saved as a segment.
    query = "funnel=checkout&dropped=1"
    r = client.post(
        "/funnels/segment", data={"name": "Persi al carrello", "query": query, "csrf_token": csrf_of(client)}
    )
    assert r.status_code == 303
    banner = client.get(r.headers["location"]).text
    assert 'href="/segments/persi-al-carrello/reach"' in banner and "avvia un'automazione" in html.unescape(
        banner
    )
    form = client.get("/segments/persi-al-carrello/reach")
    assert form.status_code == 200 and "Raggiungi “Persi al carrello”" in html.unescape(form.text)
    twin = client.get("/segments/persi-al-carrello/reach.json").json()
    members = twin["segment"]["members"]
    assert members > 20 and twin["form"]["goal"] == "Order Completed"  # the funnel's last step

    token = csrf_of(client)
    bad = client.post(
        "/segments/persi-al-carrello/reach",
        data={"csrf_token": token, "name": "Carrello", "channel": "email", "subject": "", "message": "",
              "hour": "10", "holdout": "10", "goal": "Order Complted"},
    )  # fmt: skip
    assert bad.status_code == 422
    text = html.unescape(bad.text)
    assert "un'e-mail ha bisogno di un oggetto" in text and "scrivi il messaggio" in text
    assert (
        "non è ancora arrivato nessun evento “Order Complted”" in text
        and "Forse intendevi “Order Completed”?" in text
    )
    assert get_automation_keys(store) == []  # nothing started

    good = client.post(
        "/segments/persi-al-carrello/reach",
        data={"csrf_token": token, "name": "Carrello dimenticato", "channel": "email",
              "subject": "Hai dimenticato qualcosa?", "message": "Ciao {{ traits.firstName }}, il carrello ti aspetta.",
              "hour": "10", "holdout": "10", "goal": "Order Completed"},
    )  # fmt: skip
    assert (
        good.status_code == 303 and good.headers["location"] == "/automations/carrello-dimenticato?started=1"
    )
    page = html.unescape(client.get(good.headers["location"]).text)
    assert 'data-notice="started"' in page
    automation, version, status = get_automation(store, "carrello-dimenticato")
    assert (status, automation.goal.event if automation.goal else None) == ("active", "Order Completed")
    assert automation.audience is not None and automation.audience.segments == ["persi-al-carrello"]
    written = automation_document(store, "carrello-dimenticato", version)
    assert written is not None and written.startswith("# Started from the dashboard by " + EDITOR[0])
    assert written in page  # the editor shows the document as written, comments and all
    client.close()

    viewer = _italian(server, VIEWER)
    assert viewer.get("/segments/persi-al-carrello/reach").status_code == 403
    assert 'id="reach-segment"' not in viewer.get("/map?segment=persi-al-carrello").text
    viewer.close()

    # The engine arms the schedule, then at the next 10:00 in Rome enrolls the segment's members.
    now = datetime.now(UTC)
    clock = ManualClock(now)
    engine = Engine(
        store, clock=clock, smtp=smtp_settings, settings=EngineSettings(base_url="http://percorso.test")
    )
    engine.run_until_idle()
    local = now.astimezone(ROME)
    ten = local.replace(hour=10, minute=0, second=0, microsecond=0)
    ten = ten if ten > local else ten + timedelta(days=1)
    clock.advance(seconds=(ten.astimezone(UTC) - now).total_seconds() + 60)
    engine.run_until_idle()
    stats = automation_stats(store, "carrello-dimenticato")
    assert stats["totals"]["enrolled"] == members
    held = stats["steps"][0]["outcomes"].get("holdout", 0)
    assert 0 < held < members / 4
    sent = [m for m in inbox.messages if m["Subject"] == "Hai dimenticato qualcosa?"]
    assert sent and len(sent) <= members - held
    body = sent[0].get_body(("plain",)).get_content()
    assert "il carrello ti aspetta" in body and "{{" not in body
    assert re.search(r"Per disiscriverti: http://percorso\.test/u/\S+", body)
    assert str(sent[0]["List-Unsubscribe"]).strip().startswith("<http://percorso.test/u/")


def get_automation_keys(store: Any) -> list[str]:
    with store.session() as s:
        return [str(r[0]) for r in s.rows("SELECT automation_key FROM automations")]
