"""Contacts, automations and settings pages over real HTTP, on both engines: each page and its JSON
twin show the same numbers; roles, CSRF and sign-in guard every change; erasure, pause and a new
automation version really happen; attacker-controlled text comes out escaped."""

from __future__ import annotations

import html as htmllib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from msgspec import to_builtins as msgspec_builtins

from percorso.analytics.screenshots import save_screenshot
from percorso.analytics.stages import save_journey, update
from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine, ManualClock
from percorso.automation.graph import edge_count, layers, step_graph
from percorso.automation.store import get_automation, save_automation
from percorso.events import Limits, parse_message
from percorso.feedback.definition import load_survey
from percorso.feedback.store import save_survey
from percorso.journey import load_journey
from percorso.store import Store
from percorso.web.dashboard.contacts import merge_timeline, touchpoint_kind
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_heatmaps import png

# One person per role, created (Argon2 is slow on purpose) only by the tests that sign them in.
ADMIN = ("ada@example.it", "admin passphrase 1", "admin")
EDITOR = ("edo@example.it", "editor passphrase 2", "editor")
VIEWER = ("vera@example.it", "viewer passphrase 3", "viewer")
SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(1)>'
NOW = datetime.now(UTC).replace(microsecond=0)

JOURNEY = """\
version: 1
key: shop
name: Shop
stages:
  - key: aware
    name: {en: Aware, it: Consapevole}
    enter: {any: [{type: page}]}
  - key: consider
    name: {en: Consider, it: Valuta}
    enter: {any: [{event: Product Viewed}]}
  - key: buy
    name: {en: Buy, it: Acquista}
    enter: {any: [{event: Order Completed}]}
"""

WELCOME = """\
key: welcome
name: {en: Welcome, it: Benvenuto}
trigger: {event: Signed Up}
goal: {event: Order Completed}
steps:
  - id: browsed
    condition:
      behaviour:
        - {did: {event: Product Viewed}, at_least: 1, within: 30d}
    then: tag
    otherwise: nudge
  - {id: nudge, onsite: {title: Hello, body: Have a look around}}
  - {id: tag, tag: welcomed}
"""


def send(store: Store, classifier: Any, user: str, kind: str, at: datetime, **fields: Any) -> None:
    message = {"type": kind, "userId": user, "messageId": str(uuid.uuid4()), "timestamp": at.isoformat()}
    event = parse_message(
        json.dumps({**message, **fields}).encode(),
        received_at=datetime.now(UTC),
        classifier=classifier,
        limits=Limits(),
    )
    store.ingest([event])


def contact_of(store: Store, user: str) -> int:
    with store.session() as s:
        return int(
            s.rows("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value = ?", [user])[0][0]
        )


@pytest.fixture
def site(server: LiveServer, classifier: Any) -> LiveServer:
    store = server.store
    save_automation(store, load_automation(WELCOME), "test")  # triggers on events stored after it
    start = NOW - timedelta(days=3)
    people = {
        "anna": {"email": "anna@example.it", "plan": "member", "firstName": "Anna"},
        "bruno": {"email": "bruno@example.it", "plan": "free"},
        "mallory": {"email": "mallory@example.it", "name": SCRIPT, "nickname": ATTR},
    }
    for i, (user, traits) in enumerate(people.items()):
        at = start + timedelta(hours=i)
        send(store, classifier, user, "identify", at, traits=traits)
        send(store, classifier, user, "page", at + timedelta(minutes=1), properties={"path": "/"})
        send(store, classifier, user, "track", at + timedelta(minutes=2), event="Signed Up")
    send(store, classifier, "anna", "track", start + timedelta(minutes=5), event="Product Viewed")
    send(
        store,
        classifier,
        "anna",
        "track",
        start + timedelta(hours=5),
        event="Survey Responded",
        properties={"survey": "nps", "score": 9},
        context={"channel": "survey"},
    )
    send(
        store,
        classifier,
        "mallory",
        "track",
        start + timedelta(hours=6),
        event=SCRIPT,
        properties={"note": ATTR},
    )
    # A survey whose answers carry an attacker's comment (the survey page lists comments).
    save_survey(store, load_survey(WELCOME_SURVEY), "test")
    send(
        store,
        classifier,
        "mallory",
        "track",
        start + timedelta(hours=7),
        event="Survey Answered",
        properties={"survey": "welcome", "kind": "nps", "score": 2, "comment": SCRIPT + ATTR},
    )
    save_journey(store, load_journey(JOURNEY), "test")
    update(store, load_journey(JOURNEY))
    # A saved segment named by an attacker (its pages: the map filter and the reach form).
    mallory = contact_of(store, "mallory")
    with store.writing() as s:
        s.execute(
            "INSERT INTO segments (segment_key, name, source, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
            ["welcome", SCRIPT, json.dumps({"funnel": {"steps": [ATTR]}}), "test", NOW],
        )
        s.execute(
            "INSERT INTO segment_members (segment_key, contact_id) VALUES (?, ?)",
            ["welcome", mallory],
        )
    # A screenshot beneath the home page's heatmap (the image route is walked too).
    save_screenshot(store, "/", "desktop", png(1200, 600), "test")
    Engine(store, clock=ManualClock(NOW)).run_until_idle()
    return server


