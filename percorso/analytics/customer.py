"""One contact at a glance (the customer 360 header): who they are, where they are in the journey
and for how long, what they bought, what they last said, what needs attention, and what the
automations will do to them next.

Every figure uses the definition the rest of percorso uses, so the header agrees with the pages
it sits beside: the stage is the contact's open stage entry (stages.py); "stuck" is the stage
overview's (longer than ``stuck_after``, 30 days by default); orders and their value are the
events the journey's revenue KPIs name (Segment's ``Order Completed`` when it names none) and
their ``revenue`` property, as on the map; a score is an answer as the map's emotion lane
classifies it (feedback.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from percorso.analytics.feedback import answer_columns, score_columns
from percorso.analytics.personas import rule_sql
from percorso.analytics.sql import CUSTOMER_EVENT, RESOLVED_EVENTS
from percorso.automation.definition import ACTION_KINDS, EXIT, Automation, successors
from percorso.automation.store import AutomationNotFound, get_automation
from percorso.events import iso_utc
from percorso.journey.definition import Condition, Journey, display
from percorso.store import Store
from percorso.store.contacts import decoded_traits, resolve_contact

DEFAULT_ORDER_EVENT = "Order Completed"  # Segment's e-commerce spec
INACTIVE_AFTER = timedelta(days=90)
DETRACTOR_MAX = 6  # an NPS answer of 0-6


@dataclass(frozen=True)
class Waiting:
    """An automation enrollment that has not reached its goal yet."""

    automation: str
    name: str
    since: datetime
    trigger: str | None
    goal: str | None


def contact_name(traits: dict[str, Any]) -> str | None:
    """The name people would call the contact by, from the usual traits."""
    if isinstance(traits.get("name"), str) and traits["name"].strip():
        return str(traits["name"]).strip()
    first = traits.get("firstName") or traits.get("first_name")
    last = traits.get("lastName") or traits.get("last_name")
    parts = [str(p).strip() for p in (first, last) if isinstance(p, str) and p.strip()]
    return " ".join(parts) or None


def describe(condition: Condition | None) -> str | None:
    """A condition as a short label: its event, page or screen name when it names exactly one."""
    if condition is None:
        return None
    for field in ("event", "name", "page"):
        value = getattr(condition, field)
        if isinstance(value, str) and "*" not in value and "?" not in value:
            return value
        if isinstance(value, list) and len(value) == 1 and "*" not in value[0]:
            return str(value[0])
    return None


def order_events(journey: Journey | None) -> list[str]:
    """The events that are orders: those the journey's revenue KPIs name, else ``Order Completed``."""
    named = sorted(
        {
            k.event
            for st in (journey.stages if journey else [])
            for k in st.kpis
            if k.metric == "revenue" and k.event
        }
    )
    return named or [DEFAULT_ORDER_EVENT]


