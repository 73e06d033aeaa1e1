"""A crawler over the whole dashboard, on both stores, with the demo's data, its automations and a
survey: signed in as an admin in English and in Italian and as a viewer, it starts at the overview,
follows every same-site link and submits every GET form with its defaults. No page answers 4xx or
5xx (but those the role may not see, which must be 403), every page's JSON twin answers, and an
Italian page shows no message key and no English sentence from the catalogue, and a finding with
dates shows them. In Chromium, every page the admin reached loads without a script or console
error."""

from __future__ import annotations

import json
import re
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx
import pytest

from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine
from percorso.automation.store import save_automation
from percorso.demo.command import demo_journey
from percorso.demo.generator import DemoSpec
from percorso.demo.shop import NPS
from percorso.feedback.definition import load_survey
from percorso.feedback.store import save_survey
from percorso.web.dashboard.i18n import catalog
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer, load_demo_events
from tests.test_dashboard import signed_in

EXAMPLES = Path(__file__).parent.parent / "percorso" / "automation" / "examples"
ADMIN = ("ada@example.it", "correct horse battery")
VIEWER = ("vito@example.it", "viewer passphrase 1")
SKIP = ("/logout", "/static/", "/percorso.js", "/docs", "/u/", "/t/", "/s/")
PER_KIND = 1  # pages visited for each kind of page (path with its ids replaced, and query keys)


@pytest.fixture
def demo_site(server: LiveServer) -> LiveServer:
    load_demo_events(server.store, DemoSpec(contacts=300, seed=3))
    demo_journey(server.store)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        save_automation(server.store, load_automation(path.read_text(encoding="utf-8"), path.name), path.name)
    save_survey(server.store, load_survey(NPS, "demo shop"), "demo shop")
    with server.store.session() as s:
        contact = int(s.rows("SELECT min(contact_id) FROM identities WHERE kind = 'email'")[0][0])
    Engine(server.store).enroll("registration-reminder", contact)
    add_user(server.store, *ADMIN, role="admin", name="Ada")
    add_user(server.store, *VIEWER, role="viewer", name="Vito")
    return server


def kind_of(url: str) -> tuple[str, tuple[str, ...]]:
    parts = urlsplit(url)
    path = re.sub(r"/\d+(?=/|$)", "/{n}", parts.path)
    return path, tuple(sorted({k for k, _ in parse_qsl(parts.query)}))


