"""The dashboard over real HTTP on both engines: sign-in and sessions, the overview, the journey map
and its JSON twin, exports, funnels and paths, bad input answered with a readable page, and the
English/Italian catalogue. (Browser behaviour is in test_dashboard_browser.py.)"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from pypdf import PdfReader

from percorso.demo.command import demo_journey
from percorso.demo.generator import DemoSpec
from percorso.web.dashboard.i18n import Translator, catalog, negotiate
from percorso.web.dashboard.users import UserError, add_user, sign_in
from tests.conftest import LiveServer, load_demo_events

ADMIN = ("anna@example.it", "a long enough secret")
EDITOR = ("enzo@example.it", "another long secret")
TEMPLATES = Path(__file__).parent.parent / "percorso" / "web" / "templates"


@pytest.fixture
def site(server: LiveServer) -> LiveServer:
    load_demo_events(server.store, DemoSpec(contacts=400, seed=5))
    demo_journey(server.store)
    add_user(server.store, ADMIN[0], ADMIN[1], role="admin", name="Anna")
    add_user(server.store, EDITOR[0], EDITOR[1], role="editor")
    return server


def login_token(client: httpx.Client) -> str:
    """The sign-in form's token (GET /login also sets the pre-session cookie it must match)."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert match
    return match.group(1)


def signed_in(site: LiveServer, who: tuple[str, str] = ADMIN) -> httpx.Client:
    client = httpx.Client(base_url=site.url, timeout=60)
    form = {"email": who[0], "password": who[1], "next": "/", "csrf_token": login_token(client)}
    r = client.post("/login", data=form)
    for _ in range(3):
        # 503 with Retry-After is the sign-in's answer to a machine too busy (every hashing slot
        # taken, or no database connection free in time): a person retries, and so does a test.
        if r.status_code != 503:
            break
        time.sleep(float(r.headers.get("retry-after", "1")))
        r = client.post("/login", data=form)
    assert r.status_code == 303 and r.headers["location"] == "/", (r.status_code, r.text[:300])
    return client


def csrf_of(client: httpx.Client) -> str:
    html = client.get("/").text
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def test_catalogue_has_both_languages_for_every_key_the_templates_use() -> None:
    messages = catalog()
    missing = [k for k, v in messages.items() if not v.get("en") or not v.get("it")]
    assert missing == []
    used = set()
    for path in TEMPLATES.glob("*.html"):
        found = re.findall(r"""t\(['"]([a-z0-9_.]+)['"]""", path.read_text())
        used |= {k for k in found if not k.endswith((".", "_"))}  # prefixes of computed keys
    assert sorted(used - set(messages)) == []
    it = Translator("it")
    assert it.num(1234567) == "1.234.567"
    assert it.pct(0.125) == "12,5%"
    assert Translator("en").num(1234567) == "1,234,567"
    assert negotiate("it-IT,it;q=0.9,en;q=0.8") == "it"
    assert negotiate("de-DE,en;q=0.5,it;q=0.4") == "en"
    assert negotiate(None) == "en"


def test_users_and_passwords(store) -> None:  # type: ignore[no-untyped-def]
    add_user(store, "Mara@Example.it", "twelve chars!", role="editor")
    with pytest.raises(UserError, match="already exists"):
        add_user(store, "mara@example.it", "twelve chars!")
    with pytest.raises(UserError, match="at least 10 characters"):
        add_user(store, "short@example.it", "short")
    with pytest.raises(UserError, match="role must be one of viewer, editor, admin"):
        add_user(store, "r@example.it", "twelve chars!", role="owner")
    assert sign_in(store, "mara@example.it", "wrong password") is None
    assert sign_in(store, "nobody@example.it", "twelve chars!") is None
    found = sign_in(store, "MARA@example.it", "twelve chars!")
    assert found is not None and found[1].user.role == "editor"
    with store.session() as s:
        stored = s.rows("SELECT password_hash FROM users")[0][0]
        tokens = s.rows("SELECT token_hash FROM web_sessions")
    assert stored.startswith("$argon2id$") and "twelve" not in stored
    assert tokens[0][0] != found[0]  # only the token's hash is kept


