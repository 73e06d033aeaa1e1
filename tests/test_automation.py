"""The automation engine end to end, on both engines: real SMTP (aiosmtpd), a real HTTP webhook
receiver, time driven by a manual clock so "two days later" runs in milliseconds."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import psycopg
import pytest
from aiosmtpd.controller import Controller

from percorso.automation.actions.email import SmtpSettings
from percorso.automation.actions.webhook import verify
from percorso.automation.definition import AutomationError, load_automation
from percorso.automation.engine import Engine, EngineSettings, ManualClock
from percorso.automation.stats import automation_stats, contact_automations
from percorso.automation.store import get_automation, save_automation, set_status
from percorso.events import Limits, parse_message
from percorso.store import Store
from tests.conftest import free_port

# 09:00 in Rome: outside the examples' quiet hours (21:00-08:00).
MORNING = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    def to(self, address: str) -> list[str]:
        with self.lock:
            return [str(m["Subject"]) for m in self.messages if str(m["To"]) == address]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpSettings]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, SmtpSettings(host="127.0.0.1", port=port, sender="Casa Aurora <news@casa-aurora.example>")
    controller.stop()


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


LATE = Limits(max_future_seconds=400 * 86400)  # events stamped with the simulated clock


def send(
    store: Store, classifier: Any, user: str, kind: str = "track", at: datetime | None = None, **fields: Any
) -> None:
    message = {"type": kind, "userId": user, "messageId": str(uuid.uuid4()), **fields}
    if at is not None:
        message["timestamp"] = at.isoformat()
    event = parse_message(
        json.dumps(message).encode(), received_at=datetime.now(UTC), classifier=classifier, limits=LATE
    )
    store.ingest([event])


def person(store: Store, classifier: Any, user: str, consent: bool = True, **traits: Any) -> None:
    base = {"email": f"{user}@example.it", "firstName": user.title(), "marketing_consent": consent}
    send(store, classifier, user, "identify", traits={**base, **traits})


def contact_of(store: Store, user: str) -> int:
    with store.session() as s:
        return int(
            s.rows("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value = ?", [user])[0][0]
        )


REMINDER = """
key: reminder
name: {en: Confirm your registration, it: Conferma la registrazione}
trigger: {event: Registration Submitted}
goal: {event: Registration Confirmed}
quiet_hours: {start: "21:00", end: "08:00"}
steps:
  - {id: pause, wait: 4h}
  - id: reminder
    email:
      category: transactional
      subject: "{{ traits.firstName }}, one click left"
      text: "Confirm your account, {{ traits.firstName }}."
  - id: confirmed
    wait_for: {event: {event: Registration Confirmed}, timeout: 2d, then: exit, timed_out: benefits}
  - id: benefits
    email:
      subject: "What your account gives you"
      text: "Members get free delivery. Unsubscribe: {{ unsubscribe_url }}"
      html: '<p>Hi {{ traits.firstName }}</p><p><a href="https://shop.example/confirm">Confirm</a></p>'