WELCOME_SURVEY = """
key: welcome
name: Welcome
questions:
  - {id: score, kind: nps, text: "Recommend us?"}
  - {id: why, kind: open, text: "Why?"}
"""


def signed_in(site: LiveServer, who: tuple[str, str, str], *, create: bool = True) -> httpx.Client:
    if create:
        add_user(site.store, who[0], who[1], role=who[2])
    client = httpx.Client(base_url=site.url, timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token  # the sign-in form's token, bound to the pre-session cookie GET /login sets
    form = {"email": who[0], "password": who[1], "next": "/contacts", "csrf_token": token.group(1)}
    r = client.post("/login", data=form)
    assert r.status_code == 303, r.text
    return client


def csrf_of(client: httpx.Client, path: str = "/contacts") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)


def numbers(pattern: str, text: str) -> list[int]:
    return [int(v.replace(",", "")) for v in re.findall(pattern, text)]


# -- pure parts --------------------------------------------------------------------------------
def test_step_graph_layers_branches_and_counts() -> None:
    automation = load_automation(WELCOME)
    assert layers(automation) == {"browsed": 0, "nudge": 1, "tag": 2}  # tag waits for nudge
    stats = [
        {"id": "browsed", "entered": 4, "now": 0, "outcomes": {"then": 1, "otherwise": 3}},
        {"id": "nudge", "entered": 3, "now": 0, "outcomes": {"queued": 3}},
        {"id": "tag", "entered": 4, "now": 0, "outcomes": {"done": 4}},
    ]
    graph = step_graph(automation, stats)
    assert graph == step_graph(automation, stats)  # deterministic
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert [(nodes[k]["x"], nodes[k]["y"]) for k in ("browsed", "nudge", "tag")] == [
        (0.0, 0.0),
        (0.0, 110.0),
        (0.0, 220.0),
    ]
    assert nodes["exit:tag:next"]["layer"] == 3 and nodes["exit:tag:next"]["entered"] == 4
    edges = {(e["source"], e["target"]): (e["label"], e["count"], e["share"]) for e in graph["links"]}
    assert edges[("browsed", "tag")] == ("then", 1, 0.25)
    assert edges[("browsed", "nudge")] == ("otherwise", 3, 0.75)
    assert edges[("nudge", "tag")] == ("next", 3, 1.0)
    # A loop back through a wait is drawn, but does not push steps down; a split fans out.
    looping = load_automation(
        """
key: loop
name: Loop
trigger: {event: A}
steps:
  - {id: pick, split: [{name: a, percent: 50, next: left}, {name: b, percent: 50, next: right}]}
  - {id: left, wait: 1d, next: back}
  - {id: right, tag: r, next: left}
  - {id: back, wait: 2d, next: pick}
"""
    )
    assert layers(looping) == {"pick": 0, "left": 2, "right": 1, "back": 3}
    graph = step_graph(looping)
    row = sorted((n["x"], n["id"]) for n in graph["nodes"] if n["layer"] == 1)
    assert [x for x, _ in row] == [0.0]
    assert [e["loop"] for e in graph["links"] if e["source"] == "back"] == [True]
    assert edge_count("next", {"waiting": 5, "waited": 3, "goal": 1}) == 3
    assert edge_count("timed_out", {"waiting": 5, "then": 2, "timed_out": 3}) == 3


