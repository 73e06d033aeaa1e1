"""The delivery loop: claim due outbox rows, send them (SMTP, webhook, an event back into the
store), mark them sent or schedule a retry; claims of a dead worker go back to the queue."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from percorso.automation.core import EngineCore
from percorso.automation.state import (
    SENT_GROUP_SECONDS,
)

log = logging.getLogger("percorso.automation")


class Delivery(EngineCore):
    """The outbox's sender (:meth:`deliver`)."""

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
