"""One bad item never holds the queue, on both stores with real SMTP: a contact whose data makes a
step fail is recorded as failed (stats, timeline) while the others' emails arrive in the same
pass; a contact poisoned with numbers outside the value domain still gets an email that lists
its events; suppressed sends show on the contact's timeline."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from percorso.automation.actions.email import SmtpSettings
from percorso.automation.definition import load_automation
from percorso.automation.engine import ManualClock
from percorso.automation.stats import automation_stats
from percorso.automation.store import save_automation
from percorso.events import parse_message
from percorso.store import Store
from percorso.store.contacts import contact_timeline
from tests.conftest import free_port
from tests.test_automation import LATE, MORNING, Inbox, contact_of, make_engine, person, send


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpSettings]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield (
        inbox,
        SmtpSettings(host="127.0.0.1", port=controller.port, sender="Casa Aurora <news@casa-aurora.example>"),
    )
    controller.stop()


RENEWAL = """
key: renewal
name: {en: Renewal reminder, it: Promemoria di rinnovo}
trigger: {event: Plan Chosen}
steps:
  - id: before
    wait_until: {trait: renews_at, before: 2d}
  - id: remind
    email:
      category: transactional
      subject: "{{ traits.firstName }}, your plan renews soon"
      text: "Renews on {{ traits.renews_at }}."
"""

RECENT = """
key: recent
name: {en: What you looked at, it: Cosa hai guardato}
trigger: {event: Cart Abandoned}
steps:
  - id: recap
    email:
      subject: "You looked at {{ events | length }} things"
      text: "{% for e in events %}{{ e.event }} {{ e.properties.price }}\n{% endfor %}"
"""


def test_a_failing_contact_fails_alone_and_the_others_are_served(
    store: Store, classifier: Any, smtp: Any
) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(RENEWAL), "test")
    engine = make_engine(store, smtp_settings, clock)
    # Two days before the end of the calendar is fine; two days before its start is not.
    person(store, classifier, "ada", renews_at="0001-01-01T10:00:00+00:00")
    person(store, classifier, "bea", renews_at="2026-11-24T10:00:00+00:00")
    for user in ("ada", "bea"):
        send(store, classifier, user, event="Plan Chosen")
    engine.run_until_idle()

    assert inbox.to("bea@example.it") == ["Bea, your plan renews soon"]
    assert inbox.to("ada@example.it") == []
    stats = automation_stats(store, "renewal")
    failures = stats["failures"]
    assert [(f["step"], f["count"]) for f in failures] == [("before", 1)]
    assert (
        "renews_at is '0001-01-01T10:00:00+00:00': 2d from it is outside the calendar" in failures[0]["error"]
    )
    with store.session() as s:
        statuses = dict(s.rows("SELECT contact_id, status FROM enrollments"))
    assert statuses[contact_of(store, "ada")] == "failed"
    assert statuses[contact_of(store, "bea")] == "done"

    timeline = contact_timeline(store, contact_of(store, "ada"))["events"]
    failed = [e for e in timeline if e.get("event") == "Automation Step Failed"]
    assert len(failed) == 1
    assert failed[0]["properties"]["automation"] == "renewal" and failed[0]["properties"]["step"] == "before"
    # Later passes do not retry it or send anything more.
    clock.advance(days=3)
    engine.run_until_idle()
    assert inbox.to("ada@example.it") == [] and len(inbox.messages) == 1


def test_a_poisoned_contact_and_a_healthy_one_both_get_their_email(
    store: Store, classifier: Any, smtp: Any
) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(RECENT), "test")
    engine = make_engine(store, smtp_settings, clock)
    for user in ("victim", "healthy"):
        person(store, classifier, user)
    # As stored before the value domain: the raw text, straight into the store.
    poisoned = parse_message(
        json.dumps(
            {"type": "track", "userId": "victim", "event": "Viewed", "messageId": str(uuid.uuid4())}
        ).encode(),
        received_at=datetime.now(UTC),
        classifier=classifier,
        limits=LATE,
    )
    poisoned.properties = '{"price": 1e999}'
    store.ingest([poisoned])
    send(store, classifier, "healthy", event="Viewed", properties={"price": 12})
    for user in ("victim", "healthy"):
        send(store, classifier, user, event="Cart Abandoned")
    engine.run_until_idle()

    assert inbox.to("healthy@example.it") == ["You looked at 3 things"]
    assert inbox.to("victim@example.it") == ["You looked at 3 things"]
    body = (
        next(m for m in inbox.messages if m["To"] == "victim@example.it").get_body(("plain",)).get_content()
    )
    assert "Viewed 1e999" in body or "Viewed 1" + "0" * 999 in body


def test_suppressed_sends_are_on_the_timeline(store: Store, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(RECENT), "test")
    engine = make_engine(store, smtp_settings, clock)
    person(store, classifier, "nora", consent=False)
    send(store, classifier, "nora", event="Cart Abandoned")
    engine.run_until_idle()
    assert inbox.to("nora@example.it") == []
    events = contact_timeline(store, contact_of(store, "nora"))["events"]
    suppressed = [e for e in events if e.get("event") == "Email Suppressed"]
    assert len(suppressed) == 1 and suppressed[0]["channel"] == "email"
    assert suppressed[0]["properties"]["reason"] == "marketing consent denied"
    assert suppressed[0]["properties"]["automation"] == "recent"