def test_timeline_kinds_and_merge_window() -> None:
    assert touchpoint_kind({"type": "page", "channel": "web"}) == "visit"
    assert touchpoint_kind({"type": "track", "channel": "store", "event": "Store Visited"}) == "store"
    assert touchpoint_kind({"type": "track", "channel": "call-center", "event": "Call Completed"}) == "call"
    assert touchpoint_kind({"type": "track", "channel": "email", "event": "Email Opened"}) == "email"
    assert touchpoint_kind({"type": "track", "channel": "survey", "event": "Survey Responded"}) == "survey"
    events = [
        {
            "timestamp": "2026-01-03T10:00:00Z",
            "type": "track",
            "event": "B",
            "messageId": "b",
            "channel": "web",
        },
        {
            "timestamp": "2026-01-02T10:00:00Z",
            "type": "track",
            "event": "A",
            "messageId": "a",
            "channel": "web",
        },
    ]

    def step(at: str) -> dict[str, Any]:
        return {
            "automation": "w",
            "enrollment": 1,
            "at": at,
            "step": "s",
            "outcome": "queued",
            "detail": None,
            "variant": None,
        }

    steps = [
        step("2026-01-01T00:00:00+00:00"),
        step("2026-01-02T10:00:00+00:00"),
        step("2026-01-04T00:00:00+00:00"),
    ]
    # First page of two: the steps from the oldest event shown onwards, newest first.
    first = merge_timeline(events, steps, newer_than=datetime(2026, 1, 2, 10, tzinfo=UTC), before=None)
    assert [(i["source"], i["at"][:10]) for i in first] == [
        ("automation", "2026-01-04"),
        ("touchpoint", "2026-01-03"),
        ("automation", "2026-01-02"),
        ("touchpoint", "2026-01-02"),
    ]
    later = merge_timeline([], steps, newer_than=None, before=datetime(2026, 1, 2, 10, tzinfo=UTC))
    assert [i["at"][:10] for i in later] == ["2026-01-01"]  # every step shown exactly once
    # Steps logged in one instant read newest first too; a wait says until when.
    burst = [
        {**step("2026-01-05T09:00:00+00:00"), "step": "trigger", "outcome": "entered"},
        {
            **step("2026-01-05T09:00:00+00:00"),
            "step": "pause",
            "outcome": "waiting",
            "detail": "2026-01-06T09:00:00+00:00",
        },
    ]
    merged = merge_timeline([], burst, newer_than=None, before=None)
    assert [(i["step"], i["until"]) for i in merged] == [("pause", "2026-01-06T09:00:00Z"), ("trigger", None)]


# -- contacts ----------------------------------------------------------------------------------
def test_contacts_list_and_profile_match_their_json_twins(site: LiveServer) -> None:
    client = signed_in(site, VIEWER)
    page = client.get("/contacts")
    twin = client.get("/contacts.json").json()
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert len(twin["contacts"]) == 3
    assert numbers(r'<tr data-contact="(\d+)">', page.text) == [c["id"] for c in twin["contacts"]]
    assert numbers(r"<td class=\"num\" data-events>([\d,]+)</td>", page.text) == [
        c["events"] for c in twin["contacts"]
    ]
    # Filters as the REST API has them; a cursor walks the pages.
    members = client.get("/contacts.json", params={"trait": "plan=member"}).json()["contacts"]
    assert [c["email"] for c in members] == ["anna@example.it"]
    assert client.get("/contacts.json", params={"trait.plan": "free"}).json()["contacts"][0]["email"] == (
        "bruno@example.it"
    )
    assert [c["email"] for c in client.get("/contacts.json", params={"q": "brun"}).json()["contacts"]] == [
        "bruno@example.it"
    ]
    bruno = contact_of(site.store, "bruno")
    assert [c["id"] for c in client.get("/contacts.json", params={"q": f"#{bruno}"}).json()["contacts"]] == [
        bruno
    ]
    first = client.get("/contacts", params={"limit": 2})
    link = re.search(r'href="(/contacts\?[^"]+)" class="button" id="next-page"', first.text)
    assert link
    rest = client.get(htmllib.unescape(link.group(1)))
    seen = numbers(r'<tr data-contact="(\d+)">', first.text) + numbers(
        r'<tr data-contact="(\d+)">', rest.text
    )
    assert seen == [c["id"] for c in twin["contacts"]]
    bad = client.get("/contacts", params={"trait": "no-equals-sign"})
    assert bad.status_code == 400 and "name=value" in bad.text

    anna = contact_of(site.store, "anna")
    page = client.get(f"/contacts/{anna}")
    data = client.get(f"/contacts/{anna}.json").json()
    assert page.status_code == 200
    assert data["contact"]["id"] == anna and data["contact"]["events"] == 5
    assert f'<dd data-fact="events">{data["contact"]["events"]}</dd>' in page.text
    assert [i["kind"] for i in data["contact"]["identifiers"]] == ["user_id", "email"]
    assert [e["stage"] for e in data["stages"]["entries"]] == ["aware", "consider"]
    assert re.findall(r'<li data-stage="(\w+)">', page.text) == ["aware", "consider"]
    # The timeline mixes touchpoints and the automation's steps, visibly marked.
    kinds = re.findall(r'data-kind="(\w+)"', page.text)
    assert kinds == [i["kind"] for i in data["timeline"]]
    assert {"visit", "survey", "profile", "action", "automation"} <= set(kinds)
    steps = [(i["step"], i["outcome"]) for i in data["timeline"] if i["source"] == "automation"]
    assert ("browsed", "then") in steps and ("tag", "done") in steps
    assert '<li class="automation" data-kind="automation" data-automation="welcome"' in page.text
    # Viewers see no export or erase buttons.
    assert "/export" not in page.text and "erase-form" not in page.text

    for path in ("/contacts/987654321", "/contacts/abc", "/contacts/0"):
        missing = client.get(path)
        assert missing.status_code == 404 and "there is no contact" in missing.text
        assert "<footer>" in missing.text  # a page, not a bare error
    assert client.get("/contacts/987654321.json").json()["code"] == "invalid_request"


