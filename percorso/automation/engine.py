"""The automation engine: enroll on events, walk the steps, wait durably, act through an outbox.

Three loops, each one transaction per batch, safe to run in several processes at once:

* :meth:`Engine.process_events` reads events stored since its cursor (resolved to their contact
  at query time), and for each: exits contacts whose goal it is, wakes contacts waiting for it,
  and enrolls contacts it triggers — then walks each of them forward to their next wait;
* :meth:`Engine.run_due` takes enrollments whose timer fell due (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL, so workers share them) and walks them on;
* :meth:`Engine.deliver` claims due outbox rows, sends them (SMTP, webhook, an event back into
  the store) and marks them sent, or schedules a retry with backoff.

A step's decision and its action are written in the same transaction: the outbox row carries a
deterministic idempotency key (``automation/enrollment/seq``), so a crash before the commit
redoes the same decision with the same key, and a crash after it leaves the row for a sender.
Delivery is at-least-once with that key on the wire (``Message-ID``, ``Idempotency-Key``); the
window for a duplicate is between the remote accepting a message and the ``sent`` commit.

Time comes from an injectable :class:`Clock`, so tests run "24 hours later" in milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import msgspec

from percorso.analytics.personas import rule_sql
from percorso.analytics.sql import RESOLVED_EVENTS, condition_sql
from percorso.automation.definition import EXIT, Automation, Cooldown, Step, successors
from percorso.automation.store import (
    ENROLLMENT_COLUMNS,
    decode_definition,
    insert_rows,
    instance_secret,
    update_enrollments,
)
from percorso.journey.definition import Condition, duration_seconds
from percorso.store import Store
from percorso.store.base import Session, StoreError

log = logging.getLogger("percorso.automation")

MAX_STEPS_PER_RUN = 100
MAX_ATTEMPTS = 8
CLAIM_TIMEOUT = timedelta(minutes=5)  # a "sending" row older than this belonged to a dead worker
OVERLAP = timedelta(seconds=5)  # PostgreSQL: transactions that commit out of received_at order
GOAL_WINDOW = timedelta(days=30)  # a goal reached later than this after entry is not a conversion


# -- time ----------------------------------------------------------------------------------


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock(Clock):
    """A clock tests move by hand: ``clock.advance(hours=24)``."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime.now(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(**delta)
            return self._now


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSettings:
    #: Public address of this server, for unsubscribe and tracking links in emails.
    base_url: str = "http://127.0.0.1:8000"
    event_batch: int = 5000
    due_batch: int = 2000
    delivery_batch: int = 100
    worker_id: str = "worker"


# -- records -------------------------------------------------------------------------------


@dataclass
class Enrollment:
    enrollment_id: int
    automation_key: str
    version: int
    contact_id: int
    status: str  # active | waiting | holdout | done | exited
    step: str | None
    seq: int
    due_at: datetime | None
    waiting_since: datetime | None
    variant: str | None
    entered_at: datetime
    exited_at: datetime | None
    exit_reason: str | None
    trigger_id: str
    entered_pos: datetime
    goal_at: datetime | None
    live_contact: int = 0
    new: bool = False
    dirty: bool = False

    def row(self) -> list[Any]:
        return [getattr(self, name) for name, _ in ENROLLMENT_COLUMNS]

    @property
    def inside(self) -> bool:
        return self.status in ("active", "waiting")


_ENROLLMENT_SELECT = ", ".join(f"n.{name}" for name, _ in ENROLLMENT_COLUMNS)


@dataclass
class Loaded:
    key: str
    version: int
    status: str
    versions: dict[int, Automation]
    created_at: datetime

    @property
    def current(self) -> Automation:
        return self.versions[self.version]


@dataclass
class Profile:
    contact_id: int
    traits: dict[str, Any]
    consent: str | None
    email: str | None
    user_id: str | None
    anonymous_id: str | None
    unsubscribed: set[str]


@dataclass
class Batch:
    """What one transaction will write."""

    now: datetime
    position: datetime
    logs: list[list[Any]] = field(default_factory=list)
    outbox: list[list[Any]] = field(default_factory=list)
    onsite: list[list[Any]] = field(default_factory=list)
    traits: dict[int, dict[str, Any]] = field(default_factory=dict)
    queued: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))
    touched: dict[int, Enrollment] = field(default_factory=dict)


