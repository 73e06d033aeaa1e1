"""Recent analytics results, so pages answer in milliseconds while the store scans in the background.

A journey map over a million events takes about a second of engine time; people click between
pages far more often than the numbers change. Each result is kept for ``ttl`` seconds (the page
says when it was computed and offers a refresh); after that it is still served for a while as a
new one is computed in the background; concurrent requests for the same result wait for one
computation instead of starting several.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_ENTRIES = 256
STALE_FACTOR = 10  # a result up to 10 times ttl old is served while its replacement is computed

log = logging.getLogger("percorso.dashboard")


@dataclass
class Entry:
    value: Any
    computed_at: datetime
    expires: float
    seconds: float


class ResultCache:
    def __init__(self, ttl: float = 60.0):
        self.ttl = ttl
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}
        self._refreshing: set[Hashable] = set()

    def get(self, key: Hashable, compute: Callable[[], Any], *, refresh: bool = False) -> Entry:
        """The cached entry for ``key``, computing it (once, however many ask) when absent.

        An entry past its ``ttl`` but younger than ``STALE_FACTOR`` times ``ttl`` is returned at once
        while a background thread computes its replacement (stale-while-revalidate): the page
        says when its numbers were computed, and nobody waits for a scan they did not ask for.
        ``refresh`` always computes now.
        """
        asked = datetime.now(UTC)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not refresh:
                now = time.monotonic()
                if entry.expires > now:
                    self._entries.move_to_end(key)
                    return entry
                if entry.expires + self.ttl * (STALE_FACTOR - 1) > now:
                    self._revalidate(key, compute)
                    return entry
            gate = self._computing.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                entry = self._entries.get(key)
            # Someone else computed it while we waited at the gate: that result is fresh enough.
            if entry is not None and entry.computed_at >= asked:
                return entry
            return self._compute(key, compute)

    def _compute(self, key: Hashable, compute: Callable[[], Any]) -> Entry:
        started = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - started
        entry = Entry(value, datetime.now(UTC), time.monotonic() + self.ttl, seconds)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        return entry

    def _revalidate(self, key: Hashable, compute: Callable[[], Any]) -> None:
        """Starts one background recomputation of ``key`` (called with ``_lock`` held)."""
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        gate = self._computing.setdefault(key, threading.Lock())

        def run() -> None:
            try:
                with gate:
                    self._compute(key, compute)
            except Exception:  # the stale entry stays; the next request tries again
                log.exception("refreshing a dashboard result failed")
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        threading.Thread(target=run, name="percorso-dashboard-refresh", daemon=True).start()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
