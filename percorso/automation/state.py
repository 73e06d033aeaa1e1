"""What the automation engine's loops share: the clock, the settings, an enrolment, the loaded
definitions, a contact's profile, the batch one transaction builds, and the stable buckets of
splits and holdouts."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from percorso.automation.definition import Automation
from percorso.automation.store import (
    ENROLLMENT_COLUMNS,
)

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
