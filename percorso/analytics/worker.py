"""Keeps every stored journey's stage history current while the server runs."""

from __future__ import annotations

import logging
import threading

from percorso.analytics.stages import StageError, get_journey, update
from percorso.journey.definition import JourneyError
from percorso.store import Store
from percorso.store.base import StoreError

log = logging.getLogger("percorso.stages")


class StageWorker(threading.Thread):
    """Every ``interval`` seconds, brings each stored journey's stages up to date (incrementally)."""

    def __init__(self, store: Store, interval: float):
        super().__init__(name="percorso-stages", daemon=True)
        self.store = store
        self.interval = interval
        self._stop_event = threading.Event()
        self.runs = 0

    def run_once(self) -> None:
        with self.store.session() as s:
            keys = [r[0] for r in s.rows("SELECT journey_key FROM journeys ORDER BY journey_key")]
        for key in keys:
            try:
                update(self.store, get_journey(self.store, key))
            except (StageError, JourneyError, StoreError) as exc:
                log.warning("stages of journey %s not updated: %s", key, exc)
        self.runs += 1

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.run_once()
            except StoreError as exc:  # the database is away: try again next time
                log.warning("stage update skipped: %s", exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