def test_attacker_text_is_escaped_everywhere(site: LiveServer) -> None:
    client = signed_in(site, ADMIN)
    mallory = contact_of(site.store, "mallory")
    pages = [client.get(f"/contacts/{mallory}").text, client.get("/contacts").text]
    for text in pages:
        assert SCRIPT not in text and "<img" not in text and "onerror=alert(1)>" not in text
    profile, listing = pages
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in profile  # the name trait and the event name
    assert '<span class="what">&lt;script&gt;alert(1)&lt;/script&gt;</span>' in profile  # timeline
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in profile  # trait and event property
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in listing
    # The JSON twin keeps the text as it arrived (it is data, not markup).
    assert client.get(f"/contacts/{mallory}.json").json()["contact"]["traits"]["nickname"] == ATTR


def test_admin_exports_and_erases_a_contact(site: LiveServer) -> None:
    store = site.store
    bruno = contact_of(store, "bruno")
    client = signed_in(site, ADMIN)
    page = client.get(f"/contacts/{bruno}").text
    assert f'href="/contacts/{bruno}/export"' in page and 'data-confirm="Erase contact' in page
    export = client.get(f"/contacts/{bruno}/export")
    assert export.status_code == 200
    assert export.headers["content-disposition"] == f'attachment; filename="percorso-contact-{bruno}.json"'
    assert export.json()["contact"]["traits"]["plan"] == "free" and len(export.json()["events"]) == 3

    token = csrf_of(client)
    refused = client.post(f"/contacts/{bruno}/erase", data={"csrf_token": token, "confirm": "12"})
    assert refused.status_code == 400 and "type its id" in refused.text
    assert store.counts()["contacts"] == 3
    done = client.post(f"/contacts/{bruno}/erase", data={"csrf_token": token, "confirm": str(bruno)})
    assert done.status_code == 303 and done.headers["location"] == f"/contacts?erased={bruno}"
    listing = client.get(done.headers["location"])
    assert f"Contact #{bruno} has been erased" in listing.text
    assert f'data-contact="{bruno}"' not in listing.text
    assert client.get(f"/contacts/{bruno}").status_code == 404
    with store.session() as s:
        assert s.rows("SELECT count(*) FROM identities WHERE value = 'bruno'")[0][0] == 0
        assert s.rows("SELECT count(*) FROM events WHERE user_id = 'bruno'")[0][0] == 0
    assert store.counts()["contacts"] == 2