OUTBOX_COLUMNS = (
    ("idempotency_key", "TEXT"),
    ("enrollment_id", "BIGINT"),
    ("automation_key", "TEXT"),
    ("step", "TEXT"),
    ("contact_id", "BIGINT"),
    ("channel", "TEXT"),
    ("category", "TEXT"),
    ("payload", "JSON"),
    ("status", "TEXT"),
    ("attempts", "INTEGER"),
    ("next_attempt_at", "TIMESTAMPTZ"),
    ("created_at", "TIMESTAMPTZ"),
)
LOG_COLUMNS = (
    ("enrollment_id", "BIGINT"),
    ("seq", "INTEGER"),
    ("automation_key", "TEXT"),
    ("contact_id", "BIGINT"),
    ("logged_at", "TIMESTAMPTZ"),
    ("step", "TEXT"),
    ("outcome", "TEXT"),
    ("detail", "TEXT"),
)
ONSITE_COLUMNS = (
    ("idempotency_key", "TEXT"),
    ("contact_id", "BIGINT"),
    ("automation_key", "TEXT"),
    ("message", "JSON"),
    ("created_at", "TIMESTAMPTZ"),
    ("expires_at", "TIMESTAMPTZ"),
)


def bucket(*parts: object) -> float:
    """A stable number in [0, 100) from ``parts``: splits and holdouts are deterministic."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class Engine:
    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        settings: EngineSettings | None = None,
        smtp: Any = None,
        classifier: Any = None,
    ):
        from percorso.automation.actions.email import SmtpSettings
        from percorso.channels import ChannelClassifier, load_rules

        self.store = store
        self.clock = clock or Clock()
        self.settings = settings or EngineSettings()
        self.smtp = smtp or SmtpSettings.from_env()
        self.classifier = classifier or ChannelClassifier(load_rules(None))
        self._loaded: dict[str, Loaded] = {}
        self._stamp: Any = None
        self._secret: str | None = None
        self._seen: dict[str, datetime] = {}
        self._last_rescan = datetime.min.replace(tzinfo=UTC)
        self.stats: dict[str, int] = defaultdict(int)

    # -- definitions ---------------------------------------------------------------------
    def automations(self) -> dict[str, Loaded]:
        """Every stored automation with all its versions (reloaded when one changes)."""
        with self.store.session() as s:
            stamp = s.rows("SELECT count(*), max(updated_at), max(version) FROM automations")[0]
            if stamp == self._stamp:
                return self._loaded
            heads = s.rows("SELECT automation_key, version, status, created_at FROM automations")
            versions = s.rows("SELECT automation_key, version, definition FROM automation_versions")
        loaded: dict[str, Loaded] = {}
        for key, version, status, created_at in heads:
            loaded[key] = Loaded(key, int(version), str(status), {}, created_at)
        for key, version, definition in versions:
            if key in loaded:
                loaded[key].versions[int(version)] = decode_definition(definition, key)
        self._loaded, self._stamp = loaded, stamp
        return loaded

    @property
    def secret(self) -> str:
        if self._secret is None:
            self._secret = instance_secret(self.store, "link_secret")
        return self._secret

    # -- the event loop ------------------------------------------------------------------
    def _conditions(self, loaded: dict[str, Loaded]) -> list[tuple[str, str, int, str, Condition]]:
        """(role, key, version, step, condition) for every trigger, goal and wait_for."""
        out: list[tuple[str, str, int, str, Condition]] = []
        for item in loaded.values():
            trigger = item.current.trigger.condition()
            if trigger is not None and item.status == "active":
                out.append(("trigger", item.key, item.version, "", trigger))
            for version, automation in item.versions.items():
                if automation.goal is not None:
                    out.append(("goal", item.key, version, "", automation.goal))
                for step in automation.steps:
                    if step.wait_for is not None:
                        out.append(("wait_for", item.key, version, step.id, step.wait_for.event))
        return out

    def _cursor(self, s: Session) -> tuple[datetime, str]:
        rows = s.rows("SELECT received_at FROM automation_cursor WHERE name = 'events'")
        if rows:
            return rows[0][0], self._cursor_id
        # First run: start when the first automation was stored — history enrolls nobody.
        first = s.rows("SELECT min(created_at) FROM automations")[0][0]
        start = first or datetime.now(UTC)
        s.execute(
            "INSERT INTO automation_cursor (name, received_at, updated_at) VALUES ('events', ?, ?)",
            [start, start],
        )
        return start, ""

    _cursor_id = ""

    def process_events(self) -> int:
        """Handles events stored since the last call; returns how many were relevant."""
        loaded = self.automations()
        self.secret  # noqa: B018 - created outside the batch's transaction
        conditions = self._conditions(loaded)
        if not conditions:
            return 0
        with self.store.writing() as s:
            s.lock_named("automation-events")
            cursor_at, cursor_id = self._cursor(s)
            rows = self._fetch_events(s, conditions, cursor_at, cursor_id)
            wall = datetime.now(UTC)
            if self.store.engine != "duckdb" and wall - self._last_rescan > timedelta(seconds=1):
                self._last_rescan = wall
                late = self._fetch_events(s, conditions, cursor_at - OVERLAP, "", until=cursor_at)
                rows = [r for r in late if r["message_id"] not in self._seen] + rows
            if not rows:
                # Nothing relevant arrived: move the cursor up (keeping the overlap for late
                # commits) so the next scan does not re-read irrelevant events.
                if wall - cursor_at > OVERLAP * 2:
                    s.execute(
                        "UPDATE automation_cursor SET received_at = ?, updated_at = ? WHERE name = 'events' "
                        "AND received_at < ?",
                        [wall - OVERLAP, wall, wall - OVERLAP],
                    )
                    self._cursor_id = ""
                return 0
            batch = Batch(now=self.clock.now(), position=rows[-1]["received_at"])
            self._handle_events(s, loaded, conditions, rows, batch)
            self._flush(s, batch)
            newest = max(r["received_at"] for r in rows)
            if newest >= cursor_at:
                s.execute(
                    "UPDATE automation_cursor SET received_at = ?, updated_at = ? WHERE name = 'events'",
                    [newest, wall],
                )
                self._cursor_id = max(r["message_id"] for r in rows if r["received_at"] == newest)
        for r in rows:
            self._seen[r["message_id"]] = r["received_at"]
        if len(self._seen) > 50_000:
            horizon = newest - OVERLAP * 2
            self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
        self.stats["events"] += len(rows)
        return len(rows)

    def _fetch_events(
        self,
        s: Session,
        conditions: list[tuple[str, str, int, str, Condition]],
        after: datetime,
        after_id: str,
        *,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        flags: list[str] = []
        params: list[Any] = []
        for j, (_, _, _, _, cond) in enumerate(conditions):
            sql = condition_sql(s, cond)
            flags.append(f"({sql.text}) AS m{j}")
            params += sql.params
        # The outer query keeps rows where any flag is set: each condition is compiled once.
        anyof = " OR ".join(f"m{j}" for j in range(len(conditions)))
        if until is not None:
            window = "e.received_at > ? AND e.received_at <= ?"
            window_params: list[Any] = [after, until]
        else:
            window = "(e.received_at > ? OR (e.received_at = ? AND e.message_id > ?))"
            window_params = [after, after, after_id]
        return s.dicts(
            f"SELECT * FROM (SELECT e.message_id, e.received_at, e.timestamp, e.event, e.type, i.contact_id, "
            f"{', '.join(flags)} FROM {RESOLVED_EVENTS} WHERE {window}) f WHERE {anyof} "
            "ORDER BY received_at, timestamp, message_id LIMIT ?",
            [*params, *window_params, self.settings.event_batch],
        )

    def _load_enrollments(
        self, s: Session, contacts: Iterable[int], *, lock: bool = True
    ) -> list[Enrollment]:
        ids = sorted(set(contacts))
        if not ids:
            return []
        out: list[Enrollment] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            marks = ", ".join("?" for _ in chunk)
            rows = s.rows(
                f"SELECT {_ENROLLMENT_SELECT}, coalesce(c.merged_into, n.contact_id) AS live "
                f"FROM enrollments n LEFT JOIN contacts c ON c.contact_id = n.contact_id "
                f"WHERE n.contact_id IN ({marks}) OR n.contact_id IN "
                f"(SELECT contact_id FROM contacts WHERE merged_into IN ({marks})) "
                f"ORDER BY n.enrollment_id",
                [*chunk, *chunk],
            )
            if lock and s.skip_locked and rows:
                s.execute(
                    "SELECT enrollment_id FROM enrollments WHERE enrollment_id IN "
                    f"({', '.join('?' for _ in rows)}) ORDER BY enrollment_id FOR UPDATE",
                    [r[0] for r in rows],
                )
            for row in rows:
                enrollment = Enrollment(*row[:-1])
                enrollment.live_contact = int(row[-1])
                out.append(enrollment)
        return out

    def _handle_events(
        self,
        s: Session,
        loaded: dict[str, Loaded],
        conditions: list[tuple[str, str, int, str, Condition]],
        rows: list[dict[str, Any]],
        batch: Batch,
    ) -> None:
        by_contact: dict[tuple[str, int], list[Enrollment]] = defaultdict(list)
        for enrollment in self._load_enrollments(s, (r["contact_id"] for r in rows)):
            by_contact[(enrollment.automation_key, enrollment.live_contact)].append(enrollment)
        for row in rows:
            contact = int(row["contact_id"])
            for j, (role, key, version, step_id, _) in enumerate(conditions):
                if not row[f"m{j}"]:
                    continue
                item = loaded[key]
                mine = by_contact[(key, contact)]
                if role == "goal":
                    self._goal(s, item, mine, version, row, batch)
                elif role == "wait_for":
                    for enrollment in mine:
                        if (
                            enrollment.status == "waiting"
                            and enrollment.version == version
                            and enrollment.step == step_id
                            and enrollment.waiting_since is not None
                            and row["received_at"] > enrollment.waiting_since
                            and item.status == "active"
                        ):
                            step = item.versions[version].step(step_id)
                            assert step.wait_for is not None
                            self._log(batch, enrollment, step_id, "then", row["event"] or row["type"])
                            target = successors(
                                item.versions[version], item.versions[version].step_index()[step_id]
                            )
                            self._walk(s, batch, item.versions[version], enrollment, target[0].target)
                elif role == "trigger" and row["received_at"] >= item.created_at:
                    entered = self._enroll(
                        s, item, contact, mine, row["message_id"], row["received_at"], batch
                    )
                    if entered is not None:
                        mine.append(entered)

    def _goal(
        self,
        s: Session,
        item: Loaded,
        mine: list[Enrollment],
        version: int,
        row: dict[str, Any],
        batch: Batch,
    ) -> None:
        for enrollment in mine:
            if (
                enrollment.version != version
                or enrollment.goal_at is not None
                or enrollment.trigger_id == row["message_id"]
                or row["received_at"] < enrollment.entered_pos
                or enrollment.status == "exited"
                or batch.now - enrollment.entered_at > GOAL_WINDOW
            ):
                continue
            enrollment.goal_at = batch.now
            enrollment.dirty = True
            batch.touched[enrollment.enrollment_id] = enrollment
            if enrollment.inside:
                self._log(batch, enrollment, enrollment.step or "", "goal", row["event"] or row["type"])
                self._finish(enrollment, batch, "exited", "goal")
            elif enrollment.status == "holdout":
                self._log(batch, enrollment, "holdout", "goal", row["event"] or row["type"])

    def _enroll(
        self,
        s: Session,
        item: Loaded,
        contact: int,
        mine: list[Enrollment],
        trigger_id: str,
        position: datetime,
        batch: Batch,
    ) -> Enrollment | None:
        automation = item.current
        if any(e.trigger_id == trigger_id for e in mine):
            return None  # this event already enrolled them (a replayed batch)
        policy = automation.reentry
        if mine:
            if policy == "never":
                return None
            if any(e.inside for e in mine):
                return None
            if isinstance(policy, Cooldown):
                last = max(e.entered_at for e in mine)
                if (batch.now - last).total_seconds() < duration_seconds(policy.cooldown):
                    return None
        if automation.audience is not None:
            sql = rule_sql(s, automation.audience, batch.now, [contact])
            if not s.rows(sql.text, sql.params):
                return None
        enrollment_id = s.next_ids("enrollment_id_seq", 1)[0]
        enrollment = Enrollment(
            enrollment_id=enrollment_id,
            automation_key=item.key,
            version=item.version,
            contact_id=contact,
            status="active",
            step=None,
            seq=0,
            due_at=None,
            waiting_since=None,
            variant=None,
            entered_at=batch.now,
            exited_at=None,
            exit_reason=None,
            trigger_id=trigger_id,
            entered_pos=position,
            goal_at=None,
            live_contact=contact,
            new=True,
            dirty=True,
        )
        self._log(batch, enrollment, "trigger", "entered", trigger_id)
        self.stats["enrolled"] += 1
        self._walk(s, batch, automation, enrollment, automation.steps[0].id)
        return enrollment

    def enroll(self, key: str, contact_id: int, *, reason: str = "api") -> dict[str, Any]:
        """Enrolls a contact by API call (the trigger ``api: true``, or any automation by hand)."""
        loaded = self.automations()
        if key not in loaded:
            from percorso.automation.store import AutomationNotFound

            raise AutomationNotFound(key)
        item = loaded[key]
        self.secret  # noqa: B018 - created outside the transaction below
        if item.status != "active":
            raise ValueError(f"automation {key!r} is paused: resume it before enrolling contacts")
        with self.store.writing() as s:
            live = s.rows(
                "SELECT coalesce(merged_into, contact_id) FROM contacts WHERE contact_id = ?", [contact_id]
            )
            if not live:
                raise LookupError(f"there is no contact {contact_id}")
            contact = int(live[0][0])
            batch = Batch(now=self.clock.now(), position=datetime.now(UTC))
            mine = [e for e in self._load_enrollments(s, [contact]) if e.automation_key == key]
            trigger_id = f"{reason}:{batch.now.isoformat()}"
            enrollment = self._enroll(s, item, contact, mine, trigger_id, batch.position, batch)
            self._flush(s, batch)
        if enrollment is None:
            return {"enrolled": False, "reason": "the re-entry policy or the audience kept the contact out"}
        return {"enrolled": True, "enrollment": enrollment.enrollment_id, "status": enrollment.status}

    # -- timers ----------------------------------------------------------------------------
    def run_due(self) -> int:
        """Walks on every enrollment whose timer fell due; returns how many."""
        loaded = self.automations()
        self.secret  # noqa: B018 - created outside the batch's transaction
        active = [k for k, v in loaded.items() if v.status == "active"]
        if not active:
            return 0
        now = self.clock.now()
        with self.store.writing() as s:
            marks = ", ".join("?" for _ in active)
            rows = s.rows(
                f"SELECT {_ENROLLMENT_SELECT}, n.contact_id FROM enrollments n "
                f"WHERE n.due_at <= ? AND n.status IN ('active', 'waiting') AND n.automation_key IN ({marks}) "
                f"ORDER BY n.due_at LIMIT ?{s.skip_locked}",
                [now, *active, self.settings.due_batch],
            )
            if not rows:
                return 0
            batch = Batch(now=now, position=datetime.now(UTC))
            for row in rows:
                enrollment = Enrollment(*row[:-1])
                enrollment.live_contact = int(row[-1])
                automation = loaded[enrollment.automation_key].versions[enrollment.version]
                self._resume(s, batch, automation, enrollment)
            self._flush(s, batch)
        self.stats["due"] += len(rows)
        return len(rows)

    def _resume(self, s: Session, batch: Batch, automation: Automation, enrollment: Enrollment) -> None:
        enrollment.dirty = True
        enrollment.due_at = None
        index = automation.step_index()
        if enrollment.step not in index:
            self._finish(enrollment, batch, "exited", f"step {enrollment.step!r} no longer exists")
            return
        position = index[enrollment.step]
        step = automation.steps[position]
        if enrollment.status == "active":  # held (quiet hours): run the step itself now
            self._walk(s, batch, automation, enrollment, step.id, resumed=True)
            return
        edges = successors(automation, position)
        if step.wait_for is not None:
            self._log(batch, enrollment, step.id, "timed_out", None)
            target = edges[1].target
        else:
            self._log(batch, enrollment, step.id, "waited", None)
            target = edges[0].target
        enrollment.status = "active"
        enrollment.waiting_since = None
        self._walk(s, batch, automation, enrollment, target)

    # -- walking ---------------------------------------------------------------------------
    def _walk(
        self,
        s: Session,
        batch: Batch,
        automation: Automation,
        enrollment: Enrollment,
        target: str,
        *,
        resumed: bool = False,
    ) -> None:
        batch.touched[enrollment.enrollment_id] = enrollment
        enrollment.dirty = True
        index = automation.step_index()
        for _ in range(MAX_STEPS_PER_RUN):
            if target == EXIT:
                self._finish(enrollment, batch, "done", "completed")
                return
            position = index[target]
            step = automation.steps[position]
            edges = successors(automation, position)
            enrollment.step = step.id
            enrollment.status = "active"
            kind = step.kind
            if kind == "wait" and step.wait is not None:
                self._wait(
                    batch, enrollment, step, batch.now + timedelta(seconds=duration_seconds(step.wait))
                )
                return
            if kind == "wait_until" and step.wait_until is not None:
                until = self._wait_until(s, enrollment, step)
                if until is None:
                    self._log(
                        batch, enrollment, step.id, "skipped", f"trait {step.wait_until.trait} is not a date"
                    )
                elif until > batch.now:
                    self._wait(batch, enrollment, step, until)
                    return
                else:
                    self._log(batch, enrollment, step.id, "passed", "the date is already past")
                target = edges[0].target
                continue
            if kind == "wait_for" and step.wait_for is not None:
                self._wait(
                    batch,
                    enrollment,
                    step,
                    batch.now + timedelta(seconds=duration_seconds(step.wait_for.timeout)),
                )
                enrollment.waiting_since = batch.position
                return
            if kind == "condition" and step.condition is not None:
                sql = rule_sql(s, step.condition, batch.now, [enrollment.live_contact])
                ok = bool(s.rows(sql.text, sql.params))
                self._log(batch, enrollment, step.id, "then" if ok else "otherwise", None)
                target = edges[0 if ok else 1].target
                continue
            if kind == "split" and step.split is not None:
                roll = bucket(automation.key, enrollment.enrollment_id, step.id)
                edge = edges[-1]
                acc = 0.0
                for branch, candidate in zip(step.split, edges, strict=True):
                    acc += branch.percent
                    if roll < acc:
                        edge = candidate
                        break
                enrollment.variant = (
                    f"{enrollment.variant}/{edge.label}" if enrollment.variant else edge.label
                )
                self._log(batch, enrollment, step.id, edge.label, None)
                target = edge.target
                continue
            if kind == "holdout" and step.holdout is not None:
                if bucket(automation.key, "holdout", enrollment.live_contact) < step.holdout:
                    enrollment.variant = "holdout"
                    enrollment.status = "holdout"
                    enrollment.due_at = None
                    self._log(batch, enrollment, step.id, "holdout", None)
                    return
                enrollment.variant = enrollment.variant or "treatment"
                self._log(batch, enrollment, step.id, "treatment", None)
                target = edges[0].target
                continue
            if kind == "exit":
                self._log(batch, enrollment, step.id, "exit", None)
                self._finish(enrollment, batch, "exited", "exit step")
                return
            # An action.
            if step.email is not None and automation.quiet_hours is not None and not resumed:
                opens = self._quiet_until(s, automation, enrollment, batch.now)
                if opens is not None:
                    enrollment.due_at = opens
                    enrollment.status = "active"
                    self._log(batch, enrollment, step.id, "held", f"quiet hours until {opens.isoformat()}")
                    return
            resumed = False
            from percorso.automation.actions.run import act

            outcome, detail = act(self, s, batch, automation, enrollment, step)
            self._log(batch, enrollment, step.id, outcome, detail)
            target = edges[0].target
        self._finish(enrollment, batch, "exited", f"more than {MAX_STEPS_PER_RUN} steps at once")

    def _wait(self, batch: Batch, enrollment: Enrollment, step: Step, until: datetime) -> None:
        enrollment.status = "waiting"
        enrollment.due_at = until
        self._log(batch, enrollment, step.id, "waiting", until.isoformat())

    def _finish(self, enrollment: Enrollment, batch: Batch, status: str, reason: str) -> None:
        enrollment.status = status
        enrollment.exit_reason = reason
        enrollment.exited_at = batch.now
        enrollment.due_at = None
        enrollment.waiting_since = None
        enrollment.dirty = True
        batch.touched[enrollment.enrollment_id] = enrollment
        if status == "done":
            self._log(batch, enrollment, "end", "completed", None)

    def _log(self, batch: Batch, enrollment: Enrollment, step: str, outcome: str, detail: str | None) -> None:
        enrollment.seq += 1
        enrollment.dirty = True
        batch.touched[enrollment.enrollment_id] = enrollment
        batch.logs.append(
            [
                enrollment.enrollment_id,
                enrollment.seq,
                enrollment.automation_key,
                enrollment.live_contact,
                batch.now,
                step,
                outcome,
                detail[:500] if detail else None,
            ]
        )

    def _wait_until(self, s: Session, enrollment: Enrollment, step: Step) -> datetime | None:
        assert step.wait_until is not None
        profile = self.profile(s, enrollment.live_contact)
        raw = profile.traits.get(step.wait_until.trait) if profile else None
        if not isinstance(raw, str):
            return None
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if step.wait_until.before:
            when -= timedelta(seconds=duration_seconds(step.wait_until.before))
        if step.wait_until.after:
            when += timedelta(seconds=duration_seconds(step.wait_until.after))
        return when

    def _quiet_until(
        self, s: Session, automation: Automation, enrollment: Enrollment, now: datetime
    ) -> datetime | None:
        """When the contact's quiet hours end, if ``now`` is inside them (else None)."""
        quiet = automation.quiet_hours
        assert quiet is not None
        profile = self.profile(s, enrollment.live_contact)
        zone_name = (profile.traits.get(quiet.timezone_trait) if profile else None) or quiet.default_timezone
        try:
            zone = ZoneInfo(str(zone_name))
        except (KeyError, ValueError, OSError):
            zone = ZoneInfo(quiet.default_timezone)
        local = now.astimezone(zone)
        start = local.replace(hour=int(quiet.start[:2]), minute=int(quiet.start[3:]), second=0, microsecond=0)
        end = local.replace(hour=int(quiet.end[:2]), minute=int(quiet.end[3:]), second=0, microsecond=0)
        if start < end:  # e.g. 13:00-15:00
            inside = start <= local < end
        else:  # crosses midnight, e.g. 21:00-08:00
            inside = local >= start or local < end
            if local >= start:
                end += timedelta(days=1)
        return end.astimezone(UTC) if inside else None

    # -- profiles --------------------------------------------------------------------------
    def profile(self, s: Session, contact_id: int) -> Profile | None:
        cache: dict[int, Profile | None] = self.__dict__.setdefault("_profiles", {})
        if contact_id in cache:
            return cache[contact_id]
        rows = s.rows(
            "SELECT coalesce(merged_into, contact_id), traits, consent FROM contacts WHERE contact_id = ?",
            [contact_id],
        )
        if not rows:
            cache[contact_id] = None
            return None
        live = int(rows[0][0])
        if live != contact_id:
            rows = s.rows("SELECT contact_id, traits, consent FROM contacts WHERE contact_id = ?", [live])
        traits = msgspec.json.decode(rows[0][1]) if rows[0][1] else {}
        ids = dict(
            s.rows(
                "SELECT kind, min(value) FROM identities WHERE contact_id = ? GROUP BY kind",
                [live],
            )
        )
        unsubscribed = {r[0] for r in s.rows("SELECT channel FROM unsubscribes WHERE contact_id = ?", [live])}
        email = traits.get("email") if isinstance(traits.get("email"), str) else None
        profile = Profile(
            contact_id=live,
            traits=traits if isinstance(traits, dict) else {},
            consent=rows[0][2],
            email=ids.get("email") or email,
            user_id=ids.get("user_id"),
            anonymous_id=ids.get("anonymous_id"),
            unsubscribed=unsubscribed,
        )
        cache[contact_id] = profile
        return profile

    # -- writing ---------------------------------------------------------------------------
    def _flush(self, s: Session, batch: Batch) -> None:
        new = [e.row() for e in batch.touched.values() if e.new]
        changed = [e.row() for e in batch.touched.values() if e.dirty and not e.new]
        if new:
            insert_rows(s, "enrollments", ENROLLMENT_COLUMNS, new)
        if changed:
            update_enrollments(s, changed)
        if batch.logs:
            insert_rows(s, "enrollment_log", LOG_COLUMNS, batch.logs)
        if batch.outbox:
            insert_rows(s, "outbox", OUTBOX_COLUMNS, batch.outbox, conflict=" ON CONFLICT DO NOTHING")
        if batch.onsite:
            insert_rows(
                s, "onsite_messages", ONSITE_COLUMNS, batch.onsite, conflict=" ON CONFLICT DO NOTHING"
            )
        for contact_id, traits in batch.traits.items():
            s.execute(
                "UPDATE contacts SET traits = ?, traits_updated_at = ? WHERE contact_id = ?",
                [msgspec.json.encode(traits).decode(), batch.now, contact_id],
            )
        self.__dict__.pop("_profiles", None)
        for e in batch.touched.values():
            e.new = e.dirty = False

    # -- delivery --------------------------------------------------------------------------
    def deliver(self) -> int:
        """Sends due outbox rows; returns how many were attempted."""
        from percorso.automation.actions.run import deliver_one

        loaded = self.automations()
        paused = [k for k, v in loaded.items() if v.status != "active"]
        now = self.clock.now()
        with self.store.writing() as s:
            # Rows a dead worker claimed and never finished go back to the queue.
            s.execute(
                "UPDATE outbox SET status = 'pending', claimed_at = NULL WHERE status = 'sending' AND claimed_at < ?",
                [datetime.now(UTC) - CLAIM_TIMEOUT],
            )
            skip = f" AND automation_key NOT IN ({', '.join('?' for _ in paused)})" if paused else ""
            rows = s.dicts(
                "SELECT idempotency_key, enrollment_id, automation_key, step, contact_id, channel, category, "
                f"payload, attempts FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?{skip} "
                f"ORDER BY next_attempt_at LIMIT ?{s.skip_locked}",
                [now, *paused, self.settings.delivery_batch],
            )
            if rows:
                s.execute(
                    "UPDATE outbox SET status = 'sending', claimed_at = ? WHERE idempotency_key IN "
                    f"({', '.join('?' for _ in rows)})",
                    [datetime.now(UTC), *[r["idempotency_key"] for r in rows]],
                )
        for row in rows:
            deliver_one(self, row)
        self.stats["delivered"] += len(rows)
        return len(rows)

    # -- links -----------------------------------------------------------------------------
    def sign(self, value: str) -> str:
        mac = hmac.new(self.secret.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{quote(value, safe='')}.{mac}"

    def verify(self, token: str) -> str | None:
        from urllib.parse import unquote

        value, _, mac = token.rpartition(".")
        plain = unquote(value)
        expected = hmac.new(self.secret.encode(), plain.encode(), hashlib.sha256).hexdigest()[:32]
        return plain if value and hmac.compare_digest(mac, expected) else None

    # -- running ---------------------------------------------------------------------------
    def tick(self) -> int:
        """One pass of every loop; returns the work done (0 when idle)."""
        return self.process_events() + self.run_due() + self.deliver()

    def run_until_idle(self, max_passes: int = 1000) -> int:
        total = 0
        for _ in range(max_passes):
            done = self.tick()
            total += done
            if not done:
                break
        return total


class AutomationWorker(threading.Thread):
    """Runs the engine inside ``percorso serve`` (embedded store) or ``percorso worker``: wakes at
    once when events are stored (in-process signal, or PostgreSQL NOTIFY), and at least every
    ``interval`` seconds for timers and retries."""

    def __init__(self, engine: Engine, interval: float = 0.5, listen_url: str | None = None):
        super().__init__(name="percorso-automation", daemon=True)
        self.engine = engine
        self.interval = interval
        self.listen_url = listen_url
        self._stop_event = threading.Event()
        self.errors = 0

    def run(self) -> None:
        if self.listen_url:
            threading.Thread(target=self._listen, name="percorso-listen", daemon=True).start()
        signal = self.engine.store.events_arrived
        while not self._stop_event.is_set():
            try:
                busy = self.engine.tick()
            except StoreError as exc:
                self.errors += 1
                log.warning("automation pass skipped: %s", exc)
                busy = 0
            except Exception:  # a bug must not stop every automation: log it and go on
                self.errors += 1
                log.exception("automation pass failed")
                busy = 0
            if not busy:
                signal.wait(self.interval)
                signal.clear()

    def _listen(self) -> None:
        import psycopg

        from percorso.store.base import EVENTS_CHANNEL

        while not self._stop_event.is_set():
            try:
                with psycopg.connect(self.listen_url or "", autocommit=True) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    while not self._stop_event.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.engine.store.events_arrived.set()
            except Exception as exc:
                log.warning("listening for new events failed (%s); retrying", exc)
                self._stop_event.wait(2)

    def stop(self) -> None:
        self._stop_event.set()
        self.engine.store.events_arrived.set()
        self.join(timeout=30)