"""


NO_WAIT = REMINDER.replace("  - {id: pause, wait: 4h}\n", "")


def make_engine(store: Store, smtp: SmtpSettings, clock: ManualClock) -> Engine:
    # The webhook receiver listens on this machine: an admin's allow-list lets webhooks reach it.
    settings = EngineSettings(base_url="http://percorso.test", webhook_allow_networks=("127.0.0.1",))
    return Engine(store, clock=clock, smtp=smtp, settings=settings)


def test_registration_reminder_end_to_end(store: Store, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(REMINDER), "test")
    engine = make_engine(store, smtp_settings, clock)
    for user in ("anna", "bruno", "carla", "dario"):
        person(store, classifier, user)
        send(store, classifier, user, event="Registration Submitted")
    person(store, classifier, "dario", consent=False)
    engine.run_until_idle()
    send(store, classifier, "anna", event="Registration Confirmed")  # before the reminder: exits
    clock.advance(hours=1)
    engine.run_until_idle()
    assert inbox.messages == []

    clock.advance(hours=3, minutes=1)
    engine.run_until_idle()
    assert inbox.to("bruno@example.it") == ["Bruno, one click left"]
    assert inbox.to("carla@example.it") == ["Carla, one click left"]
    assert inbox.to("anna@example.it") == []
    # Transactional: sent without marketing consent, and without an unsubscribe header.
    assert inbox.to("dario@example.it") == ["Dario, one click left"]
    reminder = next(m for m in inbox.messages if m["To"] == "bruno@example.it")
    assert reminder["List-Unsubscribe"] is None

    send(store, classifier, "bruno", event="Registration Confirmed")
    engine.run_until_idle()
    clock.advance(days=2, minutes=1)
    engine.run_until_idle()
    assert inbox.to("bruno@example.it") == ["Bruno, one click left"]  # confirmed: no follow-up
    assert inbox.to("carla@example.it") == ["Carla, one click left", "What your account gives you"]
    assert len(inbox.to("dario@example.it")) == 1  # marketing follow-up suppressed: no consent
    benefits = next(m for m in inbox.messages if m["Subject"] == "What your account gives you")
    assert str(benefits["List-Unsubscribe"]).strip().startswith("<http://percorso.test/u/")
    html = benefits.get_body(("html",)).get_content()
    assert "http://percorso.test/t/c/" in html and "http://percorso.test/t/o/" in html

    stats = automation_stats(store, "reminder")
    assert stats["totals"]["enrolled"] == 4
    # Anna reached the goal while waiting 4 hours, Bruno while waiting for the confirmation.
    assert stats["totals"]["exited_by_goal"] == 2
    steps = {s["id"]: s for s in stats["steps"]}
    assert steps["pause"]["outcomes"] == {"waiting": 4, "goal": 1, "waited": 3}
    assert steps["reminder"]["actions"] == {"sent": 3}
    assert steps["confirmed"]["outcomes"] == {"waiting": 3, "goal": 1, "timed_out": 2}
    assert steps["benefits"]["outcomes"] == {"queued": 1, "suppressed": 1}
    # The contact's timeline says which automation touched them and why.
    story = contact_automations(store, contact_of(store, "dario"))
    assert ("benefits", "suppressed", "marketing consent denied") in [
        (r["step"], r["outcome"], r["detail"]) for r in story
    ]
    # Sent emails come back as touchpoints.
    with store.session() as s:
        sent = s.rows("SELECT count(*) FROM events WHERE event = 'Email Sent' AND channel = 'email'")[0][0]
    assert sent == 4


def test_replayed_events_and_restarts_send_nothing_twice(store: Store, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    automation = NO_WAIT
    save_automation(store, load_automation(automation), "test")
    person(store, classifier, "elena")
    send(store, classifier, "elena", event="Registration Submitted")
    make_engine(store, smtp_settings, clock).run_until_idle()
    # A new engine (a restart) re-reads the overlap window: the trigger enrolls nobody twice.
    with store.writing() as s:
        s.execute("UPDATE automation_cursor SET received_at = received_at - INTERVAL '1 hour'")
    make_engine(store, smtp_settings, clock).run_until_idle()
    assert inbox.to("elena@example.it") == ["Elena, one click left"]
    with store.session() as s:
        assert s.rows("SELECT count(*) FROM enrollments")[0][0] == 1


def test_quiet_hours_hold_until_morning_in_the_contacts_zone(
    store: Store, classifier: Any, smtp: Any
) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(datetime(2026, 11, 23, 22, 0, tzinfo=UTC))  # 23:00 in Rome
    doc = NO_WAIT
    save_automation(store, load_automation(doc), "test")
    person(store, classifier, "fabio")
    person(store, classifier, "grace", timezone="America/New_York")  # 17:00 there
    for user in ("fabio", "grace"):
        send(store, classifier, user, event="Registration Submitted")
    engine = make_engine(store, smtp_settings, clock)
    engine.run_until_idle()
    assert inbox.to("grace@example.it") == ["Grace, one click left"]
    assert inbox.to("fabio@example.it") == []
    clock.advance(hours=8, minutes=59)  # 07:59 in Rome
    engine.run_until_idle()
    assert inbox.to("fabio@example.it") == []
    clock.advance(minutes=2)
    engine.run_until_idle()
    assert inbox.to("fabio@example.it") == ["Fabio, one click left"]


MEMBERSHIP = """
key: membership
name: Membership explained
trigger: {page: /membership/terms*}
goal: {event: Membership Confirmed}
reentry: {cooldown: 30d}
caps:
  email: {max: 1, per: 1d}
