"""The timer loop: enrolments whose wait fell due, taken with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL so workers share them, walked on."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from percorso.automation.definition import Automation, successors
from percorso.automation.state import (
    _ENROLLMENT_SELECT,
    Batch,
    Enrollment,
)
from percorso.automation.walk import Walker
from percorso.store.base import Session

log = logging.getLogger("percorso.automation")


class Timers(Walker):
    """Due waits (:meth:`run_due`)."""

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
