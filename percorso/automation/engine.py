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
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
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
from percorso.values import read_json

log = logging.getLogger("percorso.automation")

MAX_STEPS_PER_RUN = 100
MAX_ATTEMPTS = 8
CLAIM_TIMEOUT = timedelta(minutes=5)  # a "sending" row older than this belonged to a dead worker
SENT_GROUP_SECONDS = 0.02  # longest a sent message waits to be marked sent with others
OUTBOX_CHANNEL = "percorso_outbox"  # PostgreSQL NOTIFY: messages were queued
OVERLAP = timedelta(seconds=5)  # PostgreSQL: transactions that commit out of received_at order
GOAL_WINDOW = timedelta(days=30)  # a goal reached later than this after entry is not a conversion


# -- time ----------------------------------------------------------------------------------


class StepFailed(Exception):
    """A step cannot run for this contact, for good (its data allows no answer): the enrollment
    fails with this reason and the pass goes on."""


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
    #: Seconds after which a claimed outbox row whose claim was not renewed (its worker died)
    #: goes back to the queue; ``PERCORSO_AUTOMATION_CLAIM_TIMEOUT``.
    claim_timeout: float = CLAIM_TIMEOUT.total_seconds()
    #: Sent messages are marked sent together, up to this many or every 20 ms: one commit for
    #: several sends. A worker that dies loses at most these marks, so at most this many
    #: messages can reach their receiver twice per crash (with the same Message-ID /
    #: Idempotency-Key). 1 marks each message alone; ``PERCORSO_AUTOMATION_SENT_GROUP``.
    sent_group: int = 10
    #: Networks webhooks may reach although they are not public (``10.0.0.0/8``, ``127.0.0.1``);
    #: ``PERCORSO_WEBHOOK_ALLOW_NETWORKS``. Loopback, private and link-local are refused otherwise.
    webhook_allow_networks: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> EngineSettings:
        """The engine's settings from the process's :class:`percorso.config.Settings`; a bad
        ``PERCORSO_WEBHOOK_ALLOW_NETWORKS`` raises ValueError naming it."""
        from percorso.automation.actions.egress import parse_networks

        allowed = tuple(n.strip() for n in settings.webhook_allow_networks.split(",") if n.strip())
        parse_networks(allowed)
        values: dict[str, Any] = {
            "base_url": settings.base_url,
            "claim_timeout": float(settings.automation_claim_timeout),
            "sent_group": max(1, int(settings.automation_sent_group)),
            "webhook_allow_networks": allowed,
        }
        return cls(**{**values, **overrides})


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
    #: The live contacts this batch may walk: per-contact lookups (profiles, audiences,
    #: conditions, frequency caps) are answered for all of them by one query on first use.
    contacts: list[int] = field(default_factory=list)
    #: rule → (contacts asked about, contacts matching), for audiences and conditions
    matched: dict[int, tuple[set[int], set[int]]] = field(default_factory=dict)
    #: cap window start → (contacts asked about, marketing emails each has in the window)
    capped: dict[datetime, tuple[set[int], dict[int, int]]] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)  # enrollment ids taken from the sequence, unused
    taken: int = 0  # how many the batch took


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
        self._last_reclaim = -float("inf")
        self._queued = False
        self._batch_local = threading.local()
        #: Set when messages were queued: wakes the sender (:class:`AutomationWorker`).
        self.outbox_ready = threading.Event()
        self.stats: dict[str, int] = defaultdict(int)

    # -- definitions ---------------------------------------------------------------------
    def automations(self) -> dict[str, Loaded]:
        """Every stored automation with all its versions (reloaded when one changes)."""
        with self.store.session() as s:
            stamp = s.rows("SELECT count(*), max(updated_at), max(version) FROM automations")[0]
            if stamp == self._stamp:
                return self._loaded
            # oldest first: when two automations reach one contact together, the older one acts first
            # (and takes the frequency cap), the same on every run and engine
            heads = s.rows(
                "SELECT automation_key, version, status, created_at FROM automations ORDER BY created_at, automation_key"
            )
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

    def _cursor(self, s: Session) -> datetime:
        """Events received up to this instant are handled (the cursor moves a whole
        ``received_at`` at a time, so no tie-breaker is needed and every worker reads the same)."""
        rows = s.rows("SELECT received_at FROM automation_cursor WHERE name = 'events'")
        if rows:
            return rows[0][0]
        # First run: start when the first automation was stored — history enrolls nobody.
        first = s.rows("SELECT min(created_at) FROM automations")[0][0]
        start = first - timedelta(microseconds=1) if first else datetime.now(UTC)
        s.execute(
            "INSERT INTO automation_cursor (name, received_at, updated_at) VALUES ('events', ?, ?)",
            [start, start],
        )
        return start

    def process_events(self) -> int:
        """Handles events stored since the last call; returns how many were relevant."""
        loaded = self.automations()
        self.secret  # noqa: B018 - created outside the batch's transaction
        conditions = self._conditions(loaded)
        if not conditions:
            return 0
        with self.store.writing() as s:
            s.lock_named("automation-events")
            cursor_at = self._cursor(s)
            rows = self._fetch_events(s, conditions, cursor_at)
            if len(rows) >= self.settings.event_batch:
                # The batch may end inside a group of events received together (one request):
                # leave that group whole for the next pass, or, when it fills the batch alone,
                # take all of it — the cursor moves a whole received_at at a time.
                last = rows[-1]["received_at"]
                whole = [r for r in rows if r["received_at"] != last]
                rows = whole or self._fetch_events(s, conditions, cursor_at, group=last)
            wall = datetime.now(UTC)
            if self.store.engine != "duckdb" and wall - self._last_rescan > timedelta(seconds=1):
                self._last_rescan = wall
                late = self._fetch_events(s, conditions, cursor_at - OVERLAP, until=cursor_at)
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
                return 0
            batch = Batch(now=self.clock.now(), position=rows[-1]["received_at"])
            self._handle_events(s, loaded, conditions, rows, batch)
            self._flush(s, batch)
            newest = max(r["received_at"] for r in rows)
            if newest > cursor_at:
                s.execute(
                    "UPDATE automation_cursor SET received_at = ?, updated_at = ? WHERE name = 'events'",
                    [newest, wall],
                )
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
        *,
        until: datetime | None = None,
        group: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Relevant events received after ``after`` (a batch of them, oldest first); with
        ``until``, the newest batch of those up to it (the rescan for late commits); with
        ``group``, every one received at that instant."""
        flags: list[str] = []
        params: list[Any] = []
        for j, (_, _, _, _, cond) in enumerate(conditions):
            sql = condition_sql(s, cond)
            flags.append(f"({sql.text}) AS m{j}")
            params += sql.params
        # The outer query keeps rows where any flag is set: each condition is compiled once.
        anyof = " OR ".join(f"m{j}" for j in range(len(conditions)))
        order, limit = "", f" LIMIT {int(self.settings.event_batch)}"
        if group is not None:
            window, window_params, limit = "e.received_at = ?", [group], ""
        elif until is not None:
            # Late commits land just behind the cursor: look at the newest first.
            window, window_params, order = "e.received_at > ? AND e.received_at <= ?", [after, until], " DESC"
        else:
            window, window_params = "e.received_at > ?", [after]
        rows = s.dicts(
            f"SELECT * FROM (SELECT e.message_id, e.received_at, e.timestamp, e.event, e.type, i.contact_id, "
            f"{', '.join(flags)} FROM {RESOLVED_EVENTS} WHERE {window}) f WHERE {anyof} "
            f"ORDER BY received_at{order}, timestamp{order}, message_id{order}{limit}",
            [*params, *window_params],
        )
        return rows[::-1] if order else rows

    def _load_enrollments(
        self, s: Session, contacts: Iterable[int], *, lock: bool = True
    ) -> list[Enrollment]:
        ids = sorted(set(contacts))
        if not ids:
            return []
        out: list[Enrollment] = []
        for start in range(0, len(ids), 10_000):
            chunk = ids[start : start + 10_000]
            # The contacts and those merged into them, as one set: an OR of the two would make
            # PostgreSQL test every enrollment against both lists.
            where = (
                "WHERE n.contact_id IN (SELECT unnest(CAST(? AS BIGINT[])) UNION ALL "
                "SELECT contact_id FROM contacts WHERE merged_into IN (SELECT unnest(CAST(? AS BIGINT[]))))"
            )
            params: list[Any] = [chunk, chunk]
            if lock and s.skip_locked:
                # Lock first, then read: a row read before the lock could be a version another
                # worker's run_due has since moved on (READ COMMITTED), and writing it back would
                # undo that step.
                s.execute(
                    f"SELECT n.enrollment_id FROM enrollments n {where} ORDER BY n.enrollment_id FOR UPDATE",
                    params,
                )
            rows = s.rows(
                f"SELECT {_ENROLLMENT_SELECT}, coalesce(c.merged_into, n.contact_id) AS live "
                f"FROM enrollments n LEFT JOIN contacts c ON c.contact_id = n.contact_id "
                f"{where} ORDER BY n.enrollment_id",
                params,
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
        walking = [j for j, c in enumerate(conditions) if c[0] in ("trigger", "wait_for")]
        self._prepare(batch, (int(r["contact_id"]) for r in rows if any(r[f"m{j}"] for j in walking)))
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
        *,
        audience_checked: bool = False,
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
        if (
            automation.audience is not None
            and not audience_checked
            and not self.matches(s, batch, automation.audience, contact)
        ):
            return None
        enrollment_id = self._new_enrollment_id(s, batch)
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

    def enroll_found(self, s: Session, item: Loaded, found: list[tuple[int, str]], now: datetime) -> int:
        """Enrolls ``(live contact, trigger id)`` pairs that a trigger found and whose audience the
        caller already checked in SQL (see :mod:`percorso.automation.triggers`); the re-entry
        policy still applies. Runs in the caller's transaction; returns how many entered."""
        batch = Batch(now=now, position=datetime.now(UTC))
        mine: dict[int, list[Enrollment]] = defaultdict(list)
        for enrollment in self._load_enrollments(s, (contact for contact, _ in found)):
            if enrollment.automation_key == item.key:
                mine[enrollment.live_contact].append(enrollment)
        entered = 0
        for contact, trigger_id in found:
            new = self._enroll(
                s, item, contact, mine[contact], trigger_id, batch.position, batch, audience_checked=True
            )
            if new is not None:
                mine[contact].append(new)
                entered += 1
        self._flush(s, batch)
        return entered

    def process_triggers(self) -> int:
        """Stage, persona, date and schedule triggers (:mod:`percorso.automation.triggers`)."""
        from percorso.automation.triggers import TriggerRunner

        runner = self.__dict__.get("_triggers")
        if runner is None:
            runner = self.__dict__.setdefault("_triggers", TriggerRunner(self))
        return int(runner.run())

    # -- timers ----------------------------------------------------------------------------
    def run_due(self) -> int:
        """Walks on every enrollment whose timer fell due; returns how many."""
        loaded = self.automations()
        self.secret  # noqa: B018 - created outside the batch's transaction
        active = [k for k, v in loaded.items() if v.status == "active"]
        if not active:
            return 0
        now = self.clock.now()
        marks = ", ".join("?" for _ in active)
        due = f"n.due_at <= ? AND n.status IN ('active', 'waiting') AND n.automation_key IN ({marks})"
        with self.store.session() as s:
            # Most passes find nothing due: look before taking the write lock (one writer at a
            # time on the embedded store, where the collector's commits wait for it too).
            if not s.rows(f"SELECT 1 FROM enrollments n WHERE {due} LIMIT 1", [now, *active]):
                return 0
        with self.store.writing() as s:
            rows = s.rows(
                f"SELECT {_ENROLLMENT_SELECT}, n.contact_id FROM enrollments n "
                f"WHERE {due} ORDER BY n.due_at LIMIT ?{s.skip_locked}",
                [now, *active, self.settings.due_batch],
            )
            if not rows:
                return 0
            batch = Batch(now=now, position=datetime.now(UTC))
            live = self._live_contacts(s, {int(row[-1]) for row in rows})
            self._prepare(batch, live.values())
            for row in rows:
                enrollment = Enrollment(*row[:-1])
                enrollment.live_contact = live[int(row[-1])]
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
        """Walks the enrollment on from ``target``. A step that fails for this contact (its data
        breaks a template, say) fails this enrollment alone, with the reason in the stats and on
        the contact's timeline; the pass goes on with everyone else. The store's own errors
        still fail the pass, which runs again (they are the store's trouble, not the contact's)."""
        try:
            self._steps(s, batch, automation, enrollment, target, resumed=resumed)
        except Exception as exc:
            if isinstance(exc, (StoreError, *self.store.database_errors)):
                raise
            if isinstance(exc, StepFailed):
                reason = str(exc)[:500]
            else:  # not foreseen: a bug to fix, with its stack in the log
                log.exception(
                    "automation %s: step %s failed for contact %s",
                    automation.key,
                    enrollment.step,
                    enrollment.live_contact,
                )
                reason = f"{type(exc).__name__}: {exc}"[:500]
            step = enrollment.step or target
            self._log(batch, enrollment, step, "failed", reason)
            self._finish(enrollment, batch, "failed", reason)
            self.stats["failed"] += 1
            from percorso.automation.actions.run import record_outcome

            record_outcome(batch, enrollment, step, "failed", reason)

    def _steps(
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
                until = self._wait_until(s, enrollment, step, batch.contacts)
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
                ok = self.matches(s, batch, step.condition, enrollment.live_contact)
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
                opens = self._quiet_until(s, automation, enrollment, batch.now, batch.contacts)
                if opens is not None:
                    enrollment.due_at = opens
                    enrollment.status = "active"
                    self._log(batch, enrollment, step.id, "held", f"quiet hours until {opens.isoformat()}")
                    return
            resumed = False
            from percorso.automation.actions.run import act, record_outcome

            outcome, detail = act(self, s, batch, automation, enrollment, step)
            self._log(batch, enrollment, step.id, outcome, detail)
            if step.email is not None and outcome in ("suppressed", "capped", "failed"):
                record_outcome(batch, enrollment, step.id, outcome, detail)
            target = edges[0].target
        self._finish(enrollment, batch, "exited", f"more than {MAX_STEPS_PER_RUN} steps at once")

    # -- lookups for a whole batch ------------------------------------------------------------
    def _prepare(self, batch: Batch, contacts: Iterable[int]) -> None:
        batch.contacts = sorted(set(contacts))
        self._batch_local.profiles = {}  # nothing cached from a batch that failed

    def _live_contacts(self, s: Session, contacts: set[int]) -> dict[int, int]:
        """Each contact id mapped to the contact it was merged into (or to itself)."""
        live = {c: c for c in contacts}
        ids = sorted(contacts)
        for start in range(0, len(ids), 1000):
            among, params = s.member("contact_id", ids[start : start + 1000])
            live.update(
                (int(c), int(m))
                for c, m in s.rows(
                    f"SELECT contact_id, merged_into FROM contacts WHERE {among} AND merged_into IS NOT NULL",
                    params,
                )
            )
        return live

    def matches(self, s: Session, batch: Batch, rule: Any, contact: int) -> bool:
        """Whether ``contact`` matches ``rule`` (an audience or a condition) as of the batch's time.

        The first question about a rule is answered for every contact of the batch in one query;
        nothing the batch decides is written before it ends, so later answers are the same."""
        known = batch.matched.get(id(rule))
        if known is None or contact not in known[0]:
            pool = sorted({*batch.contacts, contact}) if known is None else [contact]
            found: set[int] = set()
            for start in range(0, len(pool), 1000):
                sql = rule_sql(s, rule, batch.now, pool[start : start + 1000])
                found.update(int(r[0]) for r in s.rows(sql.text, sql.params))
            if known is None:
                known = batch.matched[id(rule)] = (set(pool), found)
            else:
                known[0].add(contact)
                known[1].update(found)
        return contact in known[1]

    def marketing_emails(self, s: Session, batch: Batch, contact: int, since: datetime) -> int:
        """Marketing emails queued or sent to ``contact`` since ``since`` (frequency caps), not
        counting this batch's; asked for every contact of the batch at once."""
        known = batch.capped.get(since)
        if known is None or contact not in known[0]:
            pool = sorted({*batch.contacts, contact}) if known is None else [contact]
            counts: dict[int, int] = {}
            for start in range(0, len(pool), 1000):
                among, params = s.member("contact_id", pool[start : start + 1000])
                counts.update(
                    (int(c), int(n))
                    for c, n in s.rows(
                        f"SELECT contact_id, count(*) FROM outbox WHERE {among} AND channel = 'email' "
                        "AND category = 'marketing' AND status IN ('pending', 'sending', 'sent') "
                        "AND created_at > ? GROUP BY contact_id",
                        [*params, since],
                    )
                )
            if known is None:
                known = batch.capped[since] = (set(pool), counts)
            else:
                known[0].add(contact)
                known[1].update(counts)
        return known[1].get(contact, 0)

    def _new_enrollment_id(self, s: Session, batch: Batch) -> int:
        if not batch.ids:
            # A few at a time, more as the batch enrolls more; unused ones are gaps, as in any sequence.
            count = min(max(16, batch.taken), 1000)
            batch.ids = s.next_ids("enrollment_id_seq", count)[::-1]
            batch.taken += count
        return batch.ids.pop()

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

    def _wait_until(
        self, s: Session, enrollment: Enrollment, step: Step, pool: Sequence[int] = ()
    ) -> datetime | None:
        assert step.wait_until is not None
        profile = self.profile(s, enrollment.live_contact, pool)
        raw = profile.traits.get(step.wait_until.trait) if profile else None
        if not isinstance(raw, str):
            return None
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        try:
            if step.wait_until.before:
                when -= timedelta(seconds=duration_seconds(step.wait_until.before))
            if step.wait_until.after:
                when += timedelta(seconds=duration_seconds(step.wait_until.after))
            return when.astimezone(UTC)
        except OverflowError:
            moved = step.wait_until.before or step.wait_until.after
            raise StepFailed(
                f"trait {step.wait_until.trait} is {raw[:40]!r}: {moved} from it is outside the calendar"
            ) from None

    def _quiet_until(
        self,
        s: Session,
        automation: Automation,
        enrollment: Enrollment,
        now: datetime,
        pool: Sequence[int] = (),
    ) -> datetime | None:
        """When the contact's quiet hours end, if ``now`` is inside them (else None)."""
        quiet = automation.quiet_hours
        assert quiet is not None
        profile = self.profile(s, enrollment.live_contact, pool)
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
    def profile(self, s: Session, contact_id: int, pool: Sequence[int] = ()) -> Profile | None:
        """The contact's profile (traits, consent, identifiers, unsubscribes), following a merge.

        Cached until the batch is written; on a miss every uncached contact of ``pool`` (the
        batch's contacts) is loaded too, in four queries whatever their number."""
        # Per thread: a request enrolling through the API must not read the profiles a running
        # batch has changed but not committed.
        cache: dict[int, Profile | None] | None = getattr(self._batch_local, "profiles", None)
        if cache is None:
            cache = self._batch_local.profiles = {}
        if contact_id in cache:
            return cache[contact_id]
        wanted = {c for c in pool if c not in cache}
        wanted.add(contact_id)
        ids = sorted(wanted)
        for start in range(0, len(ids), 1000):
            self._load_profiles(s, ids[start : start + 1000], cache)
        return cache[contact_id]

    def load_profile(self, s: Session, contact_id: int) -> Profile | None:
        """The contact's profile read now, outside any batch's cache (the delivery thread)."""
        found: dict[int, Profile | None] = {}
        self._load_profiles(s, [contact_id], found)
        return found[contact_id]

    def _load_profiles(self, s: Session, contacts: list[int], cache: dict[int, Profile | None]) -> None:
        among, params = s.member("c.contact_id", sorted(set(contacts)))
        live: dict[int, int] = {}
        rows: dict[int, tuple[Any, ...]] = {}
        for contact, live_id, raw, consent in s.rows(
            "SELECT c.contact_id, l.contact_id, l.traits, l.consent FROM contacts c "
            f"JOIN contacts l ON l.contact_id = coalesce(c.merged_into, c.contact_id) WHERE {among}",
            params,
        ):
            live[int(contact)] = int(live_id)
            rows[int(live_id)] = (live_id, raw, consent)
        for contact in contacts:
            cache.setdefault(contact, None)  # erased
        if not live:
            return
        among, params = s.member("contact_id", sorted(rows))
        identifiers: dict[int, dict[str, str]] = defaultdict(dict)
        for c, kind, value in s.rows(
            f"SELECT contact_id, kind, min(value) FROM identities WHERE {among} GROUP BY contact_id, kind",
            params,
        ):
            identifiers[int(c)][kind] = value
        unsubscribed: dict[int, set[str]] = defaultdict(set)
        for c, channel in s.rows(f"SELECT contact_id, channel FROM unsubscribes WHERE {among}", params):
            unsubscribed[int(c)].add(channel)
        profiles: dict[int, Profile] = {}
        for live_id, (_, raw, consent) in rows.items():
            decoded = read_json(raw)
            traits = decoded if isinstance(decoded, dict) else {}
            email = traits.get("email") if isinstance(traits.get("email"), str) else None
            ids = identifiers[live_id]
            profiles[live_id] = Profile(
                contact_id=live_id,
                traits=traits,
                consent=consent,
                email=ids.get("email") or email,
                user_id=ids.get("user_id"),
                anonymous_id=ids.get("anonymous_id"),
                unsubscribed=unsubscribed[live_id],
            )
        for contact, live_id in live.items():
            cache[contact] = profiles.get(live_id)

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
            s.notify(OUTBOX_CHANNEL)  # senders in other processes
            self._queued = True  # this process's sender, once the caller has committed
        if batch.onsite:
            insert_rows(
                s, "onsite_messages", ONSITE_COLUMNS, batch.onsite, conflict=" ON CONFLICT DO NOTHING"
            )
        for contact_id, traits in batch.traits.items():
            s.execute(
                "UPDATE contacts SET traits = ?, traits_updated_at = ? WHERE contact_id = ?",
                [msgspec.json.encode(traits).decode(), batch.now, contact_id],
            )
        self._batch_local.profiles = {}
        for e in batch.touched.values():
            e.new = e.dirty = False

    # -- delivery --------------------------------------------------------------------------
    def deliver(self) -> int:
        """Sends due outbox rows; returns how many were attempted.

        A claim is a lease: ``claimed_at`` is renewed while the batch is sent, and a row goes
        back to the queue only when its claim was not renewed for ``claim_timeout`` (its worker
        died). A worker that stalled past the timeout finds its rows taken and skips them instead
        of sending them a second time.
        """
        from percorso.automation.actions.email import SmtpSession
        from percorso.automation.actions.run import Sent, record_sent, send

        loaded = self.automations()
        paused = [k for k, v in loaded.items() if v.status != "active"]
        now = self.clock.now()
        timeout = self.settings.claim_timeout
        with self.store.writing() as s:
            wall = time.monotonic()
            if wall - self._last_reclaim > min(timeout / 4, 5.0):
                # Rows a dead worker claimed and never finished go back to the queue.
                self._last_reclaim = wall
                s.execute(
                    "UPDATE outbox SET status = 'pending', claimed_at = NULL "
                    "WHERE status = 'sending' AND claimed_at < ?",
                    [datetime.now(UTC) - timedelta(seconds=timeout)],
                )
            skip = f" AND automation_key NOT IN ({', '.join('?' for _ in paused)})" if paused else ""
            rows = s.dicts(
                "SELECT idempotency_key, enrollment_id, automation_key, step, contact_id, channel, category, "
                f"payload, attempts FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?{skip} "
                f"ORDER BY next_attempt_at LIMIT ?{s.skip_locked}",
                [now, *paused, self.settings.delivery_batch],
            )
            lease = datetime.now(UTC)
            if rows:
                s.execute(
                    "UPDATE outbox SET status = 'sending', claimed_at = ? WHERE idempotency_key IN "
                    f"({', '.join('?' for _ in rows)})",
                    [lease, *[r["idempotency_key"] for r in rows]],
                )
        attempted = 0
        done: list[Sent] = []
        renewed = first = time.monotonic()
        # One SMTP connection for the batch (opened at the first email), not one per message.
        with SmtpSession(self.smtp) as smtp:
            while rows:
                if time.monotonic() - renewed > timeout / 3:
                    lease, kept = self._renew(lease, [r["idempotency_key"] for r in rows])
                    renewed = time.monotonic()
                    rows = [r for r in rows if r["idempotency_key"] in kept]
                    if not rows:
                        break
                row = rows.pop(0)
                row["claimed_at"] = lease
                sent = send(self, row, smtp)
                attempted += 1
                if sent is not None:
                    if not done:
                        first = time.monotonic()
                    done.append(sent)
                if done and (
                    len(done) >= self.settings.sent_group or time.monotonic() - first > SENT_GROUP_SECONDS
                ):
                    record_sent(self, done)
                    done = []
            record_sent(self, done)
        self.stats["delivered"] += attempted
        return attempted

    def release_claims(self) -> int:
        """At start on a store one process owns (the embedded one), every claimed outbox row
        belongs to a process that died: back to the queue at once, not after the claim timeout.
        Returns how many (0 on a shared store, where other workers may be sending)."""
        with self.store.writing() as s:
            if s.skip_locked:  # shared by several processes
                return 0
            released = s.rows(
                "UPDATE outbox SET status = 'pending', claimed_at = NULL WHERE status = 'sending' "
                "RETURNING idempotency_key"
            )
        if released:
            log.warning("%d messages claimed before a crash go back to the queue", len(released))
        return len(released)

    def _renew(self, lease: datetime, keys: list[str]) -> tuple[datetime, set[str]]:
        """Extends this worker's claim on ``keys``; returns the new lease and the keys still ours."""
        renewed = datetime.now(UTC)
        with self.store.writing() as s:
            kept = s.rows(
                "UPDATE outbox SET claimed_at = ? WHERE status = 'sending' AND claimed_at = ? "
                f"AND idempotency_key IN ({', '.join('?' for _ in keys)}) RETURNING idempotency_key",
                [renewed, lease, *keys],
            )
        lost = len(keys) - len(kept)
        if lost:
            log.warning("%d claimed messages were taken over by another worker; not sending them", lost)
        return renewed, {str(r[0]) for r in kept}

    # -- running ---------------------------------------------------------------------------
    def decide(self) -> int:
        """One pass of the loops that decide (events, triggers, timers); returns the work done.

        Sets :attr:`outbox_ready` after each commit that queued messages."""
        done = 0
        for loop in (self.process_events, self.process_triggers, self.run_due):
            done += loop()
            if self._queued:
                self._queued = False
                self.outbox_ready.set()
        return done

    def tick(self) -> int:
        """One pass of every loop; returns the work done (0 when idle)."""
        return self.decide() + self.deliver()

    def run_until_idle(self, max_passes: int = 1000) -> int:
        total = 0
        for _ in range(max_passes):
            done = self.tick()
            total += done
            if not done:
                break
        return total


class AutomationWorker(threading.Thread):
    """Runs the engine inside ``percorso serve`` (embedded store) or ``percorso worker``.

    Two threads: one decides (events, triggers, timers) and wakes at once when events are stored
    (in-process signal, or PostgreSQL NOTIFY); the other sends the outbox and wakes when messages
    are queued — so a slow SMTP server never delays a decision. Both also wake every ``interval``
    seconds, for timers and retries."""

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
        try:
            self.engine.release_claims()
        except StoreError as exc:
            log.warning("could not release claims left by a crash: %s", exc)
        sender = threading.Thread(
            target=self._loop,
            args=(self.engine.deliver, self.engine.outbox_ready, "delivery"),
            name="percorso-sender",
            daemon=True,
        )
        sender.start()
        self._loop(self.engine.decide, self.engine.store.events_arrived, "automation")
        sender.join(timeout=30)

    def _loop(self, work: Callable[[], int], signal: threading.Event, what: str) -> None:
        while not self._stop_event.is_set():
            signal.clear()  # before the pass: a signal during it means another pass
            try:
                busy = work()
            except StoreError as exc:
                self.errors += 1
                log.warning("%s pass skipped: %s", what, exc)
                busy = 0
            except Exception:  # a bug must not stop every automation: log it and go on
                self.errors += 1
                log.exception("%s pass failed", what)
                busy = 0
            if not busy:
                signal.wait(self.interval)

    def _listen(self) -> None:
        import psycopg

        from percorso.store.base import EVENTS_CHANNEL

        while not self._stop_event.is_set():
            try:
                with psycopg.connect(self.listen_url or "", autocommit=True) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
                    while not self._stop_event.is_set():
                        for note in conn.notifies(timeout=1.0, stop_after=1):
                            if note.channel == OUTBOX_CHANNEL:
                                self.engine.outbox_ready.set()
                            else:
                                self.engine.store.events_arrived.set()
            except Exception as exc:
                log.warning("listening for new events failed (%s); retrying", exc)
                self._stop_event.wait(2)

    def stop(self) -> None:
        self._stop_event.set()
        self.engine.store.events_arrived.set()
        self.engine.outbox_ready.set()
        self.join(timeout=30)