steps:
  - id: hesitating
    condition:
      behaviour:
        - {did: {page: /membership/terms*}, at_least: 3, within: 7d}
        - {did: {event: Membership Confirmed}, at_least: 0, at_most: 0}
    then: explain
    otherwise: exit
  - id: explain
    email: {subject: "The Club in two minutes", text: "Free delivery. {{ unsubscribe_url }}"}
  - id: onsite
    onsite: {title: The Club, body: Free delivery, cta_url: /membership}
  - id: crm
    webhook: {url: "RECEIVER/crm", secret_env: PERCORSO_WEBHOOK_TEST_CRM_SECRET, data: {reason: terms}}
  - {id: tag, tag: membership-curious}
  - {id: mark, set_traits: {membership_explained: true}}
"""


def test_condition_webhook_onsite_tag_and_caps(
    store: Store, classifier: Any, smtp: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, smtp_settings = smtp
    monkeypatch.setenv("PERCORSO_WEBHOOK_TEST_CRM_SECRET", "s3cret")
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0) - timedelta(days=40))
    save_automation(store, load_automation(MEMBERSHIP.replace("RECEIVER", receiver.url)), "test")
    engine = make_engine(store, smtp_settings, clock)
    person(store, classifier, "ugo")
    person(store, classifier, "vera")
    for _ in range(3):
        send(store, classifier, "ugo", "page", clock.now(), properties={"path": "/membership/terms"})
    send(store, classifier, "vera", "page", clock.now(), properties={"path": "/membership/terms"})
    engine.run_until_idle()
    # Ugo's first two visits did not qualify (fewer than 3); the third did. Vera never did.
    assert inbox.to("ugo@example.it") == ["The Club in two minutes"]
    assert inbox.to("vera@example.it") == []
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert verify("s3cret", headers["x-percorso-signature"], body)
    payload = json.loads(body)
    assert payload["contact"]["email"] == "ugo@example.it" and payload["data"] == {"reason": "terms"}
    assert headers["idempotency-key"] == payload["idempotency_key"]
    ugo = contact_of(store, "ugo")
    with store.session() as s:
        traits = msgspec.json.decode(s.rows("SELECT traits FROM contacts WHERE contact_id = ?", [ugo])[0][0])
        onsite = s.rows("SELECT message FROM onsite_messages WHERE contact_id = ?", [ugo])
    assert traits["tags"] == ["membership-curious"] and traits["membership_explained"] is True
    assert json.loads(onsite[0][0])["title"] == "The Club"
    # The cool-down keeps Ugo out for 30 days. After it, a second automation enrolls him too, but
    # the cap (1 marketing email a day, across automations) lets only one of them email him.
    clock.advance(days=31)
    copy = MEMBERSHIP.replace("RECEIVER", receiver.url).replace("key: membership", "key: membership-copy")
    save_automation(store, load_automation(copy), "test")
    send(store, classifier, "ugo", "page", clock.now(), properties={"path": "/membership/terms/faq"})
    for _ in range(2):
        send(store, classifier, "ugo", "page", clock.now(), properties={"path": "/membership/terms"})
    engine.run_until_idle()
    assert len(inbox.to("ugo@example.it")) == 2
    steps = {s["id"]: s for s in automation_stats(store, "membership")["steps"]}
    # Ugo qualified twice (his three visits were stored before the engine looked), Vera never.
    assert steps["hesitating"]["outcomes"] == {"then": 2, "otherwise": 1}
    copy_steps = {s["id"]: s for s in automation_stats(store, "membership-copy")["steps"]}
    assert steps["explain"]["outcomes"] == {"queued": 2}
    assert copy_steps["explain"]["outcomes"] == {"capped": 1}


def test_holdout_measures_uplift(store: Store, classifier: Any, smtp: Any) -> None:
    _, smtp_settings = smtp
    clock = ManualClock(MORNING)
    doc = """
