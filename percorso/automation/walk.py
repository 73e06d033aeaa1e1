"""The event loop: enrol contacts on the events that trigger an automation, exit them on its goal,
wake those waiting for an event, and walk each forward to its next wait or action."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from percorso.analytics.sql import RESOLVED_EVENTS, condition_sql
from percorso.automation.core import EngineCore
from percorso.automation.definition import EXIT, Automation, Cooldown, successors
from percorso.automation.state import (
    _ENROLLMENT_SELECT,
    GOAL_WINDOW,
    MAX_STEPS_PER_RUN,
    OVERLAP,
    Batch,
    Enrollment,
    Loaded,
    StepFailed,
    bucket,
)
from percorso.journey.definition import Condition, duration_seconds
from percorso.store.base import Session, StoreError

log = logging.getLogger("percorso.automation")


class Walker(EngineCore):
    """Events in, enrolments and steps out (:meth:`process_events`, :meth:`enroll`)."""

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
