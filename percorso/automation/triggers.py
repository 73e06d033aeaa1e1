"""Triggers that are not one event: a stage entered, a persona started matching, a date held in a
trait, a schedule over the audience.

Each runs inside the engine's loop (:meth:`Engine.tick`) on the engine's clock, in two phases per
automation, each one transaction under a named lock (workers on PostgreSQL take turns):

1. **find** — one SQL statement writes the new *occurrences* into ``trigger_occurrences``, whose
   primary key is (automation, contact, occurrence): an occurrence is found once, however often
   the check runs or a crash replays it;
2. **enroll** — pending occurrences are narrowed to the automation's audience in SQL, enrolled
   through the engine (the re-entry policy applies) with the occurrence as the enrollment's
   ``trigger_id``, and marked handled in the same transaction.

What an occurrence is:

* **stage** — a contact's n-th entry into the stage, ``stage:journey/stage#n``, when the event that
  entered it was received after the automation (with this trigger) was stored. Stage history is
  derived from events and may be rebuilt; the entering event and the ordinal survive a rebuild.
* **persona** — starting to match, ``persona:journey/persona@time``. Who matches when the engine
  first checks the trigger is the baseline and is not enrolled; leaving and matching again is a
  new occurrence.
* **date** — the trait's value, ``date:trait=value``, enrolled once its moment has passed; a moment
  is honoured up to :data:`LATE_LIMIT` late (a restart, a trait stored late), older ones are skipped.
* **schedule** — each occurrence after the engine first checked the trigger,
  ``schedule:2026-11-23T08:00:00+00:00``, enrolls everyone in the audience; a missed one runs late,
  up to :data:`LATE_LIMIT`.

Checks are spaced in engine time: schedules every pass (plain arithmetic until one falls due),
stages every :data:`CHECK_STAGES` when events arrived (bringing the journey's stage history up to
date first), personas and dates every :data:`CHECK_SLOW`. A paused automation still records
occurrences, as handled: triggers while paused are not replayed on resume.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec

from percorso.analytics.sql import like_pattern
from percorso.automation.definition import (
    Automation,
    DateTrigger,
    Schedule,
    Trigger,
    weekday_number,
)
from percorso.journey.definition import JourneyError, Problem, duration_seconds
from percorso.store import Store
from percorso.store.base import Session, StoreError

if TYPE_CHECKING:
    from percorso.automation.core import EngineCore as Engine
    from percorso.automation.state import Loaded
    from percorso.journey.definition import Journey

log = logging.getLogger("percorso.automation")

LATE_LIMIT = timedelta(days=1)  # a date or schedule moment older than this when found is skipped
CHECK_STAGES = timedelta(seconds=10)
CHECK_SLOW = timedelta(minutes=1)  # personas and dates: a full scan in SQL
CHUNK = 2000  # occurrences enrolled per transaction
OCCURRENCE_COLUMNS = (
    ("automation_key", "TEXT"),
    ("contact_id", "BIGINT"),
    ("occurrence", "TEXT"),
    ("found_at", "TIMESTAMPTZ"),
    ("handled_at", "TIMESTAMPTZ"),
)


def trigger_digest(trigger: Trigger) -> str:
    """Identifies a trigger's definition: a changed trigger starts afresh (new baseline)."""
    return hashlib.sha256(msgspec.json.encode(trigger)).hexdigest()[:16]


def trigger_kind(trigger: Trigger) -> str | None:
    """``stage``, ``persona``, ``date`` or ``schedule`` — the kinds this module runs — else None."""
    kinds = [k for k in trigger.kinds if k != "event"]
    return kinds[0] if kinds else None


# -- moments (pure) --------------------------------------------------------------------------


def _at(day: date, clock: str, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, int(clock[:2]), int(clock[3:]), tzinfo=zone)


def _month_day(year: int, month: int, wanted: int) -> date:
    return date(year, month, min(wanted, calendar.monthrange(year, month)[1]))


def _step(day: date, schedule: Schedule, forward: bool) -> date:
    """The schedule's next (or previous) day after (before) ``day``, which is one of its days."""
    sign = 1 if forward else -1
    if schedule.every == "day":
        return day + timedelta(days=sign)
    if schedule.every == "week":
        return day + timedelta(days=7 * sign)
    month = day.month + sign
    year = day.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return _month_day(year, month, int(schedule.day or 1))