key: uplift
name: Uplift
trigger: {event: Cart Abandoned}
goal: {event: Order Completed}
steps:
  - {id: control, holdout: 30}
  - {id: nudge, email: {category: transactional, subject: Your cart, text: Come back}}
"""
    save_automation(store, load_automation(doc), "test")
    engine = make_engine(store, smtp_settings, clock)
    users = [f"u{i}" for i in range(300)]
    for user in users:
        send(
            store,
            classifier,
            user,
            event="Cart Abandoned",
            context={"traits": {"email": f"{user}@example.it"}},
        )
    engine.run_until_idle()
    with store.session() as s:
        groups = dict(
            s.rows(
                "SELECT n.variant, count(*) FROM enrollments n GROUP BY n.variant",
            )
        )
        variant = {
            str(r[0]): r[1]
            for r in s.rows(
                "SELECT i.value, n.variant FROM enrollments n JOIN identities i ON i.contact_id = n.contact_id "
                "AND i.kind = 'user_id'"
            )
        }
    assert set(groups) == {"holdout", "treatment"} and 60 <= groups["holdout"] <= 120
    # Treated contacts buy back far more often than held-out ones.
    for i, user in enumerate(users):
        if (variant[user] == "treatment" and i % 2 == 0) or (variant[user] == "holdout" and i % 10 == 0):
            send(store, classifier, user, event="Order Completed")
    engine.run_until_idle()
    stats = automation_stats(store, "uplift")
    up = stats["uplift"]
    assert up["holdout"]["contacts"] == groups["holdout"]
    assert 0.4 <= up["treatment"]["rate"] <= 0.6 and up["holdout"]["rate"] <= 0.2
    assert up["ci95"][0] < up["uplift"] < up["ci95"][1] and up["ci95"][0] > 0
    assert up["significant"] is True


def test_pause_holds_everyone_and_resume_continues(store: Store, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(REMINDER), "test")
    engine = make_engine(store, smtp_settings, clock)
    person(store, classifier, "hugo")
    send(store, classifier, "hugo", event="Registration Submitted")
    engine.run_until_idle()
    set_status(store, "reminder", "paused")
    person(store, classifier, "ines")
    send(store, classifier, "ines", event="Registration Submitted")  # paused: nobody enters
    clock.advance(hours=5)
    engine.run_until_idle()
    assert inbox.messages == []
    set_status(store, "reminder", "active")
    engine.run_until_idle()
    assert inbox.to("hugo@example.it") == ["Hugo, one click left"]
    assert inbox.to("ines@example.it") == []


def test_new_versions_leave_contacts_inside_on_theirs(store: Store, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    assert save_automation(store, load_automation(REMINDER), "v1")["version"] == 1
    assert save_automation(store, load_automation(REMINDER), "v1 again")["changed"] is False
    engine = make_engine(store, smtp_settings, clock)
    person(store, classifier, "luca")
    send(store, classifier, "luca", event="Registration Submitted")
    engine.run_until_idle()
    v2 = REMINDER.replace("one click left", "please confirm")
    assert save_automation(store, load_automation(v2), "v2")["version"] == 2
    person(store, classifier, "marta")
    send(store, classifier, "marta", event="Registration Submitted")
    engine.run_until_idle()
    clock.advance(hours=4, minutes=1)
    engine.run_until_idle()
    assert inbox.to("luca@example.it") == ["Luca, one click left"]
    assert inbox.to("marta@example.it") == ["Marta, please confirm"]
    assert get_automation(store, "reminder", 1)[0].steps[1].email.subject.endswith("one click left")  # type: ignore[union-attr]


def test_failures_are_visible_and_do_not_block_others(store: Store, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    clock = ManualClock(MORNING)
    doc = """
