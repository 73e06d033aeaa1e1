"""Group commit: many concurrent requests share one transaction; each is acknowledged after it.

Requests hand their validated events to :class:`GroupCommitWriter` and wait. A single writer
thread takes everything queued (up to ``max_events``), writes it in one transaction and
then wakes every waiting request — so the collector answers 2xx only for committed data,
while commit cost is shared across requests.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field

from percorso.events import Event
from percorso.store import DataRejected, Store

log = logging.getLogger("percorso.collect")


@dataclass
class WriteOutcome:
    """What happened to one request's events."""

    stored: set[str] = field(default_factory=set)
    #: message id → why the database refused it (the rest of the request was stored)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class _Pending:
    events: list[Event]
    future: asyncio.Future[WriteOutcome]
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future[WriteOutcome], outcome: WriteOutcome | BaseException) -> None:
    if future.done():  # the client went away; nothing to tell
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class GroupCommitWriter:
    def __init__(self, store: Store, *, max_events: int = 20_000):
        self.store = store
        self.max_events = max_events
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="percorso-writer", daemon=True)
        self.commits = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def write(self, events: list[Event]) -> WriteOutcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WriteOutcome] = loop.create_future()
        self._queue.put(_Pending(events, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            group, size = [item], len(item.events)
            stop = False
            while size < self.max_events:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                size += len(nxt.events)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Pending]) -> None:
        events = [e for p in group for e in p.events]
        try:
            stored = self.store.ingest(events)
            self.commits += 1
        except DataRejected as exc:
            # One bad value must not sink everyone else's data: retry smaller.
            if len(group) > 1:
                for pending in group:
                    self._commit([pending])
            else:
                self._isolate(group[0], str(exc))
            return
        except Exception as exc:
            log.warning("write failed for %d events: %s", len(events), exc)
            for pending in group:
                pending.loop.call_soon_threadsafe(_resolve, pending.future, exc)
            return
        # A message id sent by two requests of one group is stored once: the first one is told.
        credited: set[str] = set()
        for pending in group:
            mine = {e.message_id for e in pending.events if e.message_id in stored} - credited
            credited |= mine
            pending.loop.call_soon_threadsafe(_resolve, pending.future, WriteOutcome(stored=mine))

    def _isolate(self, pending: _Pending, first_error: str) -> None:
        """Writes a request's events one by one, reporting those the database refuses."""
        outcome = WriteOutcome()
        try:
            for event in pending.events:
                try:
                    outcome.stored |= self.store.ingest([event])
                except DataRejected as exc:
                    outcome.refused[event.message_id] = str(exc) or first_error
        except Exception as exc:
            pending.loop.call_soon_threadsafe(_resolve, pending.future, exc)
            return
        pending.loop.call_soon_threadsafe(_resolve, pending.future, outcome)
