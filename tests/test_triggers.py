"""Triggers beyond one event — stage entered, persona started matching, a date in a trait, a
schedule over the audience — and the move_stage action, on both engines with a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from percorso.analytics.stages import contact_stages, rebuild, save_journey, update
from percorso.automation.definition import AutomationError, DateTrigger, Schedule, load_automation
from percorso.automation.engine import Engine, EngineSettings, ManualClock
from percorso.automation.stats import automation_stats
from percorso.automation.store import save_automation, set_status
from percorso.automation.triggers import date_moment, latest_occurrence, next_occurrence, reference_problems
from percorso.journey.definition import load_journey
from percorso.store import Store
from tests.test_automation import MORNING, contact_of, person, send

JOURNEY = """
version: 1
key: shop
name: Shop
stages:
  - {key: browse, name: Browse, enter: {any: [{type: page}]}}
  - {key: cart, name: Cart, enter: {any: [{event: Product Added}]}}
  - {key: buy, name: Buy, enter: {any: [{event: Order Completed}]}}
  - key: loyal
    name: Loyal
    enter: {any: [{event: Order Completed}], at_least: 3, within: 30d}
personas:
  - key: repeat
    name: Repeat buyer
    when: {behaviour: [{did: {event: Order Completed}, at_least: 2, within: 7d}]}
"""


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def stored_journey(store: Store) -> Any:
    journey = load_journey(JOURNEY, "shop.yaml")
    save_journey(store, journey, "test")
    update(store, journey)
    return journey


def engine_for(store: Store, clock: ManualClock) -> Engine:
    return Engine(store, clock=clock, settings=EngineSettings(base_url="http://percorso.test"))


def enrolled(store: Store, key: str) -> dict[str, list[str]]:
    """userId → the trigger ids they were enrolled with, oldest first."""
    with store.session() as s:
        rows = s.rows(
            "SELECT i.value, n.trigger_id FROM enrollments n JOIN identities i ON i.contact_id = n.contact_id "
            "AND i.kind = 'user_id' WHERE n.automation_key = ? ORDER BY n.enrollment_id",
            [key],
        )
    out: dict[str, list[str]] = {}
    for user, trigger_id in rows:
        out.setdefault(str(user), []).append(str(trigger_id))
    return out


# -- moments (pure) ----------------------------------------------------------------------------

WEEKLY = Schedule(every="week", day="monday", at="09:00", timezone="Europe/Rome")
DAILY = Schedule(every="day", at="21:30", timezone="UTC")
MONTHLY = Schedule(every="month", day=31, at="08:00", timezone="Europe/Rome")


@pytest.mark.parametrize(
    ("schedule", "now", "latest", "following"),
    [
        # Monday 2026-11-23 09:00 in Rome is 08:00 UTC (CET).
        (WEEKLY, utc(2026, 11, 25, 12), utc(2026, 11, 23, 8), utc(2026, 11, 30, 8)),
        (WEEKLY, utc(2026, 11, 23, 8), utc(2026, 11, 23, 8), utc(2026, 11, 30, 8)),
        (WEEKLY, utc(2026, 11, 23, 7, 59), utc(2026, 11, 16, 8), utc(2026, 11, 23, 8)),
        # Summer time: 09:00 in Rome is 07:00 UTC.
        (WEEKLY, utc(2026, 7, 1), utc(2026, 6, 29, 7), utc(2026, 7, 6, 7)),
        (DAILY, utc(2026, 11, 23, 21, 29), utc(2026, 11, 22, 21, 30), utc(2026, 11, 23, 21, 30)),
        # The 31st is the last day of shorter months.
        (MONTHLY, utc(2026, 11, 15), utc(2026, 10, 31, 7), utc(2026, 11, 30, 7)),
        (MONTHLY, utc(2026, 12, 31, 7), utc(2026, 12, 31, 7), utc(2027, 1, 31, 7)),
        (MONTHLY, utc(2027, 3, 1), utc(2027, 2, 28, 7), utc(2027, 3, 31, 6)),
    ],
)
def test_schedule_occurrences(
    schedule: Schedule, now: datetime, latest: datetime, following: datetime
) -> None:
    assert latest_occurrence(schedule, now) == latest
    assert next_occurrence(schedule, now) == following


@pytest.mark.parametrize(
    ("trigger", "value", "moment"),
    [
        (DateTrigger(trait="t", after="3d", at="09:00"), "2026-11-20T17:30:00Z", utc(2026, 11, 23, 8)),
        (DateTrigger(trait="t", after="3d"), "2026-11-20T17:30:00+01:00", utc(2026, 11, 23, 16, 30)),
        (DateTrigger(trait="t", before="3d", at="09:00"), "2026-11-26", utc(2026, 11, 23, 8)),
        (DateTrigger(trait="t", timezone="UTC"), "2026-11-26", utc(2026, 11, 26)),
        (DateTrigger(trait="t", after="12h"), "2026-11-26T10:00:00", utc(2026, 11, 26, 22)),
        (DateTrigger(trait="t"), "soon", None),
        (DateTrigger(trait="t"), "2026-02-30", None),
        (DateTrigger(trait="t"), 20261126, None),
    ],
)
def test_date_moments(trigger: DateTrigger, value: Any, moment: datetime | None) -> None:
    assert date_moment(trigger, value) == moment


# -- validation --------------------------------------------------------------------------------

BASE = """
key: t
name: T
trigger: TRIGGER
AUDIENCE
steps:
  - {id: mark, tag: x}
