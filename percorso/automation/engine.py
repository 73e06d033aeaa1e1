"""The automation engine: enroll on events, walk the steps, wait durably, act through an outbox.

Three loops, each one transaction per batch, safe to run in several processes at once, each in a
module of its own above the shared :mod:`~percorso.automation.core` and
:mod:`~percorso.automation.state` (which the actions and triggers use, never this module):

* :meth:`Engine.process_events` (:mod:`~percorso.automation.walk`) reads events stored since its cursor (resolved to their contact
  at query time), and for each: exits contacts whose goal it is, wakes contacts waiting for it,
  and enrolls contacts it triggers — then walks each of them forward to their next wait;
* :meth:`Engine.run_due` (:mod:`~percorso.automation.timers`) takes enrollments whose timer fell due (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL, so workers share them) and walks them on;
* :meth:`Engine.deliver` (:mod:`~percorso.automation.delivery`) claims due outbox rows, sends them (SMTP, webhook, an event back into
  the store) and marks them sent, or schedules a retry with backoff.

A step's decision and its action are written in the same transaction: the outbox row carries a
deterministic idempotency key (``automation/enrollment/seq``), so a crash before the commit
redoes the same decision with the same key, and a crash after it leaves the row for a sender.
Delivery is at-least-once with that key on the wire (``Message-ID``, ``Idempotency-Key``); the
window for a duplicate is between the remote accepting a message and the ``sent`` commit.

Time comes from an injectable :class:`Clock`, so tests run "24 hours later" in milliseconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from percorso.automation.delivery import Delivery
from percorso.automation.state import (
    MAX_ATTEMPTS,
    OUTBOX_CHANNEL,
    Batch,
    Clock,
    EngineSettings,
    Enrollment,
    Loaded,
    ManualClock,
    bucket,
)
from percorso.automation.timers import Timers
from percorso.store.base import StoreError

log = logging.getLogger("percorso.automation")

# What callers use from here: the engine, its worker, and the shared pieces they configure it with.
__all__ = [
    "MAX_ATTEMPTS",
    "AutomationWorker",
    "Batch",
    "Clock",
    "Engine",
    "EngineSettings",
    "Enrollment",
    "Loaded",
    "ManualClock",
    "bucket",
]


class Engine(Timers, Delivery):
    """The three loops over one store: events and steps (:class:`~percorso.automation.walk.Walker`),
    due waits (:class:`~percorso.automation.timers.Timers`) and the outbox
    (:class:`~percorso.automation.delivery.Delivery`), on the shared
    :class:`~percorso.automation.core.EngineCore`."""

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