key: fragile
name: Fragile
trigger: {event: Signed Up}
steps:
  - id: hello
    email: {category: transactional, subject: "Hi {{ traits.firstName }}", text: "{{ 10 // traits.zero }}"}
"""
    save_automation(store, load_automation(doc), "test")
    engine = make_engine(store, smtp_settings, clock)
    person(store, classifier, "nina", zero=0)
    person(store, classifier, "otto", zero=5)
    for user in ("nina", "otto"):
        send(store, classifier, user, event="Signed Up")
    engine.run_until_idle()
    assert inbox.to("otto@example.it") == ["Hi Otto"]
    stats = automation_stats(store, "fragile")
    assert stats["steps"][0]["outcomes"] == {"failed": 1, "queued": 1}
    # An unreachable SMTP server: the send is retried with backoff, the error is in the stats.
    dead = make_engine(store, SmtpSettings(host="127.0.0.1", port=free_port(), timeout=2), clock)
    person(store, classifier, "pia", zero=1)
    send(store, classifier, "pia", event="Signed Up")
    dead.run_until_idle()
    pia = contact_of(store, "pia")
    with store.session() as s:
        status, attempts, error = s.rows(
            "SELECT status, attempts, last_error FROM outbox WHERE contact_id = ?", [pia]
        )[0]
    assert status == "pending" and attempts == 1 and "127.0.0.1" in error
    clock.advance(hours=1)
    engine.run_until_idle()
    assert inbox.to("pia@example.it") == ["Hi Pia"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("- {id: pause, wait: 4h}", "- {id: pause, wiat: 4h}"), "unknown step type 'wiat'"),
        (("timed_out: benefits", "timed_out: benefit"), "leads to 'benefit', which is not a step"),
        (("then: exit, timed_out: benefits", "then: exit, timed_out: exit"), "can never be reached"),
        (
            ("{{ traits.firstName }}, one click", "{{ trait.firstName }}, one click"),
            "unknown variable 'trait'",
        ),
        (('text: "Confirm your', 'text: "{% if %}Confirm your'), "reminder"),
        (
            ('quiet_hours: {start: "21:00", end: "08:00"}', 'quiet_hours: {start: "25:00", end: "08:00"}'),
            "quiet_hours.start",
        ),
    ],
)
def test_bad_definitions_are_refused_precisely(change: tuple[str, str], message: str) -> None:
    assert change[0] in REMINDER
    with pytest.raises(AutomationError) as caught:
        load_automation(REMINDER.replace(*change), "reminder.yaml")
    text = str(caught.value)
    assert message in text and "reminder.yaml:" in text


def test_cycles_without_a_wait_are_refused() -> None:
    doc = """
key: loop
name: Loop
trigger: {event: X}
steps:
  - {id: a, tag: one, next: b}
  - {id: b, tag: two, next: a}