"""


@pytest.mark.parametrize(
    ("trigger", "audience", "message"),
    [
        (
            "{event: X, stage: {journey: shop, stage: buy}}",
            "",
            "trigger: give one kind of trigger, not event and stage",
        ),
        ("{}", "", "trigger: say what enrolls a contact"),
        ("{stage: {journey: shop}}", "", "trigger.stage: missing the required field `stage`"),
        ("{persona: {journey: shop, persona: Repeat}}", "", "trigger.persona.persona"),
        (
            "{date: {trait: renews_at, before: 3d, after: 1d}}",
            "",
            "trigger.date: give before or after, not both",
        ),
        ("{date: {trait: renews_at, at: '9am'}}", "", "trigger.date.at"),
        (
            "{date: {trait: renews_at, timezone: Rome}}",
            "",
            "trigger.date.timezone: 'Rome' is not a time zone",
        ),
        (
            "{schedule: {every: week, day: monday}}",
            "",
            "trigger.schedule: a schedule enrolls everyone matching",
        ),
        (
            "{schedule: {every: fortnight}}",
            "audience: {}",
            "trigger.schedule.every: Invalid enum value 'fortnight'",
        ),
        ("{schedule: {every: week}}", "audience: {}", "trigger.schedule.day: is missing: say which day"),
        ("{schedule: {every: week, day: mondey}}", "audience: {}", "(did you mean 'monday'?)"),
        (
            "{schedule: {every: month, day: 0}}",
            "audience: {}",
            "trigger.schedule.day: 0 is not a day of the month",
        ),
        ("{schedule: {every: day, day: 3}}", "audience: {}", "trigger.schedule.day: a daily schedule"),
        ("{schedule: {every: day, at: '24:00'}}", "audience: {}", "trigger.schedule.at"),
    ],
)
def test_bad_triggers_are_refused_with_the_field(trigger: str, audience: str, message: str) -> None:
    with pytest.raises(AutomationError) as caught:
        load_automation(BASE.replace("TRIGGER", trigger).replace("AUDIENCE", audience), "t.yaml")
    assert message in str(caught.value) and "t.yaml:4:" in str(caught.value)


def test_good_triggers_load() -> None:
    for trigger, audience in [
        ("{stage: {journey: shop, stage: buy}}", ""),
        ("{persona: {journey: shop, persona: repeat}}", ""),
        ("{date: {trait: renews_at, before: 3d, at: '09:00', timezone: Europe/Rome}}", ""),
        (
            "{schedule: {every: week, day: mon, at: '09:00', timezone: Europe/Rome}}",
            "audience: {traits: {plan: gold}}",
        ),
        ("{schedule: {every: month, day: 31}}", "audience: {}"),
        ("{api: true}", ""),
    ]:
        load_automation(BASE.replace("TRIGGER", trigger).replace("AUDIENCE", audience))


def test_references_to_journeys_are_checked_against_the_store(store: Store) -> None:
    stored_journey(store)
    doc = BASE.replace("TRIGGER", "{stage: {journey: shop, stage: buys}}").replace("AUDIENCE", "")
    doc += "  - {id: move, move_stage: {journey: shoppe, stage: buy}}\n"
    problems = reference_problems(store, load_automation(doc), "t.yaml")
    assert [(p.field, p.suggestion) for p in problems] == [
        ("trigger.stage.stage", "buy"),
        ("steps[1].move_stage.journey", None),
    ]
    assert "no journey 'shoppe' is stored" in str(problems[1])
    persona = BASE.replace("TRIGGER", "{persona: {journey: shop, persona: repeat}}").replace("AUDIENCE", "")
    assert reference_problems(store, load_automation(persona)) == []


# -- the engine ----------------------------------------------------------------------------------

BUYERS = """
key: buyers
name: Buyers
trigger: {stage: {journey: shop, stage: buy}}
audience: {traits: {newsletter: "yes"}}
reentry: after_exit
steps:
  - {id: mark, tag: buyer}
