"""Journeys that follow accounts (B2B, Segment `group` calls) on both engines: an account's stage
moves when any of its people acts, incremental updates equal a rebuild, the overview and the map
count accounts, personas read account traits, and erasure leaves no trace of the person."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pypdf import PdfReader

from percorso.analytics.funnel import FunnelError, FunnelSpec, parse_step
from percorso.analytics.journeymap import journey_map
from percorso.analytics.personas import persona_sizes
from percorso.analytics.stages import (
    StageError,
    account_stages,
    rebuild,
    save_journey,
    stage_overview,
    stuck_contacts,
    update,
)
from percorso.automation.definition import load_automation
from percorso.automation.triggers import reference_problems
from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.journey import load_journey, template_text
from percorso.store import Store
from percorso.store.contacts import erase_contact, find_contact
from percorso.web.dashboard.export import map_pdf, map_svg
from percorso.web.dashboard.i18n import Translator

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
D = timedelta(days=1)


class Feed:
    def __init__(self, store: Store):
        self.store = store
        self.n = 0

    def send(self, *messages: dict[str, Any]) -> None:
        report = load_messages(
            self.store, enumerate(messages), classifier=ChannelClassifier(load_rules()), limits=Limits()
        )
        assert report.rejected == []

    def track(self, who: str, at: datetime, event: str, **extra: Any) -> dict[str, Any]:
        self.n += 1
        return {"type": "track", "messageId": f"b-{self.n}", "userId": who, "timestamp": at.isoformat(),
                "event": event, **extra}  # fmt: skip

    def group(self, who: str, at: datetime, account: str, **traits: Any) -> dict[str, Any]:
        self.n += 1
        return {"type": "group", "messageId": f"b-{self.n}", "userId": who, "groupId": account,
                "timestamp": at.isoformat(), "traits": traits}  # fmt: skip


def history(store: Store, journey, account: str) -> list[tuple[str, datetime]]:
    return [(e["stage"], e["entered_at"].astimezone(UTC)) for e in account_stages(store, journey, account)]


def table(store: Store) -> list[tuple[Any, ...]]:
    with store.session() as s:
        return s.rows(
            "SELECT account_id, seq, stage, stage_index, entered_at, left_at, message_id, channel "
            "FROM account_stage_entries WHERE journey_key = 'b2b' ORDER BY account_id, seq"
        )


@pytest.fixture
def b2b(store: Store):
    journey = load_journey(template_text("b2b"))
    save_journey(store, journey, "test")
    feed = Feed(store)
    feed.send(
        feed.group("alice", T, "acme", company_size="1-10", name="Acme"),  # awareness (a group call)
        feed.group("bob", T + D, "acme"),
        feed.group("carol", T, "globex", company_size="1000+"),
        # interest needs two of these within 8 weeks: one each from two people of the account
        feed.track("alice", T + 2 * D, "Pricing Viewed"),
        feed.track("bob", T + 3 * D, "Demo Requested"),
        # bob, consulting for globex, names it: the event counts for globex only
        feed.track("bob", T + 4 * D, "Trial Started", groupId="globex"),
        feed.track("dave", T + 4 * D, "Trial Started"),  # in no account: no account moves
    )
    return store, journey, feed


def test_an_account_moves_when_any_of_its_people_acts(b2b):
    store, journey, feed = b2b
    first = update(store, journey)
    assert (first.mode, first.subject, first.contacts) == ("rebuild", "account", 2)
    assert history(store, journey, "acme") == [("awareness", T), ("interest", T + 3 * D)]
    assert history(store, journey, "globex") == [("awareness", T), ("evaluation", T + 4 * D)]
    # nothing is written as contacts' history
    with store.session() as s:
        assert s.rows("SELECT count(*) FROM stage_entries WHERE journey_key = 'b2b'")[0][0] == 0

    # later events, some from a person who joins acme only now (their earlier event counts too)
    feed.send(
        feed.track("erin", T + 5 * D, "Demo Attended"),
        feed.group("erin", T + 6 * D, "acme"),
        feed.track("carol", T + 7 * D, "Quote Sent"),
    )
    second = update(store, journey)
    assert second.mode == "incremental"
    assert [s for s, _ in history(store, journey, "acme")] == ["awareness", "interest", "evaluation"]
    assert history(store, journey, "acme")[-1][1] == T + 5 * D
    assert [s for s, _ in history(store, journey, "globex")][-1] == "proposal"
    incremental = table(store)
    rebuild(store, journey)
    assert table(store) == incremental


def test_overview_map_and_personas_count_accounts(b2b):
    store, journey, _ = b2b
    update(store, journey)
    end = T + 30 * D
    overview = stage_overview(store, journey, since=T - D, until=end)
    now = {s["stage"]: s["current_contacts"] for s in overview["stages"]}
    assert overview["subject"] == "account"
    assert (now["interest"], now["evaluation"], now["awareness"]) == (1, 1, 0)
    assert "accounts" in overview["notes"]

    full = journey_map(store, journey, start=T - D, end=end, refresh=False, with_pain_points=False)
    assert full["subject"] == "account"
    by_stage = {s["stage"]: s for s in full["stages"]}
    # acme's awareness stage holds the events of both its people before interest
    actions = {a["action"]: a["events"] for a in by_stage["awareness"]["top_actions"]}
    assert actions.get("Pricing Viewed") == 1
    # bob's Trial Started names globex: it is globex's, not acme's
    assert "Trial Started" not in {a["action"] for a in by_stage["interest"]["top_actions"]}
    assert {a["action"] for a in by_stage["evaluation"]["top_actions"]} == {"Trial Started"}

    # personas read the account's traits (its latest group call)
    sizes = {p["persona"]: p["contacts"] for p in persona_sizes(store, journey, as_of=end)}
    assert sizes == {"smb": 1, "enterprise": 1}
    smb = journey_map(
        store, journey, persona="smb", start=T - D, end=end, refresh=False, with_pain_points=False
    )
    counts = {s["stage"]: s["contacts"]["now"] for s in smb["stages"]}
    assert (counts["interest"], counts["evaluation"]) == (1, 0)

    stuck = stuck_contacts(store, journey, "interest", timedelta(days=7), as_of=end)
    assert [r["account_id"] for r in stuck] == ["acme"]

    # the printable map says what it counts, in both languages
    svg = map_svg(full, Translator("en"))
    assert "Accounts: 1" in svg and "Contacts" not in svg
    pdf = PdfReader(io.BytesIO(map_pdf(full, Translator("it"))))
    assert "account entrati" in "".join(page.extract_text() for page in pdf.pages)


def test_what_an_account_journey_refuses(b2b):
    store, journey, _ = b2b
    update(store, journey)
    with pytest.raises(FunnelError, match="describe accounts"):
        FunnelSpec(
            steps=[parse_step("Pricing Viewed"), parse_step("Demo Requested")],
            start=T,
            end=T + 30 * D,
            breakdown="persona",
            journey=journey,
        ).check()
    automation = load_automation(
        "key: nudge\nname: Nudge\ntrigger: {stage: {journey: b2b, stage: proposal}}\nsteps:\n  - {id: mark, tag: x}\n",
        "nudge.yaml",
    )
    problems = reference_problems(store, automation)
    assert [p.field for p in problems] == ["trigger.stage.journey"]
    assert "follows accounts" in problems[0].message
    with pytest.raises(StageError, match="follows contacts"):
        account_stages(store, load_journey(template_text("five-stages")), "acme")


def test_erasing_a_person_removes_what_their_events_did_for_the_account(b2b):
    store, journey, _ = b2b
    update(store, journey)
    assert [s for s, _ in history(store, journey, "acme")] == ["awareness", "interest"]
    erase_contact(store, find_contact(store, "user_id", "bob"))
    with store.session() as s:
        left = s.rows(
            "SELECT count(*) FROM account_stage_entries a JOIN events e ON e.message_id = a.message_id"
        )
        assert s.rows("SELECT count(*) FROM account_stage_entries")[0][0] == left[0][0]
    report = update(store, journey)
    assert report.mode == "rebuild"
    # without bob's demo request acme has one interest signal: back to awareness; globex loses
    # bob's trial
    assert history(store, journey, "acme") == [("awareness", T)]
    assert [s for s, _ in history(store, journey, "globex")] == ["awareness"]
