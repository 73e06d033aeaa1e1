"""Loading messages that do not come over HTTP (file imports, the demo) through the same path:
the same validation as the collector, the same identity resolution and append in the store."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from percorso.channels import ChannelClassifier
from percorso.events import Event, Limits, MessageError, new_received_at, parse_message
from percorso.store import Store

_encode = msgspec.json.encode


@dataclass
class Rejection:
    ref: Any  # what the caller uses to point at the message (a line number, an index)
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


@dataclass
class LoadReport:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "rejected": [{"ref": r.ref, "field": r.field, "reason": r.reason} for r in self.rejected],
        }


def parse_one(
    message: dict[str, Any], classifier: ChannelClassifier, limits: Limits, source_id: str | None = None
) -> Event:
    return parse_message(
        _encode(message),
        received_at=new_received_at(),
        classifier=classifier,
        limits=limits,
        source_id=source_id,
        historical=True,
    )


def load_messages(
    store: Store | None,
    messages: Iterable[tuple[Any, dict[str, Any] | Rejection]],
    *,
    classifier: ChannelClassifier,
    limits: Limits,
    batch_size: int = 5_000,
    source_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> LoadReport:
    """Validates and stores ``(ref, message)`` pairs in batches; ``store=None`` only validates."""
    report = LoadReport()
    pending: list[Event] = []

    def flush() -> None:
        if store is not None and pending:
            stored = store.ingest(pending)
            report.stored += len(stored)
            report.duplicates += len(pending) - len(stored)
        if progress is not None:
            progress(len(pending))
        pending.clear()

    for ref, message in messages:
        report.received += 1
        if isinstance(message, Rejection):
            report.rejected.append(message)
            continue
        try:
            pending.append(parse_one(message, classifier, limits, source_id))
        except MessageError as exc:
            report.rejected.append(Rejection(ref, exc.field, exc.reason))
        if len(pending) >= batch_size:
            flush()
    flush()
    return report