"""


def test_stage_trigger_enrolls_each_entry_once(store: Store, classifier: Any) -> None:
    clock = ManualClock(MORNING)
    journey = stored_journey(store)
    for user in ("ada", "bea", "cid", "old"):
        person(store, classifier, user, newsletter="yes" if user != "cid" else "no")
    send(store, classifier, "old", event="Order Completed", at=clock.now())  # before: history
    save_automation(store, load_automation(BUYERS), "test")
    engine = engine_for(store, clock)
    for user in ("ada", "bea", "cid"):
        send(store, classifier, user, event="Product Added", at=clock.now())
    send(store, classifier, "ada", event="Order Completed", at=clock.now())
    send(store, classifier, "cid", event="Order Completed", at=clock.now())  # outside the audience
    engine.run_until_idle()
    assert enrolled(store, "buyers") == {"ada": ["stage:shop/buy#1"]}
    # Bea buys later; Cid joins the newsletter, but his entry was already looked at.
    clock.advance(minutes=5)
    send(store, classifier, "bea", event="Order Completed", at=clock.now())
    person(store, classifier, "cid", newsletter="yes")
    engine.run_until_idle()
    assert enrolled(store, "buyers") == {"ada": ["stage:shop/buy#1"], "bea": ["stage:shop/buy#1"]}
    # Rebuilding stage history, checking again, a second engine: nobody enters twice.
    rebuild(store, journey)
    clock.advance(minutes=5)
    engine.run_until_idle()
    engine_for(store, clock).run_until_idle()
    assert enrolled(store, "buyers") == {"ada": ["stage:shop/buy#1"], "bea": ["stage:shop/buy#1"]}
    assert automation_stats(store, "buyers")["steps"][0]["outcomes"] == {"done": 2}


MOVER = """
key: quotes
name: Accepted quotes count as purchases
trigger: {event: Quote Accepted}
steps:
  - {id: move, move_stage: {journey: shop, stage: buy}}