class Page(HTMLParser):
    """The links, GET forms (with their default values) and visible text of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.forms: list[tuple[str, list[tuple[str, str]]]] = []
        self.text: list[str] = []
        self._form: tuple[str, list[tuple[str, str]]] | None = None
        self._select: tuple[str, list[str], list[str]] | None = None  # name, selected, all
        self._hidden = 0  # inside script or style

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        elif tag == "form":
            self._form = (a.get("action", ""), []) if a.get("method", "get").lower() == "get" else None
        elif tag == "input" and self._form is not None and a.get("name"):
            kind = a.get("type", "text")
            if kind not in ("checkbox", "radio", "submit", "button") or "checked" in a:
                self._form[1].append((a["name"], a.get("value", "")))
        elif tag == "select" and self._form is not None and a.get("name"):
            self._select = (a["name"], [], [])
        elif tag == "option" and self._select is not None:
            self._select[2].append(a.get("value", ""))
            if "selected" in a:
                self._select[1].append(a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden -= 1
        elif tag == "select" and self._select is not None and self._form is not None:
            name, chosen, options = self._select
            self._form[1].append((name, (chosen or options or [""])[0]))
            self._select = None
        elif tag == "form" and self._form is not None:
            self.forms.append(self._form)
            self._form = None

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def links(base: str, origin: str, text: str) -> list[str]:
    """Same-site links and GET forms (submitted with their defaults) of a page."""
    page = parse(text)
    found = [urljoin(base, href) for href in page.hrefs]
    for action, fields in page.forms:
        found.append(urljoin(base, action or base).split("?")[0] + "?" + urlencode(fields))
    out = []
    for url in found:
        url = url.split("#")[0]
        if url.startswith(origin) and not any(urlsplit(url).path.startswith(s) for s in SKIP):
            out.append(url)
    return out


def crawl(client: httpx.Client, origin: str) -> dict[str, httpx.Response]:
    seen: dict[str, httpx.Response] = {}
    per_kind: dict[tuple[str, tuple[str, ...]], int] = {}
    queue = deque([origin + "/"])
    while queue:
        url = queue.popleft()
        kind = kind_of(url)
        if url in seen or per_kind.get(kind, 0) >= PER_KIND:
            continue
        per_kind[kind] = per_kind.get(kind, 0) + 1
        answer = client.get(url)
        seen[url] = answer
        if answer.status_code == 200 and "text/html" in answer.headers.get("content-type", ""):
            queue.extend(links(url, origin, answer.text))
    return seen


def english_sentences() -> list[str]:
    """Catalogue texts that differ in Italian and read as English prose."""
    out = []
    for entry in catalog().values():
        en, it = entry.get("en", ""), entry.get("it", "")
        plain = re.sub(r"\{[^}]*\}", "", en).strip()
        if en != it and len(plain) >= 14 and " " in plain and "{" not in en:
            out.append(plain)
    return out


def visible_text(text: str) -> str:
    return " ".join(" ".join(parse(text).text).split())


def test_every_page_answers_and_speaks_the_language(demo_site: LiveServer, chromium: Any) -> None:
    pages = {}
    for who, lang in ((ADMIN, "en"), (ADMIN, "it"), (VIEWER, "en")):
        pages[who, lang] = check_site(demo_site, who, lang)
    # In Chromium, every page the admin reached (one of each kind) runs its scripts without error.
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.goto(demo_site.url + "/login")
    page.fill("input[name=email]", ADMIN[0])
    page.fill("input[name=password]", ADMIN[1])
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    visited = 0
    for url, answer in pages[ADMIN, "en"].items():
        downloaded = "attachment" in answer.headers.get("content-disposition", "")
        if (
            answer.status_code == 200
            and "text/html" in answer.headers.get("content-type", "")
            and not downloaded
        ):
            page.goto(url, wait_until="load")  # scripts run; charts draw from the JSON in the page
            visited += 1
    context.close()
    assert errors == [], errors
    assert visited >= 20


def check_site(demo_site: LiveServer, who: tuple[str, str], lang: str) -> dict[str, httpx.Response]:
    client = signed_in(demo_site, who)
    client.cookies.set("percorso_lang", lang)
    try:
        pages = crawl(client, demo_site.url)
        failed = {
            url: r.status_code
            for url, r in pages.items()
            if r.status_code >= 400 and not (who == VIEWER and r.status_code == 403)
        }
        assert failed == {}, failed
        assert len(pages) >= 25, sorted(pages)
        keys = set(catalog())
        english = english_sentences()
        problems: dict[str, list[str]] = {}
        for url, r in pages.items():
            if r.status_code != 200 or "text/html" not in r.headers.get("content-type", ""):
                continue
            text = visible_text(r.text)
            for when in re.findall(r"data-when>([^<]*)<", r.text):  # a dated finding shows its dates
                assert re.search(r"\d{4}", when), (url, when)
            # One date style per language: dates read "7 Dec 2026" / "7 dic 2026", never 07/12/2026.
            numeric = re.findall(r"\b\d{1,2}/\d{1,2}/\d{2,4}\b", text)
            assert not numeric, (url, numeric)
            shown_keys = [k for k in re.findall(r"\b[a-z_]+(?:\.[a-z_]+)+\b", text) if k in keys]
            found = shown_keys + ([s for s in english if s in text] if lang == "it" else [])
            if found:
                problems[url] = found
        assert problems == {}, problems
        from percorso import __version__

        # Money in the journey's currency, written as the language writes it.
        revenue = re.search(r'data-kpi-name="(?:Revenue|Fatturato)"[^>]*>([^<]*)<', client.get("/map").text)
        assert revenue is not None
        assert re.fullmatch(r"€[\d,]+\.\d\d" if lang == "en" else r"[\d.]+,\d\d\s€", revenue.group(1)), (
            revenue.group(1)
        )
        # The map's actions are said as people say them, not "page: Home".
        actions = " ".join(
            re.findall(r'<span class="name" title="[^"]*">([^<]*)</span>', client.get("/map").text)
        )
        assert "page: " not in actions and "identify:" not in actions
        assert ("Ha visto “" if lang == "it" else "Viewed “") in actions, actions
        # One number everywhere: the map's checkout KPI is the Funnels page's checkout conversion.
        stages = client.get("/map.json").json()["map"]["stages"]
        kpi = next(k for st in stages for k in st["kpis"] if k["metric"] == "funnel")
        total = client.get("/funnels.json", params={"funnel": "checkout"}).json()["result"]["total"]
        assert kpi["value"] == round(total["converted"] / total["entered"], 4), (kpi, total)
        # A name the demo prints finds its contact.
        with demo_site.store.session() as s:
            named = s.rows(
                "SELECT contact_id, CAST(traits AS TEXT) FROM contacts WHERE merged_into IS NULL "
                "AND CAST(traits AS TEXT) LIKE '%lastName%' ORDER BY contact_id LIMIT 1"
            )[0]
        traits = json.loads(named[1])
        found = client.get(
            "/contacts.json", params={"q": f"{traits['firstName']} {traits['lastName']}"}
        ).json()
        assert int(named[0]) in {c["id"] for c in found["contacts"]}, found
        # Recent activity: the contacts active last, one row each, nothing from the future.
        recent = client.get("/index.json").json()["recent_activity"]
        assert len(recent) == 12 and len({r["contact_id"] for r in recent}) == 12, recent
        assert [r["timestamp"] for r in recent] == sorted((r["timestamp"] for r in recent), reverse=True)
        reminder = pages.get(f"{demo_site.url}/automations/registration-reminder")
        assert reminder is not None and reminder.status_code == 200
        # The footer names the app's version, not the automation's; a holdout step is not "no holdout".
        assert f"percorso {__version__}" in visible_text(reminder.text)
        assert "data-holdout-waiting" in reminder.text or "data-uplift" in reminder.text
        return pages
    finally:
        client.close()