"""
    with pytest.raises(AutomationError, match=r"loop without a wait \(a → b → a\)"):
        load_automation(doc)
    ok = doc.replace("next: a}", "next: w}") + "  - {id: w, wait: 1d, next: a}\n"
    assert load_automation(ok).key == "loop"


def test_the_examples_are_valid() -> None:
    from percorso.automation.definition import example_files

    keys = sorted(load_automation(p.read_text(), str(p)).key for p in example_files())
    assert keys == ["abandoned-registration", "membership-explainer", "registration-reminder"]


def test_first_run_does_not_replay_history(store: Store, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    person(store, classifier, "quinn")
    send(store, classifier, "quinn", event="Registration Submitted")  # before the automation existed
    save_automation(store, load_automation(NO_WAIT), "test")
    make_engine(store, smtp_settings, ManualClock(MORNING)).run_until_idle()
    assert inbox.messages == []
    with store.session() as s:
        assert s.rows("SELECT count(*) FROM enrollments")[0][0] == 0


class TwoSenders(Inbox):
    """Holds the first message until a second SMTP connection delivers too: two workers that
    share the outbox both send, however the threads are scheduled."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: set[Any] = set()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        self.peers.add(session.peer)
        for _ in range(3000):  # 30 s at most, then the assertions below say what happened
            if len(self.peers) >= 2:
                break
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


BARRIER = 724100


def waiting_on_locks(conn: Any) -> int:
    """How many other sessions of this database wait for a lock."""
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    ).fetchone()[0]


def test_two_workers_on_postgres_share_due_work_without_duplicates(
    pg_url: str, tmp_path: Any, classifier: Any
) -> None:
    from percorso.config import Settings
    from percorso.store import open_store

    inbox = TwoSenders()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    smtp_settings = SmtpSettings(
        host="127.0.0.1", port=controller.port, sender="Casa Aurora <news@casa-aurora.example>"
    )
    settings = Settings(data_dir=tmp_path, database_url=pg_url, pool_size=4)
    stores = [open_store(settings) for _ in range(2)]
    holder: Any = None
    try:
        stores[0].reset()
        clock = ManualClock(MORNING)
        save_automation(stores[0], load_automation(REMINDER), "test")
        users = [f"w{i}" for i in range(300)]
        for user in users:
            send(
                stores[0],
                classifier,
                user,
                event="Registration Submitted",
                context={"traits": {"email": f"{user}@example.it"}},
            )
        small = EngineSettings(base_url="http://percorso.test", due_batch=25, delivery_batch=10)
        workers = [Engine(store, clock=clock, smtp=smtp_settings, settings=small) for store in stores]
        workers[0].run_until_idle()
        # A barrier inside the database: a claim of outbox rows waits, once it has chosen its
        # rows, until the test lets it go, and the test lets it go once both workers are waiting
        # there, so both have chosen their first rows at the same moment.
        with stores[0].writing() as s:
            s.execute(
                "CREATE OR REPLACE FUNCTION claim_barrier() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN PERFORM pg_advisory_lock_shared({BARRIER}); "
                f"PERFORM pg_advisory_unlock_shared({BARRIER}); RETURN NEW; END $$"
            )
            s.execute("DROP TRIGGER IF EXISTS claim_barrier ON outbox")
            s.execute(
                "CREATE TRIGGER claim_barrier BEFORE UPDATE ON outbox FOR EACH ROW "
                "WHEN (OLD.status = 'pending' AND NEW.status = 'sending') EXECUTE FUNCTION claim_barrier()"
            )
        holder = psycopg.connect(pg_url, autocommit=True)
        holder.execute(f"SELECT pg_advisory_lock({BARRIER})")
        clock.advance(hours=4, minutes=1)  # 300 timers fall due at once
        threads = [threading.Thread(target=w.run_until_idle) for w in workers]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while waiting_on_locks(holder) < 2:
            assert time.monotonic() < deadline, "the two workers never claimed at the same time"
            # A worker that looked before the other's messages were written found nothing and
            # went idle: it looks again, as a running worker would at its next tick.
            for i, t in enumerate(threads):
                if not t.is_alive():
                    threads[i] = threading.Thread(target=workers[i].run_until_idle)
                    threads[i].start()
            time.sleep(0.01)
        holder.execute(f"SELECT pg_advisory_unlock({BARRIER})")
        for t in threads:
            t.join(timeout=120)
        ids = [str(m["Message-ID"]) for m in inbox.messages]
        assert len(ids) == 300 and len(set(ids)) == 300
        assert sorted(str(m["To"]) for m in inbox.messages) == sorted(f"{u}@example.it" for u in users)
        assert len(inbox.peers) >= 2
        assert workers[0].stats["delivered"] > 0 and workers[1].stats["delivered"] > 0  # both sent
        assert workers[0].stats["delivered"] + workers[1].stats["delivered"] == 300
        assert workers[0].stats["due"] + workers[1].stats["due"] == 300  # each timer handled once
        with stores[0].session() as s:
            assert s.rows("SELECT count(*) FROM outbox WHERE status = 'sent'")[0][0] == 300
            assert s.rows("SELECT count(*) FROM enrollments WHERE step = 'confirmed'")[0][0] == 300
    finally:
        if holder is not None:
            holder.close()
        with stores[0].writing() as s:
            s.execute("DROP TRIGGER IF EXISTS claim_barrier ON outbox")
            s.execute("DROP FUNCTION IF EXISTS claim_barrier()")
        for store in stores:
            store.close()
        controller.stop()