"""


def test_move_stage_records_a_stage_entry_that_survives_a_rebuild(store: Store, classifier: Any) -> None:
    clock = ManualClock(MORNING)
    journey = stored_journey(store)
    for user in ("dan", "eli"):
        person(store, classifier, user, newsletter="yes")
    save_automation(store, load_automation(MOVER), "test")
    save_automation(store, load_automation(BUYERS), "test")
    engine = engine_for(store, clock)
    send(store, classifier, "dan", "page", clock.now(), properties={"path": "/"})
    clock.advance(minutes=1)
    send(store, classifier, "dan", event="Quote Accepted", at=clock.now())
    engine.run_until_idle()
    clock.advance(minutes=1)  # the move is stored; the stage trigger looks again
    engine.run_until_idle()
    dan = contact_of(store, "dan")
    history = [(e["stage"], e["channel"]) for e in contact_stages(store, journey, dan)]
    assert history == [("browse", "server"), ("buy", "internal")]
    assert enrolled(store, "buyers") == {"dan": ["stage:shop/buy#1"]}  # a move enters the stage
    assert automation_stats(store, "quotes")["steps"][0]["outcomes"] == {"queued": 1}
    rebuild(store, journey)
    assert [(e["stage"], e["channel"]) for e in contact_stages(store, journey, dan)] == history
    # Any source may send the move; in a forward journey it only ever moves a contact forward.
    moved = {"journey": "shop", "stage": "cart"}
    send(store, classifier, "dan", event="Stage Moved", properties=moved, at=clock.now())
    send(store, classifier, "eli", event="Stage Moved", properties=moved, at=clock.now())
    update(store, journey)
    assert [e["stage"] for e in contact_stages(store, journey, dan)] == ["browse", "buy"]
    assert [e["stage"] for e in contact_stages(store, journey, contact_of(store, "eli"))] == ["cart"]
    # A stage the journey lost since: the step fails, visibly.
    save_journey(store, load_journey(JOURNEY.replace("key: buy,", "key: bought,"), "shop.yaml"), "test")
    send(store, classifier, "eli", event="Quote Accepted", at=clock.now())
    engine.run_until_idle()
    outcomes = automation_stats(store, "quotes")["steps"][0]["outcomes"]
    assert outcomes == {"queued": 1, "failed": 1}


REPEAT = """
key: repeat-buyers
name: Repeat buyers
trigger: {persona: {journey: shop, persona: repeat}}
reentry: after_exit
steps:
  - {id: mark, tag: repeat}
"""


def test_persona_trigger_enrolls_when_a_contact_starts_matching(store: Store, classifier: Any) -> None:
    clock = ManualClock(MORNING)
    stored_journey(store)
    for user in ("eva", "fay"):
        person(store, classifier, user)
    for _ in range(2):  # Eva already matches when the automation starts: the baseline
        send(store, classifier, "eva", event="Order Completed", at=clock.now())
    save_automation(store, load_automation(REPEAT), "test")
    engine = engine_for(store, clock)
    engine.run_until_idle()
    send(store, classifier, "fay", event="Order Completed", at=clock.now())
    clock.advance(minutes=1)
    engine.run_until_idle()
    assert enrolled(store, "repeat-buyers") == {}
    send(store, classifier, "fay", event="Order Completed", at=clock.now())
    engine.run_until_idle()
    assert enrolled(store, "repeat-buyers") == {}  # checked once a minute
    clock.advance(minutes=1)
    engine.run_until_idle()
    first = enrolled(store, "repeat-buyers")["fay"]
    assert len(first) == 1 and first[0].startswith("persona:shop/repeat@")
    # A week later both stopped matching; Fay buys twice again: a new occurrence.
    clock.advance(days=8)
    engine.run_until_idle()
    for _ in range(2):
        send(store, classifier, "fay", event="Order Completed", at=clock.now())
    clock.advance(minutes=1)
    engine.run_until_idle()
    clock.advance(minutes=1)
    engine.run_until_idle()
    again = enrolled(store, "repeat-buyers")
    assert list(again) == ["fay"] and len(again["fay"]) == 2 and again["fay"][0] != again["fay"][1]


RENEWAL = """
key: renewal
name: Renewal in three days
trigger: {date: {trait: renews_at, before: 3d, at: "09:00", timezone: Europe/Rome}}
reentry: after_exit
steps:
  - {id: mark, tag: renewing}