def test_roles_csrf_and_sign_in_guard_every_change(site: LiveServer) -> None:
    store = site.store
    anna = contact_of(store, "anna")
    anonymous = httpx.Client(base_url=site.url)
    r = anonymous.get("/contacts?q=anna")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/contacts%3Fq%3Danna"
    for path in ("/contacts.json", f"/contacts/{anna}.json", "/automations.json", "/settings.json"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.post(f"/contacts/{anna}/erase", data={"confirm": str(anna)}).status_code == 401
    assert anonymous.post("/automations/welcome/pause").status_code == 401

    keys_before = len(store.api_keys())
    viewer = signed_in(site, VIEWER)
    token = csrf_of(viewer)
    for method, path, form in (
        ("post", "/automations/welcome/pause", {}),
        ("post", f"/contacts/{anna}/erase", {"confirm": str(anna)}),
        ("post", "/settings/keys", {"kind": "secret", "name": "sneaky"}),
        ("post", "/automations/welcome/definition", {"definition": WELCOME}),
        ("get", f"/contacts/{anna}/export", None),
        ("get", "/settings", None),
    ):
        r = viewer.request(method, path, data={**form, "csrf_token": token} if form is not None else None)
        assert r.status_code == 403, path
        assert "Not allowed" in r.text
    assert viewer.get("/settings.json").json()["code"] == "forbidden"
    editor = signed_in(site, EDITOR)
    assert editor.get("/settings").status_code == 403
    editor_token = csrf_of(editor)
    assert (
        editor.post(
            f"/contacts/{anna}/erase", data={"csrf_token": editor_token, "confirm": str(anna)}
        ).status_code
        == 403
    )
    # Without the session's CSRF token even an admin changes nothing.
    admin = signed_in(site, ADMIN)
    assert admin.post("/automations/welcome/pause").status_code == 403
    assert admin.post("/automations/welcome/pause", data={"csrf_token": "forged"}).status_code == 403
    assert admin.post(f"/contacts/{anna}/erase", data={"confirm": str(anna)}).status_code == 403
    assert admin.post("/settings/keys", data={"kind": "write", "name": "x"}).status_code == 403
    assert get_automation(store, "welcome")[2] == "active"
    assert store.counts()["contacts"] == 3 and len(store.api_keys()) == keys_before


# -- automations -------------------------------------------------------------------------------
def test_automation_pages_graph_stats_and_pause(site: LiveServer) -> None:
    store = site.store
    viewer = signed_in(site, VIEWER)
    listing = viewer.get("/automations")
    rows = viewer.get("/automations.json").json()["automations"]
    assert listing.status_code == 200 and [a["key"] for a in rows] == ["welcome"]
    assert rows[0]["name"] == "Welcome" and rows[0]["enrolled"] == 3
    assert numbers(r"<td class=\"num\" data-enrolled>([\d,]+)</td>", listing.text) == [3]
    assert "/automations/welcome/pause" not in listing.text  # viewers get no buttons

    page = viewer.get("/automations/welcome")
    data = viewer.get("/automations/welcome.json").json()
    assert page.status_code == 200 and data["status"] == "active" and data["version"] == 1
    steps = {s["id"]: s for s in data["steps"]}
    # Anna had browsed; Bruno and Mallory had not and got the on-site nudge; all three were tagged.
    assert {k: s["entered"] for k, s in steps.items()} == {"browsed": 3, "nudge": 2, "tag": 3}
    assert steps["browsed"]["outcomes"] == {"then": 1, "otherwise": 2}
    shown = dict(
        zip(
            re.findall(r'<tr data-step="([\w-]+)">', page.text),
            numbers(r"data-entered>([\d,]+)</td>", page.text),
            strict=True,
        )
    )
    assert shown == {k: s["entered"] for k, s in steps.items()}
    assert (
        f'data-metric="enrolled"><span class="label">Enrolled</span><span class="value">{data["totals"]["enrolled"]}<'
        in page.text
    )
    # The graph the browser draws is exactly the twin's, laid out by the server.
    block = re.search(r'<script type="application/json" id="chart-flow">(.*?)</script>', page.text, re.S)
    assert block and json.loads(block.group(1)) == data["graph"]
    edges = {(e["source"], e["target"]): e for e in data["graph"]["links"]}
    assert edges[("browsed", "nudge")]["count"] == 2 and edges[("browsed", "nudge")]["text"] == "no: 2 (67%)"
    assert [n["y"] for n in data["graph"]["nodes"] if n["id"] in ("browsed", "nudge", "tag")] == [
        0.0,
        110.0,
        220.0,
    ]
    assert "<textarea rows=" in page.text and "readonly" in page.text and "definition-form" not in page.text

    editor = signed_in(site, EDITOR)
    token = csrf_of(editor, "/automations/welcome")
    r = editor.post("/automations/welcome/pause", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"] == "/automations/welcome?paused=1"
    assert get_automation(store, "welcome")[2] == "paused"
    assert 'data-status="paused"' in editor.get(r.headers["location"]).text
    assert viewer.get("/automations.json").json()["automations"][0]["status"] == "paused"
    r = editor.post("/automations/welcome/resume", data={"csrf_token": token, "back": "list"})
    assert r.status_code == 303 and r.headers["location"] == "/automations"
    assert get_automation(store, "welcome")[2] == "active"
    for path in ("/automations/nope", "/automations/Not_A-Key!"):
        missing = viewer.get(path)
        assert missing.status_code == 404 and "there is no automation" in missing.text
    assert editor.post("/automations/nope/pause", data={"csrf_token": token}).status_code == 404


def test_definition_editor_shows_problems_by_line_and_saves_a_new_version(site: LiveServer) -> None:
    store = site.store
    editor = signed_in(site, EDITOR)
    token = csrf_of(editor, "/automations/welcome")
    shown = re.search(
        r'<textarea name="definition"[^>]*>\n(.*?)</textarea>', editor.get("/automations/welcome").text, re.S
    )
    assert shown  # the stored definition as YAML, which saves back as the very same version
    same = editor.post(
        "/automations/welcome/definition",
        data={"csrf_token": token, "definition": htmllib.unescape(shown.group(1))},
    )
    assert (
        same.status_code == 303 and same.headers["location"] == "/automations/welcome?unchanged=1#definition"
    )
    # An unknown step type on line 13: reported with its line, and the text comes back as sent.
    broken = WELCOME.replace("{id: tag, tag: welcomed}", "{id: tag, tagg: welcomed}") + f"# {SCRIPT}\n"
    r = editor.post("/automations/welcome/definition", data={"csrf_token": token, "definition": broken})
    assert r.status_code == 422
    assert re.search(
        r'<li data-line="13" data-field="steps\[2\]\.tagg"><a href="#definition" class="line">line 13</a>',
        r.text,
    )
    assert "unknown step type" in r.text and "did you mean tag?" in r.text
    assert '<span class="bad" data-line="13">13</span>' in r.text
    kept = re.search(r'<textarea name="definition"[^>]*>\n(.*?)</textarea>', r.text, re.S)
    assert kept and htmllib.unescape(kept.group(1)) == broken and SCRIPT not in r.text
    # YAML that does not parse, and a document for another key.
    r = editor.post(
        "/automations/welcome/definition",
        data={"csrf_token": token, "definition": "key: welcome\nsteps: [\n"},
    )
    assert r.status_code == 422 and "not valid YAML" in r.text
    r = editor.post(
        "/automations/welcome/definition",
        data={"csrf_token": token, "definition": WELCOME.replace("key: welcome", "key: other")},
    )
    assert r.status_code == 422 and '<li data-line="1" data-field="key">' in r.text
    assert get_automation(store, "welcome")[1] == 1  # nothing saved

    changed = WELCOME.replace("tag: welcomed", "tag: greeted").replace("\n", "\r\n")
    r = editor.post("/automations/welcome/definition", data={"csrf_token": token, "definition": changed})
    assert r.status_code == 303 and r.headers["location"] == "/automations/welcome?saved=2#definition"
    automation, version, _ = get_automation(store, "welcome")
    assert version == 2 and automation.step("tag").tag == "greeted"
    page = editor.get("/automations/welcome?saved=2")
    assert "Saved as version 2" in page.text and "tag: greeted" in page.text
    r = editor.post("/automations/welcome/definition", data={"csrf_token": token, "definition": changed})
    assert r.headers["location"] == "/automations/welcome?unchanged=1#definition"


COMMENTED = """\
# Welcome new members; the holdout measures what the message adds.
key: commented
name: Commented
trigger: {event: Signed Up}
steps:
  - id: control
    holdout: 10          # a tenth get nothing
  - {id: tag, tag: welcomed}
"""


def test_the_editor_keeps_the_document_as_written(site: LiveServer) -> None:
    """Comments and numbers as the author wrote them, whether applied over the API or saved in
    the editor; a comment-only edit is kept without a new version."""
    editor = signed_in(site, EDITOR)
    api = site.client()
    assert api.put("/v1/automations/commented", content=COMMENTED).status_code == 200

    def shown() -> str:
        found = re.search(
            r'<textarea name="definition"[^>]*>\n(.*?)</textarea>',
            editor.get("/automations/commented").text,
            re.S,
        )
        assert found
        return htmllib.unescape(found.group(1))

    assert shown() == COMMENTED
    token = csrf_of(editor, "/automations/commented")
    recommented = COMMENTED.replace("# a tenth get nothing", "# 10%: the control group")
    r = editor.post(
        "/automations/commented/definition", data={"csrf_token": token, "definition": recommented}
    )
    assert r.headers["location"] == "/automations/commented?unchanged=1#definition"
    assert shown() == recommented and get_automation(site.store, "commented")[1] == 1
    # Sent as JSON there is no YAML to keep: the editor writes one, with 10 as 10 (not 10.0).
    as_json = json.dumps(msgspec_builtins(load_automation(COMMENTED.replace("commented", "plain"))))
    assert api.put("/v1/automations/plain", content=as_json).status_code == 200
    found = re.search(
        r'<textarea name="definition"[^>]*>\n(.*?)</textarea>', editor.get("/automations/plain").text, re.S
    )
    assert found and "holdout: 10\n" in htmllib.unescape(found.group(1))


# -- settings ----------------------------------------------------------------------------------
def test_settings_keys_and_users(site: LiveServer) -> None:
    store = site.store
    admin = signed_in(site, ADMIN)
    page = admin.get("/settings")
    twin = admin.get("/settings.json").json()
    assert page.status_code == 200
    assert re.findall(r'<tr data-key="([\w]+)"', page.text) == [k["id"] for k in twin["keys"]]
    assert re.findall(r'<tr data-user="([^"]+)"', page.text) == [u["email"] for u in twin["users"]]
    token = csrf_of(admin, "/settings")

    created = admin.post("/settings/keys", data={"csrf_token": token, "kind": "secret", "name": "CRM sync"})
    secret = re.search(r"<pre class=\"secret\" data-secret>(sk_[\w-]+)</pre>", created.text)
    assert created.status_code == 200 and secret and created.headers["cache-control"] == "no-store"
    api = httpx.Client(base_url=site.url, auth=(secret.group(1), ""))
    assert api.get("/v1/contacts").status_code == 200
    assert secret.group(1) not in admin.get("/settings").text  # shown once only
    key_id = next(k.key_id for k in store.api_keys() if k.name == "CRM sync")
    r = admin.post(f"/settings/keys/{key_id}/revoke", data={"csrf_token": token})
    assert r.status_code == 303 and "The key is revoked." in admin.get(r.headers["location"]).text
    assert api.get("/v1/contacts").status_code == 401
    assert admin.post(f"/settings/keys/{key_id}/revoke", data={"csrf_token": token}).status_code == 404
    assert (
        admin.post("/settings/keys", data={"csrf_token": token, "kind": "root", "name": "x"}).status_code
        == 400
    )

    weak = {
        "csrf_token": token,
        "email": "nina@example.it",
        "name": "Nina",
        "password": "short",
        "role": "editor",
    }
    r = admin.post("/settings/users", data=weak)
    assert r.status_code == 400 and 'data-error-field="password"' in r.text
    assert 'value="nina@example.it"' in r.text and 'value="short"' not in r.text
    r = admin.post("/settings/users", data={**weak, "password": "a proper passphrase"})
    assert r.status_code == 303
    assert {u["email"]: u["role"] for u in admin.get("/settings.json").json()["users"]}[
        "nina@example.it"
    ] == "editor"
    r = admin.post(
        "/settings/users/role", data={"csrf_token": token, "email": "nina@example.it", "role": "admin"}
    )
    assert r.status_code == 303
    assert {u["email"]: u["role"] for u in admin.get("/settings.json").json()["users"]}[
        "nina@example.it"
    ] == "admin"
    assert (
        admin.post(
            "/settings/users/role", data={"csrf_token": token, "email": ADMIN[0], "role": "viewer"}
        ).status_code
        == 409
    )
    assert (
        admin.post("/settings/users/remove", data={"csrf_token": token, "email": ADMIN[0]}).status_code == 409
    )
    nina = signed_in(site, ("nina@example.it", "a proper passphrase", "admin"), create=False)
    r = admin.post("/settings/users/remove", data={"csrf_token": token, "email": "nina@example.it"})
    assert r.status_code == 303
    assert "nina@example.it" not in admin.get("/settings").text
    assert nina.get("/contacts").status_code == 303  # her session ended with her account