def test_erasure_removes_automation_state(store: Store, classifier: Any, smtp: Any) -> None:
    from percorso.store.contacts import erase_contact

    _, smtp_settings = smtp
    save_automation(store, load_automation(NO_WAIT), "test")
    person(store, classifier, "zoe")
    send(store, classifier, "zoe", event="Registration Submitted")
    make_engine(store, smtp_settings, ManualClock(MORNING)).run_until_idle()
    zoe = contact_of(store, "zoe")
    erase_contact(store, zoe)
    with store.session() as s:
        for table in ("enrollments", "enrollment_log", "outbox"):
            assert s.rows(f"SELECT count(*) FROM {table} WHERE contact_id = ?", [zoe])[0][0] == 0, table


def test_rest_api_refuses_bad_input_clearly(server: Any, classifier: Any) -> None:
    with server.client() as http:
        bad = http.put("/v1/automations/reminder", content=REMINDER.replace("wait: 4h", "wiat: 4h"))
        assert bad.status_code == 422
        assert "unknown step type 'wiat'" in bad.json()["message"] and bad.json()["problems"][0]["line"]
        assert http.put("/v1/automations/reminder", content=b"\xff\xfe").status_code == 400
        wrong = http.put("/v1/automations/other", content=REMINDER)
        assert wrong.status_code == 400 and wrong.json()["field"] == "key"
        assert http.get("/v1/automations").json() == {"automations": []}  # nothing was stored
        ok = http.put("/v1/automations/reminder", content=REMINDER)
        assert ok.status_code == 200 and ok.json()["version"] == 1
        assert http.get("/v1/automations/missing/stats").status_code == 404
        assert http.post("/v1/automations/missing/pause").status_code == 404
        assert http.post("/v1/automations/reminder/enroll", json={"contactId": 999}).status_code == 404
        assert http.post("/v1/automations/reminder/enroll", json={"contactId": "x"}).status_code in (400, 422)
        assert http.post("/v1/automations/reminder/pause").json()["status"] == "paused"
        stats = http.get("/v1/automations/reminder/stats").json()
        assert stats["status"] == "paused" and stats["steps"][0]["id"] == "pause"
    with server.client(server.write_key) as tracker:
        assert tracker.get("/v1/messages").status_code == 400
        assert tracker.get("/v1/messages", params={"token": "forged.token"}).status_code == 403
        assert tracker.get("/v1/automations").status_code == 403  # write keys cannot read
    with httpx.Client(base_url=server.url) as public:
        assert public.get("/u/forged.token").status_code == 404
        assert (
            public.get("/t/c/forged.token", params={"u": "https://evil.example", "s": "x"}).status_code == 404
        )
        pixel = public.get("/t/o/forged.token")  # a forged pixel still answers an image, records nothing
        assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"