"""


def test_date_trigger_enrolls_at_the_moment_once(store: Store, classifier: Any) -> None:
    clock = ManualClock(utc(2026, 11, 23, 7))  # 08:00 in Rome
    person(store, classifier, "gia", renews_at="2026-11-27T15:00:00Z")  # due 24 Nov 09:00 Rome
    person(store, classifier, "hal", renews_at="2026-11-26")  # due today 09:00 Rome
    person(store, classifier, "ivo", renews_at="2026-11-20")  # due a week ago: too late
    person(store, classifier, "joe", renews_at="soon")
    save_automation(store, load_automation(RENEWAL), "test")
    engine = engine_for(store, clock)
    engine.run_until_idle()
    clock.advance(minutes=59)
    engine.run_until_idle()
    assert enrolled(store, "renewal") == {}
    clock.advance(minutes=2)
    engine.run_until_idle()
    assert enrolled(store, "renewal") == {"hal": ["date:renews_at=2026-11-26"]}
    clock.advance(days=1)
    engine.run_until_idle()
    clock.advance(minutes=5)
    engine.run_until_idle()
    assert enrolled(store, "renewal") == {
        "hal": ["date:renews_at=2026-11-26"],
        "gia": ["date:renews_at=2026-11-27T15:00:00Z"],
    }
    # Renewed for a year: a new date is a new occurrence, due in a year.
    clock.advance(days=365)
    send(store, classifier, "gia", "identify", clock.now(), traits={"renews_at": "2027-11-27T15:00:00Z"})
    engine.run_until_idle()
    assert len(enrolled(store, "renewal")["gia"]) == 2


WEEKLY_DOC = """
key: weekly
name: Weekly gold digest
trigger: {schedule: {every: week, day: monday, at: "09:00", timezone: Europe/Rome}}
audience: {traits: {plan: gold}}
reentry: after_exit
steps:
  - {id: mark, tag: weekly}
"""


def test_schedule_enrolls_the_audience_at_each_occurrence(store: Store, classifier: Any) -> None:
    clock = ManualClock(utc(2026, 11, 22, 12))  # Sunday
    for user, plan in (("kim", "gold"), ("lea", "gold"), ("max", "silver")):
        person(store, classifier, user, plan=plan)
    save_automation(store, load_automation(WEEKLY_DOC), "test")
    engine = engine_for(store, clock)
    engine.run_until_idle()
    clock.advance(hours=19, minutes=59)  # Monday 08:59 in Rome
    engine.run_until_idle()
    assert enrolled(store, "weekly") == {}
    clock.advance(minutes=2)
    engine.run_until_idle()
    engine_for(store, clock).run_until_idle()  # a second worker: nothing twice
    first = "schedule:2026-11-23T08:00:00+00:00"
    assert enrolled(store, "weekly") == {"kim": [first], "lea": [first]}
    # Paused over the next Monday: that occurrence is not replayed on resume.
    set_status(store, "weekly", "paused")
    clock.advance(days=7)
    engine.run_until_idle()
    set_status(store, "weekly", "active")
    engine.run_until_idle()
    assert enrolled(store, "weekly") == {"kim": [first], "lea": [first]}
    # The Monday after, the engine was down until the afternoon: it runs late.
    clock.advance(days=7, hours=5)
    engine.run_until_idle()
    third = "schedule:2026-12-07T08:00:00+00:00"
    assert enrolled(store, "weekly") == {"kim": [first, third], "lea": [first, third]}
    with store.session() as s:  # occurrences no longer needed are dropped
        kept = s.rows("SELECT DISTINCT occurrence FROM trigger_occurrences WHERE automation_key = 'weekly'")
    assert kept == [(third,)]


def test_schedule_runs_missed_occurrence_only_within_a_day(store: Store, classifier: Any) -> None:
    clock = ManualClock(utc(2026, 11, 22, 12))
    person(store, classifier, "ned", plan="gold")
    save_automation(store, load_automation(WEEKLY_DOC), "test")
    engine = engine_for(store, clock)
    engine.run_until_idle()
    clock.advance(days=2)  # Tuesday noon: Monday's run is more than a day late
    engine.run_until_idle()
    assert enrolled(store, "weekly") == {}
    clock.advance(days=6)  # next Monday 12:00 UTC
    engine.run_until_idle()
    assert enrolled(store, "weekly") == {"ned": ["schedule:2026-11-30T08:00:00+00:00"]}


def test_rest_api_refuses_unknown_journeys(server: Any) -> None:
    with server.client() as http:
        refused = http.put("/v1/automations/buyers", content=BUYERS)
        assert refused.status_code == 422
        assert (
            refused.json()["field"] == "trigger.stage.journey"
            and "apply it first" in refused.json()["message"]
        )
        stored_journey(server.store)
        assert http.put("/v1/automations/buyers", content=BUYERS).status_code == 200