def customer_summary(
    store: Store,
    journey: Journey | None,
    contact_id: int,
    *,
    now: datetime,
    stuck_after: timedelta = timedelta(days=30),
    lang: str = "en",
) -> dict[str, Any]:
    """The header of a contact's page and its JSON twin; raises ``ContactNotFound``."""
    orders = order_events(journey)
    with store.session() as s:
        live_id, row = resolve_contact(s, contact_id)
        traits = decoded_traits(row["traits"])
        stage = None
        personas: list[dict[str, str]] = []
        if journey is not None and journey.subject == "contact":
            open_entry = s.rows(
                "SELECT stage, entered_at FROM stage_entries WHERE journey_key = ? AND contact_id = ? "
                "AND left_at IS NULL ORDER BY seq DESC LIMIT 1",
                [journey.key, live_id],
            )
            if open_entry:
                key, entered = open_entry[0]
                names = {st.key: display(st.name, lang) for st in journey.stages}
                seconds = max((now - entered).total_seconds(), 0.0)
                stage = {
                    "key": key,
                    "name": names.get(key, key),
                    "since": iso_utc(entered),
                    "seconds": seconds,
                    "stuck": seconds > stuck_after.total_seconds(),
                    "stuckAfter": stuck_after.total_seconds(),
                }
            for persona in journey.personas:
                sql = rule_sql(s, persona.when, now, contacts=[live_id])
                if s.rows(sql.text, sql.params):
                    personas.append({"key": persona.key, "name": display(persona.name, lang)})
        number, number_params = s.json_number("e.properties", "revenue")
        marks = ", ".join("?" for _ in orders)
        bought = s.rows(
            f"SELECT count(*), sum({number}), max(e.timestamp) FROM {RESOLVED_EVENTS} "
            f"WHERE i.contact_id = ? AND e.type = 'track' AND e.event IN ({marks}) AND {CUSTOMER_EVENT}",
            [*number_params, live_id, *orders],
        )[0]
        answers, answer_params = answer_columns(s)
        scores, score_params = score_columns()
        scored = s.rows(
            f"WITH x0 AS (SELECT e.timestamp AS ts, {answers} FROM {RESOLVED_EVENTS} "
            "WHERE i.contact_id = ? AND e.type = 'track'), "
            f"x AS (SELECT ts, {scores} FROM x0) "
            "SELECT 'nps', nps, ts FROM (SELECT nps, ts FROM x WHERE nps IS NOT NULL ORDER BY ts DESC LIMIT 1) n "
            "UNION ALL "
            "SELECT 'csat', csat, ts FROM (SELECT csat, ts FROM x WHERE csat IS NOT NULL ORDER BY ts DESC LIMIT 1) c",
            [*answer_params, live_id, *score_params],
        )
        last_seen = s.rows(
            f"SELECT max(e.timestamp) FROM {RESOLVED_EVENTS} WHERE i.contact_id = ? AND {CUSTOMER_EVENT}",
            [live_id],
        )[0][0]
        enrolled = s.dicts(
            "SELECT automation_key, version, status, step, due_at, entered_at FROM enrollments "
            "WHERE status IN ('active', 'waiting') AND (contact_id = ? OR contact_id IN "
            "(SELECT contact_id FROM contacts WHERE merged_into = ?)) ORDER BY due_at, entered_at",
            [live_id, live_id],
        )
        unsubscribed = [
            r[0]
            for r in s.rows(
                "SELECT DISTINCT channel FROM unsubscribes WHERE contact_id = ? OR contact_id IN "
                "(SELECT contact_id FROM contacts WHERE merged_into = ?) ORDER BY channel",
                [live_id, live_id],
            )
        ]
    latest = {kind: {"score": int(score), "at": iso_utc(at)} for kind, score, at in scored}
    definitions: dict[tuple[str, int], Automation | None] = {}
    for e in enrolled:
        key = (str(e["automation_key"]), int(e["version"]))
        if key not in definitions:
            try:
                definitions[key] = get_automation(store, *key)[0]
            except AutomationNotFound:
                definitions[key] = None
    upcoming, waiting = [], []
    for e in enrolled:
        automation = definitions[(str(e["automation_key"]), int(e["version"]))]
        if automation is None:
            continue
        name = display(automation.name, lang)
        upcoming.append(
            {
                "automation": automation.key,
                "name": name,
                "step": e["step"],
                "status": e["status"],
                "due": iso_utc(e["due_at"]),
                "action": next_action(automation, e["step"], lang),
            }
        )
        if automation.goal is not None:
            waiting.append(
                Waiting(
                    automation.key,
                    name,
                    e["entered_at"],
                    describe(automation.trigger.condition()),
                    describe(automation.goal),
                )
            )
    flags = _flags(stage, latest.get("nps"), last_seen, waiting, unsubscribed, now)
    return {
        "contact": live_id,
        "name": contact_name(traits),
        "journey": journey.key if journey else None,
        "stage": stage,
        "personas": personas,
        "orders": {
            "count": int(bought[0] or 0),
            "value": round(float(bought[1]), 2) if bought[1] is not None else 0.0,
            "currency": journey.currency if journey else "EUR",
            "last": iso_utc(bought[2]),
            "events": orders,
        },
        "nps": latest.get("nps"),
        "csat": latest.get("csat"),
        "lastSeen": iso_utc(last_seen),
        "flags": flags,
        "upcoming": upcoming,
    }


def next_action(automation: Automation, step_id: str | None, lang: str = "en") -> dict[str, str] | None:
    """The first action (email, webhook, on-site message …) the enrollment will reach from its
    current step along a path without choices; None when a condition or split decides first."""
    index = automation.step_index()
    position = index.get(step_id or "")
    seen = set()
    while position is not None and position not in seen:
        seen.add(position)
        step = automation.steps[position]
        if step.kind in ACTION_KINDS:
            return {
                "id": step.id,
                "kind": step.kind,
                "name": display(step.name, lang) if step.name is not None else step.id,
            }
        edges = successors(automation, position)
        if len(edges) != 1 or edges[0].target == EXIT:
            return None
        position = index.get(edges[0].target)
    return None


def _flags(
    stage: dict[str, Any] | None,
    nps: dict[str, Any] | None,
    last_seen: datetime | None,
    waiting: list[Waiting],
    unsubscribed: list[str],
    now: datetime,
) -> list[dict[str, Any]]:
    """What needs a person's attention, most pressing first; each flag is data (a kind and its
    values) that the page words in the reader's language."""
    flags: list[dict[str, Any]] = []
    for w in waiting:
        flags.append(
            {
                "kind": "waiting",
                "automation": w.automation,
                "name": w.name,
                "trigger": w.trigger,
                "goal": w.goal,
                "since": iso_utc(w.since),
                "seconds": max((now - w.since).total_seconds(), 0.0),
            }
        )
    if stage is not None and stage["stuck"]:
        flags.append(
            {
                "kind": "stuck",
                "stage": stage["key"],
                "name": stage["name"],
                "seconds": stage["seconds"],
                "limit": stage["stuckAfter"],
            }
        )
    if nps is not None and nps["score"] <= DETRACTOR_MAX:
        flags.append({"kind": "detractor", "score": nps["score"], "at": nps["at"]})
    if last_seen is not None and now - last_seen > INACTIVE_AFTER:
        flags.append(
            {"kind": "inactive", "since": iso_utc(last_seen), "seconds": (now - last_seen).total_seconds()}
        )
    for channel in unsubscribed:
        flags.append({"kind": "unsubscribed", "channel": channel})
    return flags