def test_sign_in_sessions_and_csrf(site: LiveServer) -> None:
    anonymous = httpx.Client(base_url=site.url)
    r = anonymous.get("/map?persona=loyal-customer")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/map%3Fpersona%3Dloyal-customer"
    assert anonymous.get("/map.json").status_code == 401
    assert anonymous.post("/map/notes", data={"journey": "x", "stage": "y", "text": "z"}).status_code == 401
    token = login_token(anonymous)
    bad = anonymous.post(
        "/login", data={"email": ADMIN[0], "password": "nope nope nope", "csrf_token": token}
    )
    assert bad.status_code == 401 and "Wrong e-mail or password." in bad.text
    # No open redirect after sign-in.
    r = anonymous.post(
        "/login",
        data={"email": ADMIN[0], "password": ADMIN[1], "next": "//evil.example/x", "csrf_token": token},
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie

    client = signed_in(site, EDITOR)
    page = client.get("/map")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    form = {"journey": "customer-journey", "stage": "decision", "text": "Call the checkout team"}
    assert client.post("/map/notes", data=form).status_code == 403  # no CSRF token
    assert client.post("/map/notes", data={**form, "csrf_token": "forged"}).status_code == 403
    r = client.post("/map/notes", data={**form, "csrf_token": csrf_of(client)})
    assert r.status_code == 303
    twin = client.get("/map.json").json()
    assert [n["text"] for n in twin["map"]["notes_by_stage"]["decision"]] == ["Call the checkout team"]
    assert "Call the checkout team" in client.get("/map").text

    client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert client.get("/map").status_code == 303


def test_map_page_shows_the_same_numbers_as_its_json_twin(site: LiveServer) -> None:
    client = signed_in(site)
    html = client.get("/map?persona=loyal-customer").text
    twin = client.get("/map.json?persona=loyal-customer").json()
    stages = twin["map"]["stages"]
    assert [s["stage"] for s in stages] == ["awareness", "consideration", "decision", "purchase", "retention"]
    shown = [
        int(v.replace(",", "")) for v in re.findall(r"<span class=\"big\" data-entered>([\d,]+)</span>", html)
    ]
    assert shown == [s["contacts"]["entered"] for s in stages]
    assert twin["map"]["persona"]["key"] == "loyal-customer"
    everyone = client.get("/map.json").json()["map"]["stages"]
    assert stages[0]["contacts"]["entered"] < everyone[0]["contacts"]["entered"]
    # Italian page, same numbers.
    client.cookies.set("percorso_lang", "it")
    html_it = client.get("/map?persona=loyal-customer").text
    assert "Mappa del percorso" in html_it and "Consapevolezza" in html_it
    first = f"{stages[0]['contacts']['entered']:,}".replace(",", ".")
    assert f"data-entered>{first}</span>" in html_it
    # Actions as people say them, the event's own name in the tooltip.
    actions = [a for s in stages for a in s["top_actions"]]
    viewed = next(a for a in actions if a["action"] == "Product Viewed")
    assert viewed["name"] == "Viewed a product"
    assert '<span class="name" title="Product Viewed">Ha visto un prodotto</span>' in html_it


def test_overview_tiles_match_the_store(site: LiveServer) -> None:
    client = signed_in(site)
    data = client.get("/index.json").json()
    counts = site.store.counts()
    assert data["contacts"] == counts["contacts"] and data["events"] == counts["events"]
    assert sum(s["contacts"] for s in data["stage_distribution"]) > 0
    assert len(data["recent_activity"]) == 12
    html = client.get("/").text
    assert f"{counts['events']:,}" in html


def test_channel_filter_compare_and_exports(site: LiveServer) -> None:
    client = signed_in(site)
    store_only = client.get("/map.json?channel=store").json()["map"]["stages"]
    everyone = client.get("/map.json").json()["map"]["stages"]
    assert 0 < store_only[0]["contacts"]["entered"] < everyone[0]["contacts"]["entered"]
    compared = client.get(
        "/map.json?from=2026-01-01&to=2026-12-31&compare_from=2025-01-01&compare_to=2025-06-30"
    ).json()
    assert set(compared["deltas"]) == {s["stage"] for s in compared["map"]["stages"]}

    svg = client.get("/map/export.svg?persona=shop-first")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert 'attachment; filename="customer-journey-shop-first-' in svg.headers["content-disposition"]
    root = ElementTree.fromstring(svg.text)  # well-formed XML
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "1. Awareness" in texts and "Retention & Advocacy" in " ".join(t or "" for t in texts)

    rows = list(csv.DictReader(io.StringIO(client.get("/map/export.csv").text)))
    assert [r["stage"] for r in rows] == [s["stage"] for s in everyone]
    assert [int(r["entered"]) for r in rows] == [s["contacts"]["entered"] for s in everyone]

    # The drawing holds what the page holds: every pain point (ranked), every KPI, the opportunities.
    full = client.get("/map/export.svg?from=2026-01-01&to=2026-12-31")
    assert full.headers["content-disposition"].endswith(
        '-2026-01-01-2026-12-31.svg"'
    )  # the last day, as asked
    page_map = client.get("/map.json?from=2026-01-01&to=2026-12-31").json()["map"]
    drawn = " ".join(
        t.text or "" for t in ElementTree.fromstring(full.text).iter("{http://www.w3.org/2000/svg}text")
    )
    pains = sorted(
        p["rank"]
        for p in [
            *page_map["unplaced_pain_points"],
            *(p for s in page_map["stages"] for p in s["pain_points"]),
        ]
    )
    assert pains and all(f"#{rank} " in drawn for rank in pains)
    for stage in page_map["stages"]:
        for kpi in stage["kpis"]:
            assert f"{kpi['name']}: " in drawn, kpi["name"]
    assert "OPPORTUNITIES" in drawn
    # The emotion line joins only neighbouring stages that have feedback.
    silent = [s["index"] for s in page_map["stages"] if s["emotion"]["score"] is None]
    for line in ElementTree.fromstring(full.text).iter("{http://www.w3.org/2000/svg}polyline"):
        xs = [float(p.split(",")[0]) for p in line.get("points", "").split()]
        columns = {int((x - 150) // 230) + 1 for x in xs}
        assert columns == set(range(min(columns), max(columns) + 1)) and not columns & set(silent)

    pdf = client.get("/map/export.pdf?from=2026-01-01&to=2026-12-31")
    assert pdf.content.startswith(b"%PDF-")
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Awareness" in text and "Customer actions" in text
    listed = text.rsplit("Pain points", 1)[1]  # the list after the lanes
    ranks = [int(n) for n in re.findall(r"^#(\d+) ", listed, re.M)]
    assert ranks == sorted(ranks) and len(ranks) == len(pains), text[-2000:]
    assert "→" not in text or "->" not in text  # typographic text, not ASCII stand-ins

    standalone = client.get("/map/export.html").text
    assert "<script" not in standalone and "<svg" in standalone and "Journey map" in standalone


BAD_INPUT = [
    ("/map?from=2026-13-01", "from", "is not a date; write it as YYYY-MM-DD"),
    ("/map?from=2026-06-01&to=2026-01-01", "from", "starts (2026-06-01) after it ends (2026-01-01)"),
    ("/map?persona=astronaut", "persona", "the journey has no persona 'astronaut'"),
    ("/map?journey=nope", "journey", "nope"),
    ("/map?segment=ghosts", "segment", "there is no saved segment 'ghosts'"),
    ("/funnels?step=A&step=B&window=forever", "window", "'forever' is not a duration"),
    ("/funnels?step=A&step=B&order=sideways", "order", "'sideways' is not one of ordered, strict, any"),
    ("/funnels?step=A&step=B&dropped=7", "dropped", "not a step that has a next step"),
    ("/funnels?funnel=unknown", "funnel", "there is no funnel 'unknown'"),
    ("/paths?max_steps=99", "max_steps", "not a whole number from 2 to 10"),
    ("/paths?session_gap=soon", "session_gap", "'soon' is not a duration"),
]


def test_bad_input_gets_a_page_that_names_the_problem(site: LiveServer) -> None:
    """Each case on one demo site (loading it is most of the time), each failure naming its case."""
    client = signed_in(site)
    for path, field, message in BAD_INPUT:
        page = client.get(path)
        assert page.status_code in (400, 404), (path, page.text[:300])
        assert message.replace("'", "&#39;") in page.text, path
        assert f'data-error-field="{field}"' in page.text, path
        base, _, query = path.partition("?")
        twin = client.get(f"{base}.json?{query}")
        assert twin.status_code == page.status_code, path
        assert twin.json()["field"] == field and message in twin.json()["message"], path


def test_funnel_page_and_twin(site: LiveServer) -> None:
    client = signed_in(site)
    twin = client.get("/funnels.json?funnel=checkout&breakdown=platform&dropped=1").json()
    total = twin["result"]["total"]
    assert twin["form"]["steps"] == [
        "Product Added",
        "Checkout Started",
        "Payment Info Entered",
        "Order Completed",
    ]
    assert total["entered"] >= total["converted"] > 0
    assert len(twin["dropped"]["contacts"]) == twin["dropped"]["total"] == total["steps"][0]["dropped"]
    # The demo runs to today: its last weeks' windows are open, shown apart (dashed) from the
    # weeks whose conversion is final, not as a fall.
    month = "step=Product+Viewed&step=Order+Completed&window=30d"
    trend = client.get(f"/funnels.json?{month}").json()["result"]["trend"]
    assert trend[0]["complete"] and not trend[-1]["complete"]
    assert all(w["complete"] == (w["closed"] == w["entered"]) for w in trend)
    checkout = client.get(f"/funnels?{month}").text
    chart = json.loads(re.search(r'id="chart-trend">(.*?)</script>', checkout, re.S).group(1))  # type: ignore[union-attr]
    assert chart["values"][-1] is None and chart["provisional"][-1] == trend[-1]["conversion"]
    assert chart["values"][0] == trend[0]["conversion"] and "data-trend-open" in checkout
    # The funnel chart's bars never pass the first step: each is what reached it plus, faint,
    # what the step before lost on the way.
    funnel_chart = json.loads(re.search(r'id="chart-funnel">(.*?)</script>', checkout, re.S).group(1))  # type: ignore[union-attr]
    reached = funnel_chart["converted"]
    assert [a + b for a, b in zip(reached, funnel_chart["lost"], strict=True)][1:] == reached[:-1]
    assert funnel_chart["lost"][0] == 0 and max(reached) == reached[0]
    # A long drop-off list is paged: every contact the step table counts is listed, once.
    query = "step=Product+Viewed&step=Order+Completed&dropped=1"
    long = client.get(f"/funnels.json?{query}").json()
    lost = long["result"]["total"]["steps"][0]["dropped"]
    assert long["dropped"]["total"] == lost > 100
    assert len(long["dropped"]["contacts"]) == 100 and long["dropped"]["pages"] == -(-lost // 100)
    listed = []
    for number in range(1, long["dropped"]["pages"] + 1):
        listed += [
            c["contact_id"]
            for c in client.get(f"/funnels.json?{query}&page={number}").json()["dropped"]["contacts"]
        ]
    assert len(listed) == len(set(listed)) == lost
    beyond = client.get(f"/funnels?{query}&page={long['dropped']['pages'] + 1}")
    assert beyond.status_code == 400 and "is not a page of this list" in beyond.text
    second = client.get(f"/funnels?{query}&page=2").text
    assert f'data-dropped-total="{lost}"' in second and "101–200 of" in second and 'rel="prev"' in second
    assert {g["group"] for g in twin["result"]["breakdown"]["groups"]} <= {"web", "ios", "android", "other"}
    html = client.get("/funnels?funnel=checkout&breakdown=platform&dropped=1").text
    assert f">{total['entered']:,}<" in html
    paths = client.get("/paths.json?max_steps=4&top=20").json()
    assert paths["paths"]["nodes"] and 0 < len(paths["paths"]["links"]) <= 20
    # The table is the chart's links, so it follows the filter: only paths from a product view.
    viewed = client.get("/paths.json?from_step=Product+Viewed").json()
    assert viewed["steps"] and {r["source"] for r in viewed["steps"] if r["step"] == 1} == {"Product Viewed"}
    client.cookies.set("percorso_lang", "it")
    italian = client.get("/paths?from_step=Product+Viewed").text
    client.cookies.delete("percorso_lang")
    table = italian[italian.index('id="path-steps"') :]
    assert "<td>(fine)</td>" in table and "(end)" not in table


@pytest.fixture
def empty_site(server: LiveServer) -> Iterator[LiveServer]:
    add_user(server.store, ADMIN[0], ADMIN[1], role="admin")
    yield server


def test_empty_store_explains_how_to_start(empty_site: LiveServer) -> None:
    client = signed_in(empty_site)
    page = client.get("/")
    assert page.status_code == 200
    assert "No journey yet" in page.text and "percorso init --template" in page.text
    assert "No events have arrived yet" in page.text
    r = client.get("/map")
    assert r.status_code == 404 and "no journey is defined yet" in r.text


def test_result_cache_computes_once_and_serves_stale_while_recomputing() -> None:
    import threading
    import time

    from percorso.web.dashboard.cache import ResultCache

    cache = ResultCache(ttl=0.3)
    calls: list[int] = []
    release = threading.Event()

    def slow() -> int:
        calls.append(1)
        release.wait(5)
        return len(calls)

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("k", slow).value)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join()
    assert calls == [1] and results == [1, 1, 1, 1]  # four askers, one computation

    time.sleep(0.35)  # past the ttl: the old value comes back at once, a new one is on its way
    release.clear()
    # While the new computation is stuck (release unset), the asker still gets the old value:
    # it does not wait for the computation, however long that takes.
    stale: list[int] = []
    asker = threading.Thread(target=lambda: stale.append(cache.get("k", slow).value))
    asker.start()
    asker.join(timeout=4)  # a computation that waited would hold it until release.wait(5) ends
    assert not asker.is_alive() and stale == [1] and not release.is_set()
    release.set()
    deadline = time.monotonic() + 5
    while cache.get("k", slow).value != 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(calls) == 2
    assert cache.get("k", slow, refresh=True).value == 3  # refresh computes now

    off = ResultCache(ttl=0)  # PERCORSO_DASHBOARD_CACHE_SECONDS=0: every request computes
    counter = iter(range(100))
    assert [off.get("x", lambda: next(counter)).value for _ in range(3)] == [0, 1, 2]


def test_contacts_lost_at_a_step_become_an_automation_audience(site: LiveServer) -> None:
    from datetime import UTC, datetime

    from percorso.analytics.personas import rule_sql
    from percorso.journey.definition import PersonaRule

    client = signed_in(site, EDITOR)
    query = "funnel=checkout&dropped=1"
    dropped = client.get(f"/funnels.json?{query}").json()["dropped"]["contacts"]
    assert dropped
    r = client.post(
        "/funnels/segment", data={"name": "Lost after cart", "query": query, "csrf_token": csrf_of(client)}
    )
    assert r.status_code == 303 and r.headers["location"] == "/map?segment=lost-after-cart"
    page = client.get("/map?segment=lost-after-cart").text
    assert 'href="/segments/lost-after-cart/reach"' in page  # reaching them needs no YAML
    with site.store.session() as s:
        sql = rule_sql(s, PersonaRule(segments=["lost-after-cart"]), datetime.now(UTC))
        members = {r[0] for r in s.rows(sql.text, sql.params)}
        both = rule_sql(
            s, PersonaRule(segments=["lost-after-cart"], traits={"plan": "gold"}), datetime.now(UTC)
        )
        narrowed = s.rows(both.text, both.params)
    assert members == {c["contact_id"] for c in dropped}
    assert narrowed == []  # rules combine: no demo contact has plan=gold
    empty = client.post("/funnels/segment", data={"name": " ", "query": query, "csrf_token": csrf_of(client)})
    assert empty.status_code == 400 and "give the segment a name" in empty.text


def test_rules_can_ask_for_the_current_stage(site: LiveServer) -> None:
    """`stage:` in a persona rule, an audience or an automation condition: the contact's stage now."""
    from datetime import UTC, datetime

    from percorso.analytics.personas import rule_sql
    from percorso.automation.definition import load_automation
    from percorso.journey.definition import InStage, PersonaRule

    now = datetime.now(UTC)
    with site.store.session() as s:
        expected = {
            stage: {
                r[0]
                for r in s.rows(
                    "SELECT contact_id FROM stage_entries WHERE journey_key = 'customer-journey' AND stage = ? "
                    "AND left_at IS NULL",
                    [stage],
                )
            }
            for stage in ("decision", "purchase")
        }
        one = rule_sql(s, PersonaRule(stage=InStage(journey="customer-journey", stage="decision")), now)
        two = rule_sql(
            s, PersonaRule(stage=InStage(journey="customer-journey", stage=["decision", "purchase"])), now
        )
        got_one = {r[0] for r in s.rows(one.text, one.params)}
        got_two = {r[0] for r in s.rows(two.text, two.params)}
    assert expected["decision"] and expected["purchase"]
    assert got_one == expected["decision"]
    assert got_two == expected["decision"] | expected["purchase"]
    automation = load_automation(
        """
key: stuck-in-decision
name: Stuck in decision
trigger: {event: Product Viewed}
steps:
  - id: check
    condition: {stage: {journey: customer-journey, stage: decision}}
    then: exit
    otherwise: exit
""",
        "stuck.yaml",
    )
    assert automation.steps[0].condition is not None