def latest_occurrence(schedule: Schedule, now: datetime) -> datetime:
    """The schedule's most recent moment at or before ``now`` (UTC).

    Example::

        >>> weekly = Schedule(every="week", day="monday", at="09:00", timezone="Europe/Rome")
        >>> latest_occurrence(weekly, datetime(2026, 11, 25, 12, tzinfo=UTC)).isoformat()
        '2026-11-23T08:00:00+00:00'
    """
    zone = ZoneInfo(schedule.timezone)
    local = now.astimezone(zone).date()
    if schedule.every == "day":
        day = local
    elif schedule.every == "week":
        day = local - timedelta(days=(local.weekday() - (weekday_number(schedule.day) or 0)) % 7)
    else:
        day = _month_day(local.year, local.month, int(schedule.day or 1))
        if day > local:
            day = _step(day, schedule, forward=False)
    moment = _at(day, schedule.at, zone)
    if moment > now:
        moment = _at(_step(day, schedule, forward=False), schedule.at, zone)
    return moment.astimezone(UTC)


def next_occurrence(schedule: Schedule, after: datetime) -> datetime:
    """The schedule's first moment strictly after ``after`` (UTC)."""
    zone = ZoneInfo(schedule.timezone)
    day = latest_occurrence(schedule, after).astimezone(zone).date()
    moment = _at(day, schedule.at, zone)
    while moment <= after:
        day = _step(day, schedule, forward=True)
        moment = _at(day, schedule.at, zone)
    return moment.astimezone(UTC)


def date_moment(trigger: DateTrigger, value: Any) -> datetime | None:
    """When a contact whose trait holds ``value`` (ISO 8601) is due, or None if it is not a date.

    A date alone is midnight in the trigger's time zone; a date-time without an offset is UTC (as
    in ``wait_until``). ``before``/``after`` shift it; ``at`` then moves it to that time of day, in
    the trigger's time zone, on the day it fell on.

    Example::

        >>> t = DateTrigger(trait="registered_at", after="3d", at="09:00", timezone="Europe/Rome")
        >>> date_moment(t, "2026-11-20T17:30:00Z").isoformat()
        '2026-11-23T08:00:00+00:00'
    """
    if not isinstance(value, str):
        return None
    zone = ZoneInfo(trigger.timezone)
    text = value.strip()
    try:
        if len(text) == 10:
            moment = _at(date.fromisoformat(text), "00:00", zone)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        return None
    if trigger.after:
        moment += timedelta(seconds=duration_seconds(trigger.after))
    elif trigger.before:
        moment -= timedelta(seconds=duration_seconds(trigger.before))
    if trigger.at:
        moment = _at(moment.astimezone(zone).date(), trigger.at, zone)
    return moment.astimezone(UTC)


# -- references to stored journeys -------------------------------------------------------------


def reference_problems(store: Store, automation: Automation, source: str = "<automation>") -> list[Problem]:
    """Stage and persona triggers and ``move_stage`` steps name a stored journey and one of its
    stages or personas: say so (with the nearest name) before the automation is stored."""
    from difflib import get_close_matches

    from percorso.analytics.stages import StageError, get_journey

    wanted: list[tuple[str, str, str, str]] = []  # (field, journey, kind, key)
    trigger = automation.trigger
    if trigger.stage is not None:
        wanted.append(("trigger.stage", trigger.stage.journey, "stage", trigger.stage.stage))
    if trigger.persona is not None:
        wanted.append(("trigger.persona", trigger.persona.journey, "persona", trigger.persona.persona))
    for i, step in enumerate(automation.steps):
        if step.move_stage is not None:
            wanted.append((f"steps[{i}].move_stage", step.move_stage.journey, "stage", step.move_stage.stage))
    problems: list[Problem] = []
    journeys: dict[str, Journey | None] = {}
    for field, journey_key, kind, key in wanted:
        if journey_key not in journeys:
            try:
                journeys[journey_key] = get_journey(store, journey_key)
            except (StageError, JourneyError):
                journeys[journey_key] = None
        journey = journeys[journey_key]
        if journey is None:
            problems.append(
                Problem(
                    source,
                    None,
                    f"{field}.journey",
                    f"no journey {journey_key!r} is stored: apply it first (percorso journey apply FILE)",
                )
            )
            continue
        if journey.subject == "account":
            # automations act on people; an account's stage or persona is not a person's
            problems.append(
                Problem(
                    source,
                    None,
                    f"{field}.journey",
                    f"journey {journey_key} follows accounts, and automations act on contacts: "
                    "name a journey that follows contacts",
                )
            )
            continue
        known = journey.stage_keys() if kind == "stage" else [p.key for p in journey.personas]
        if key not in known:
            guess = get_close_matches(key, known, n=1)
            problems.append(
                Problem(
                    source,
                    None,
                    f"{field}.{kind}",
                    f"{key!r} is not a {kind} of journey {journey_key} ({', '.join(known) or 'none defined'})",
                    guess[0] if guess else None,
                )
            )
    return problems