def test_unsubscribe_link_suppresses_later_marketing(server: Any, classifier: Any, smtp: Any) -> None:
    inbox, smtp_settings = smtp
    store = server.store
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(NO_WAIT), "test")
    engine = Engine(store, clock=clock, smtp=smtp_settings, settings=EngineSettings(base_url=server.url))
    for user in ("rita", "sara"):
        person(store, classifier, user)
        send(store, classifier, user, event="Registration Submitted")
    engine.run_until_idle()
    clock.advance(days=2, minutes=1)
    engine.run_until_idle()
    mail = next(
        m for m in inbox.messages if m["To"] == "rita@example.it" and "account gives" in str(m["Subject"])
    )
    link = str(mail["List-Unsubscribe"]).strip()[1:-1]
    with httpx.Client() as http:
        page = http.get(link, headers={"Accept-Language": "it-IT"})
        assert page.status_code == 200 and "Disiscrivimi" in page.text
        assert http.post(link).status_code == 200  # RFC 8058 one-click
    with store.session() as s:
        assert s.rows("SELECT count(*) FROM unsubscribes WHERE channel = 'email'")[0][0] == 1
    # Rita registers again under a second automation: the marketing email is suppressed for her only.
    save_automation(store, load_automation(NO_WAIT.replace("key: reminder", "key: again")), "test")
    for user in ("rita", "sara"):
        send(store, classifier, user, event="Registration Submitted")
    engine.run_until_idle()
    clock.advance(days=2, minutes=1)
    engine.run_until_idle()
    steps = {s["id"]: s for s in automation_stats(store, "again")["steps"]}
    assert steps["benefits"]["outcomes"] == {"queued": 1, "suppressed": 1}


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_an_event_committed_late_behind_the_cursor_is_still_handled(
    store: Store, classifier: Any, smtp: Any
) -> None:
    """On PostgreSQL a request's transaction can commit after a later one: its events land behind
    the worker's cursor. The worker re-reads the last seconds before its cursor and enrolls them."""
    _, smtp_settings = smtp
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(REMINDER), "test")
    engine = make_engine(store, smtp_settings, clock)
    person(store, classifier, "slow")  # the contact exists: the late transaction only appends its event
    with store.session() as s:
        identity = s.rows("SELECT identity_id FROM identities WHERE kind = 'user_id' AND value = 'slow'")[0][
            0
        ]
    received = datetime.now(UTC)
    late = parse_message(
        json.dumps(
            {"type": "track", "userId": "slow", "event": "Registration Submitted", "messageId": "late-1"}
        ).encode(),
        received_at=received,
        classifier=classifier,
    )
    late.identity_id = int(identity)
    inserted, commit = threading.Event(), threading.Event()

    def slow_request() -> None:
        with store.session() as s:  # a transaction that stays open
            s.insert_events([late])
            inserted.set()
            commit.wait(30)

    writer = threading.Thread(target=slow_request)
    writer.start()
    assert inserted.wait(30)
    # A later request commits first, and the worker moves its cursor past both.
    send(store, classifier, "quick", event="Registration Submitted")
    engine.decide()
    with store.session() as s:
        assert [r[0] for r in s.rows("SELECT contact_id FROM enrollments")] != []
        cursor = s.rows("SELECT received_at FROM automation_cursor WHERE name = 'events'")[0][0]
    assert cursor > received
    commit.set()
    writer.join(timeout=30)

    def enrolled() -> set[str]:
        with store.session() as s:
            return {
                str(r[0])
                for r in s.rows(
                    "SELECT i.value FROM enrollments en JOIN identities i ON i.contact_id = en.contact_id "
                    "WHERE i.kind = 'user_id'"
                )
            }

    deadline = time.monotonic() + 10
    while "slow" not in enrolled():  # the re-read runs at most once a second
        assert time.monotonic() < deadline, enrolled()
        engine.decide()
        time.sleep(0.1)
    assert enrolled() == {"quick", "slow"}