# -- running them ------------------------------------------------------------------------------


@dataclass
class _State:
    armed_at: datetime  # engine time of the first check
    since_received: datetime  # stage triggers: entering events received from then on count
    last_occurrence: str | None


class TriggerRunner:
    """Checks every automation whose trigger is a stage, persona, date or schedule (one per engine)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.store = engine.store
        self._checked: dict[tuple[str, str], datetime] = {}
        self._pending: dict[str, bool] = {}  # automation -> may have occurrences left to enroll
        self._done: dict[tuple[str, str], str] = {}  # schedule: the occurrence last handled
        self._refreshed = -float("inf")
        #: automation -> (received_at up to which it saw the stage history, the journey's digest)
        self._stages_through: dict[str, tuple[datetime, str]] = {}

    def _definitions(self) -> dict[str, Loaded]:
        # In the engine's pass, process_events has just loaded the definitions: reuse them rather
        # than ask the store again; look for changes ourselves at least every second.
        engine = self.engine
        if engine._stamp is None or time.monotonic() - self._refreshed > 1.0:
            self._refreshed = time.monotonic()
            return engine.automations()
        return engine._loaded

    def run(self) -> int:
        """One pass; returns how many occurrences were found or enrolled (0 when idle)."""
        work = 0
        now = self.engine.clock.now()
        for item in self._definitions().values():
            trigger = item.current.trigger
            kind = trigger_kind(trigger)
            if kind is None:
                continue
            digest = trigger_digest(trigger)
            last = self._checked.get((item.key, digest))
            wait = CHECK_STAGES if kind == "stage" else CHECK_SLOW
            if last is None or kind == "schedule" or now - last >= wait:
                try:
                    found = self._find(item, kind, digest, now)
                except (JourneyError, LookupError, ValueError) as exc:
                    log.warning("trigger of automation %s not checked: %s", item.key, exc)
                    found = 0
                except StoreError as exc:
                    log.warning("trigger of automation %s not checked: %s", item.key, exc)
                    continue
                self._checked[(item.key, digest)] = now
                work += found
                if found:
                    self._pending[item.key] = True
            if self._pending.get(item.key, True):
                work += self._enroll_pending(item, kind, now)
        return work

    def next_moment(self, after: datetime) -> datetime | None:
        """The first schedule occurrence after ``after`` (a simulation jumps its clock there)."""
        moments = [
            next_occurrence(item.current.trigger.schedule, after)
            for item in self.engine.automations().values()
            if item.current.trigger.schedule is not None and trigger_kind(item.current.trigger) == "schedule"
        ]
        return min(moments) if moments else None

    # -- state -----------------------------------------------------------------------------------
    def _state(self, s: Session, item: Loaded, digest: str, now: datetime) -> tuple[_State, bool]:
        """The trigger's stored state, created (armed) on its first check; True when just armed."""
        rows = s.rows(
            "SELECT armed_at, since_received, last_occurrence FROM automation_triggers "
            "WHERE automation_key = ? AND trigger_digest = ?",
            [item.key, digest],
        )
        if rows:
            s.execute(
                "UPDATE automation_triggers SET checked_at = ? WHERE automation_key = ? AND trigger_digest = ?",
                [now, item.key, digest],
            )
            return _State(rows[0][0], rows[0][1], rows[0][2]), False
        # Events count from the first stored version that has this trigger (later versions that
        # only changed steps keep it).
        stored = dict(
            s.rows("SELECT version, created_at FROM automation_versions WHERE automation_key = ?", [item.key])
        )
        version = item.version
        while version - 1 in item.versions and trigger_digest(item.versions[version - 1].trigger) == digest:
            version -= 1
        since = stored.get(version) or datetime.now(UTC)
        s.execute(
            "INSERT INTO automation_triggers (automation_key, trigger_digest, armed_at, since_received, "
            "checked_at, last_occurrence) VALUES (?, ?, ?, ?, ?, NULL)",
            [item.key, digest, now, since, now],
        )
        return _State(now, since, None), True

    # -- phase 1: find ---------------------------------------------------------------------------
    def _find(self, item: Loaded, kind: str, digest: str, now: datetime) -> int:
        from percorso.analytics.stages import digest as stage_digest

        trigger = item.current.trigger
        if kind == "schedule":
            assert trigger.schedule is not None
            latest = latest_occurrence(trigger.schedule, now).isoformat()
            if self._done.get((item.key, digest)) == latest:
                return 0  # nothing new since the last pass: no query
        journey = None
        if kind in ("stage", "persona"):
            from percorso.analytics.stages import get_journey

            target = trigger.stage or trigger.persona
            assert target is not None
            journey = get_journey(self.store, target.journey)
        through = self._bring_stages_up_to_date(journey) if kind == "stage" and journey else None
        with self.store.writing() as s:
            s.lock_named(f"automation-trigger:{item.key}")
            state, armed = self._state(s, item, digest, now)
            handled = now if item.status != "active" else None
            if kind == "stage":
                assert journey is not None
                # A changed journey rebuilds everyone's history: look at everyone again, once.
                seen, shape = self._stages_through.get(item.key) or (None, None)
                seen = seen if shape == stage_digest(journey) else None
                found = self._find_stage(s, item, journey, state, handled, now, seen)
            elif kind == "persona":
                assert journey is not None
                found = self._find_persona(s, item, journey, now if armed else handled, now)
            elif kind == "date":
                found = self._find_dates(s, item, handled, now)
            else:
                found = self._find_schedule(s, item, digest, state, handled, now)
        if through is not None and journey is not None:
            self._stages_through[item.key] = (through, stage_digest(journey))
        return found

    def _bring_stages_up_to_date(self, journey: Journey) -> datetime | None:
        """Updates the journey's stage history if events arrived since; returns up to which
        ``received_at`` it is complete."""
        from percorso.analytics.stages import digest, update

        with self.store.session() as s:
            newest = s.rows("SELECT max(received_at) FROM events")[0][0]
            progress = s.rows(
                "SELECT digest, through FROM stage_progress WHERE journey_key = ?", [journey.key]
            )
        if (
            not progress
            or progress[0][0] != digest(journey)
            or (newest is not None and newest > progress[0][1])
        ):
            update(self.store, journey)
            with self.store.session() as s:
                progress = s.rows(
                    "SELECT digest, through FROM stage_progress WHERE journey_key = ?", [journey.key]
                )
        return progress[0][1] if progress else None

    def _insert_found(self, s: Session, select: str, params: list[Any]) -> int:
        """``select`` yields (contact_id, occurrence, found_at, handled_at) rows not stored yet."""
        rows = s.rows(
            "INSERT INTO trigger_occurrences (automation_key, contact_id, occurrence, found_at, handled_at) "
            f"{select} RETURNING contact_id",
            params,
        )
        return len(rows)

    def _find_stage(
        self,
        s: Session,
        item: Loaded,
        journey: Journey,
        state: _State,
        handled: datetime | None,
        now: datetime,
        seen: datetime | None,
    ) -> int:
        from percorso.analytics.stages import SAFETY_MARGIN

        trigger = item.current.trigger.stage
        assert trigger is not None
        if trigger.stage not in journey.stage_keys():
            raise LookupError(f"{trigger.stage!r} is not a stage of journey {journey.key}")
        prefix = f"stage:{journey.key}/{trigger.stage}#"
        # After the first check, only contacts with events received since the history seen then
        # can have new entries (the stage engine recomputes exactly those, with the same margin).
        recent = ""
        recent_params: list[Any] = []
        if seen is not None:
            recent = (
                " AND se.contact_id IN (SELECT i.contact_id FROM events e2 JOIN identities i "
                "ON i.identity_id = e2.identity_id WHERE e2.received_at >= ?)"
            )
            recent_params = [max(seen - SAFETY_MARGIN, state.since_received)]
        return self._insert_found(
            s,
            "SELECT CAST(? AS TEXT), x.contact_id, CAST(? AS TEXT) || CAST(x.n AS TEXT), CAST(? AS TIMESTAMPTZ), "
            "CAST(? AS TIMESTAMPTZ) FROM (SELECT se.contact_id, se.message_id, "
            "row_number() OVER (PARTITION BY se.contact_id ORDER BY se.seq) AS n FROM stage_entries se "
            f"WHERE se.journey_key = ? AND se.stage = ?{recent}) x JOIN events e ON e.message_id = x.message_id "
            "WHERE e.received_at >= ? AND NOT EXISTS (SELECT 1 FROM trigger_occurrences o "
            "WHERE o.automation_key = ? AND o.contact_id = x.contact_id "
            "AND o.occurrence = CAST(? AS TEXT) || CAST(x.n AS TEXT))",
            [
                item.key,
                prefix,
                now,
                handled,
                journey.key,
                trigger.stage,
                *recent_params,
                state.since_received,
                item.key,
                prefix,
            ],
        )

    def _find_persona(
        self, s: Session, item: Loaded, journey: Journey, handled: datetime | None, now: datetime
    ) -> int:
        from percorso.analytics.personas import find_persona, rule_sql

        trigger = item.current.trigger.persona
        assert trigger is not None
        persona = find_persona(journey, trigger.persona)
        members = rule_sql(s, persona.when, now)
        prefix = f"persona:{journey.key}/{persona.key}@"
        pattern = like_pattern(prefix) + "%"
        found = self._insert_found(
            s,
            "SELECT CAST(? AS TEXT), m.contact_id, CAST(? AS TEXT), CAST(? AS TIMESTAMPTZ), CAST(? AS TIMESTAMPTZ) "
            f"FROM ({members.text}) m WHERE NOT EXISTS (SELECT 1 FROM trigger_occurrences o "
            "WHERE o.automation_key = ? AND o.contact_id = m.contact_id AND o.occurrence LIKE ? ESCAPE '\\')",
            [item.key, prefix + now.isoformat(), now, handled, *members.params, item.key, pattern],
        )
        # Who stopped matching leaves: matching again later is a new occurrence.
        s.execute(
            "DELETE FROM trigger_occurrences WHERE automation_key = ? AND occurrence LIKE ? ESCAPE '\\' "
            f"AND contact_id NOT IN ({members.text})",
            [item.key, pattern, *members.params],
        )
        return found if handled is None else 0

    def _find_dates(self, s: Session, item: Loaded, handled: datetime | None, now: datetime) -> int:
        from percorso.automation.store import insert_rows

        trigger = item.current.trigger.date
        assert trigger is not None
        prefix = f"date:{trigger.trait}="
        shift = timedelta(seconds=duration_seconds(trigger.after or trigger.before or "0m"))
        if trigger.before:
            shift = -shift
        # The store narrows to contacts whose date (its first ten characters, YYYY-MM-DD) is near
        # the due window — a few days, whatever the time zones; the exact moment of those few is
        # worked out here.
        low = (now - LATE_LIMIT - shift - timedelta(days=2)).date().isoformat()
        high = (now - shift + timedelta(days=2)).date().isoformat()
        value, param = s.json_text("c.traits", trigger.trait)
        rows = s.rows(
            f"SELECT d.contact_id, d.v FROM (SELECT c.contact_id, {value} AS v FROM contacts c "
            "WHERE c.merged_into IS NULL) d WHERE substr(d.v, 1, 10) BETWEEN ? AND ? AND NOT EXISTS "
            "(SELECT 1 FROM trigger_occurrences o WHERE o.automation_key = ? AND o.contact_id = d.contact_id "
            "AND o.occurrence = CAST(? AS TEXT) || d.v)",
            [param, low, high, item.key, prefix],
        )
        found: list[list[Any]] = []
        for contact_id, raw in rows:
            moment = date_moment(trigger, raw)
            if moment is not None and moment > now:
                continue  # not yet
            late = moment is None or now - moment > LATE_LIMIT
            found.append([item.key, int(contact_id), prefix + raw, now, now if late else handled])
        if found:
            insert_rows(s, "trigger_occurrences", OCCURRENCE_COLUMNS, found)
        return sum(1 for row in found if row[4] is None)

    def _find_schedule(
        self, s: Session, item: Loaded, digest: str, state: _State, handled: datetime | None, now: datetime
    ) -> int:
        from percorso.analytics.personas import rule_sql

        automation = item.current
        assert automation.trigger.schedule is not None and automation.audience is not None
        latest = latest_occurrence(automation.trigger.schedule, now)
        done = state.last_occurrence
        if latest <= state.armed_at or (done is not None and latest <= datetime.fromisoformat(done)):
            self._done[(item.key, digest)] = latest.isoformat()
            return 0
        occurrence = f"schedule:{latest.isoformat()}"
        found = 0
        if handled is not None or now - latest > LATE_LIMIT:
            log.info(
                "automation %s: occurrence %s skipped (paused or too late)", item.key, latest.isoformat()
            )
        else:
            audience = rule_sql(s, automation.audience, now)
            found = self._insert_found(
                s,
                "SELECT CAST(? AS TEXT), m.contact_id, CAST(? AS TEXT), CAST(? AS TIMESTAMPTZ), "
                f"CAST(NULL AS TIMESTAMPTZ) FROM ({audience.text}) m WHERE NOT EXISTS (SELECT 1 FROM "
                "trigger_occurrences o WHERE o.automation_key = ? AND o.contact_id = m.contact_id "
                "AND o.occurrence = ?)",
                [item.key, occurrence, now, *audience.params, item.key, occurrence],
            )
        # Earlier occurrences, all handled, are no longer needed to keep this one exactly-once.
        s.execute(
            "DELETE FROM trigger_occurrences WHERE automation_key = ? AND occurrence LIKE 'schedule:%' "
            "AND occurrence <> ? AND handled_at IS NOT NULL",
            [item.key, occurrence],
        )
        s.execute(
            "UPDATE automation_triggers SET last_occurrence = ? WHERE automation_key = ? AND trigger_digest = ?",
            [latest.isoformat(), item.key, digest],
        )
        self._done[(item.key, digest)] = latest.isoformat()
        return found

    # -- phase 2: enroll -------------------------------------------------------------------------
    def _enroll_pending(self, item: Loaded, kind: str, now: datetime) -> int:
        from percorso.analytics.personas import rule_sql

        automation = item.current
        with self.store.writing() as s:
            s.lock_named(f"automation-trigger:{item.key}")
            rows = s.rows(
                "SELECT o.contact_id, coalesce(c.merged_into, o.contact_id), o.occurrence "
                "FROM trigger_occurrences o JOIN contacts c ON c.contact_id = o.contact_id "
                "WHERE o.automation_key = ? AND o.handled_at IS NULL ORDER BY o.found_at, o.contact_id LIMIT ?",
                [item.key, CHUNK],
            )
            self._pending[item.key] = len(rows) == CHUNK
            if not rows:
                return 0
            entered = 0
            if item.status == "active":
                allowed = {int(r[1]) for r in rows}
                if automation.audience is not None and kind != "schedule":  # a schedule's is its own
                    audience = rule_sql(s, automation.audience, now, sorted(allowed))
                    allowed = {int(r[0]) for r in s.rows(audience.text, audience.params)}
                found = [(int(live), str(occurrence)) for _, live, occurrence in rows if int(live) in allowed]
                entered = self.engine.enroll_found(s, item, found, now) if found else 0
            values = ", ".join("(CAST(? AS BIGINT), CAST(? AS TEXT))" for _ in rows)
            s.execute(
                f"UPDATE trigger_occurrences SET handled_at = ? FROM (VALUES {values}) AS v(contact_id, occurrence) "
                "WHERE trigger_occurrences.automation_key = ? AND trigger_occurrences.contact_id = v.contact_id "
                "AND trigger_occurrences.occurrence = v.occurrence",
                [now, *[x for r in rows for x in (r[0], r[2])], item.key],
            )
        self.engine.stats["trigger_enrolled"] += entered
        return len(rows)


__all__ = [
    "LATE_LIMIT",
    "TriggerRunner",
    "date_moment",
    "latest_occurrence",
    "next_occurrence",
    "reference_problems",
    "trigger_digest",
]
