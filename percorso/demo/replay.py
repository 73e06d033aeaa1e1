"""``percorso demo --automations``: the demo's last days replayed through the example automations
on a simulated clock.

The history before the replay window is loaded first, the three example automations are applied,
and then the window's touchpoints are stored in time order, a few minutes at a time, with the
engine's :class:`ManualClock` moved along with them — and to every moment a wait or a retry falls
due in between. So a reminder "4 hours after registering" is sent 4 hours (simulated) after the
registration, held overnight by quiet hours, and never sent to someone whose confirmation arrives
first. Emails go to a real SMTP server (``percorso automation inbox``), dated with the simulated time.

The replay also plays the customers' side: some people who get a reminder confirm a little later
(:data:`RESPONSES`, decided by a hash, so the same spec gives the same run). Without it the data
would be fixed in advance and the holdout could only show an uplift of about zero.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from percorso.automation.actions.email import SmtpSettings
from percorso.automation.engine import Engine, EngineSettings, ManualClock
from percorso.automation.inbox import LocalInbox
from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.demo.generator import SITE, DemoSpec, _iso, generate
from percorso.events import Limits
from percorso.store import Store

STEP = timedelta(minutes=5)  # touchpoints stored together; waits and retries run at their exact time
#: (automation, step) → share of the people emailed by that step who confirm afterwards: the
#: reminder's second subject line works better, so the demo's A/B test has something to find.
RESPONSES = {
    ("registration-reminder", "reminder"): 30,
    ("registration-reminder", "reminder-named"): 50,
    ("registration-reminder", "benefits"): 15,
}


@dataclass
class ReplayReport:
    start: datetime
    end: datetime
    history: int = 0  # touchpoints loaded before the window
    replayed: int = 0  # touchpoints stored during the replay (responses included)
    responses: int = 0
    automations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "start": self.start.isoformat(), "end": self.end.isoformat()}


def apply_examples(store: Store) -> list[str]:
    """Stores the three example automations (unchanged ones stay as they are)."""
    from percorso.automation.definition import example_files, load_automation_file
    from percorso.automation.store import save_automation

    keys = []
    for path in example_files():
        automation = load_automation_file(path)
        save_automation(store, automation, f"example:{path.name}", document=path.read_text(encoding="utf-8"))
        keys.append(automation.key)
    return keys


def replay_demo(
    store: Store,
    spec: DemoSpec,
    *,
    days: int = 14,
    smtp: SmtpSettings,
    base_url: str = "http://127.0.0.1:8000",
    responses: bool = True,
    step: timedelta = STEP,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Loads ``spec`` into an empty ``store``, replaying its last ``days`` through the examples."""
    from percorso.demo.command import demo_journey

    started = time.perf_counter()
    end = datetime.fromtimestamp(spec.end_ts(), UTC)
    start = end - timedelta(days=days)
    cutoff = _iso(start.timestamp())
    classifier = ChannelClassifier(load_rules())
    limits = Limits()
    window: list[dict[str, Any]] = []

    def history() -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        for person in generate(spec):
            for message in person:
                if message["timestamp"] < cutoff:
                    yield n, message
                    n += 1
                else:
                    window.append(message)

    report = ReplayReport(start=start, end=end)
    loaded = load_messages(
        store, history(), classifier=classifier, limits=limits, batch_size=20_000, progress=progress
    )
    report.history = loaded.stored
    store.analyze()
    demo_journey(store)
    keys = apply_examples(store)

    window.sort(key=lambda m: m["timestamp"])  # stable: each person's order is kept
    queue: list[tuple[str, int, dict[str, Any]]] = [(m["timestamp"], n, m) for n, m in enumerate(window)]
    heapq.heapify(queue)
    clock = ManualClock(start)
    # The membership example posts to the local inbox's CRM receiver on 127.0.0.1: the replay
    # lets webhooks reach that one address (a server started afterwards keeps refusing loopback
    # unless PERCORSO_WEBHOOK_ALLOW_NETWORKS says otherwise).
    engine = Engine(
        store,
        clock=clock,
        smtp=smtp,
        settings=EngineSettings(base_url=base_url, webhook_allow_networks=("127.0.0.1/32",)),
    )
    engine.run_until_idle()  # arms stage, persona, date and schedule triggers at the window's start
    answered = start
    sequence = len(queue)
    while True:
        now = clock.now()
        moments = [end, *_next_moments(engine, now)]
        if queue:
            moments.append(_parse(queue[0][0]) + step)
        target = min(moments)
        batch: list[tuple[int, dict[str, Any]]] = []
        while queue and _parse(queue[0][0]) <= target:
            _, n, message = heapq.heappop(queue)
            batch.append((n, message))
        clock.advance(seconds=max((target - now).total_seconds(), 0))
        if batch:
            stored = load_messages(store, batch, classifier=classifier, limits=limits, batch_size=5_000)
            report.replayed += stored.stored
            if progress is not None:
                progress(len(batch))
        delivered = engine.stats["delivered"]
        engine.run_until_idle()
        if responses and engine.stats["delivered"] > delivered:
            for message in _responses(store, spec, answered, clock.now()):
                heapq.heappush(queue, (message["timestamp"], sequence, message))
                sequence += 1
                report.responses += 1
            answered = clock.now()
        if target >= end and not queue:
            break
    report.automations = _summary(store, keys)
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _next_moments(engine: Engine, now: datetime) -> list[datetime]:
    """When the engine has something to do next on its own: a wait, a retry, a schedule."""
    from percorso.automation.triggers import TriggerRunner

    with engine.store.session() as s:
        due = s.rows(
            "SELECT min(due_at) FROM enrollments WHERE status IN ('active', 'waiting') AND due_at > ?", [now]
        )[0][0]
        retry = s.rows(
            "SELECT min(next_attempt_at) FROM outbox WHERE status = 'pending' AND next_attempt_at > ?", [now]
        )[0][0]
    schedule = TriggerRunner(engine).next_moment(now)
    return [m for m in (due, retry, schedule) if m is not None]


def _share(*parts: object) -> int:
    """A stable number in [0, 100) for a person's simulated choice."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()[0] * 100 // 256


def _responses(store: Store, spec: DemoSpec, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """People who got a reminder in (since, until] and confirm because of it, a little later."""
    keys = sorted({k for k, _ in RESPONSES})
    marks = ", ".join("?" for _ in keys)
    with store.session() as s:
        rows = s.rows(
            "SELECT o.automation_key, o.step, o.contact_id, o.sent_at, "
            "(SELECT min(i.value) FROM identities i WHERE i.contact_id = coalesce(c.merged_into, o.contact_id) "
            "AND i.kind = 'user_id') FROM outbox o JOIN contacts c ON c.contact_id = o.contact_id "
            f"WHERE o.status = 'sent' AND o.channel = 'email' AND o.automation_key IN ({marks}) "
            "AND o.sent_at > ? AND o.sent_at <= ?",
            [*keys, since, until],
        )
    out = []
    for automation, step, contact, sent_at, user_id in rows:
        share = RESPONSES.get((automation, step))
        if share is None or user_id is None or _share(spec.seed, contact, step) >= share:
            continue
        delay = 600 + _share(spec.seed, contact, step, "delay") / 100 * 3 * 3600  # 10 minutes to 3 hours
        at = sent_at.timestamp() + delay
        if at > spec.end_ts():
            continue
        path = "/registrati/confermato"
        out.append(
            {
                "type": "track",
                "event": "Registration Confirmed",
                "userId": user_id,
                "messageId": f"demo-{spec.seed}-reply-{contact}-{step}",
                "timestamp": _iso(at),
                "properties": {"method": "email", "after": step},
                "context": {
                    "library": {"name": "analytics.js", "version": "5.2.0"},
                    "page": {"path": path, "url": SITE + path, "title": "Account confermato"},
                    "locale": "it-IT",
                },
            }
        )
    return out


def _summary(store: Store, keys: list[str]) -> list[dict[str, Any]]:
    out = []
    with store.session() as s:
        for key in keys:
            enrolled, inside, goal, holdout = s.rows(
                "SELECT count(*), sum(CASE WHEN status IN ('active', 'waiting') THEN 1 ELSE 0 END), "
                "sum(CASE WHEN exit_reason = 'goal' THEN 1 ELSE 0 END), "
                "sum(CASE WHEN status = 'holdout' THEN 1 ELSE 0 END) FROM enrollments WHERE automation_key = ?",
                [key],
            )[0]
            sent = dict(
                s.rows(
                    "SELECT channel, count(*) FROM outbox WHERE automation_key = ? AND status = 'sent' GROUP BY channel",
                    [key],
                )
            )
            onsite = s.rows("SELECT count(*) FROM onsite_messages WHERE automation_key = ?", [key])[0][0]
            out.append(
                {
                    "automation": key,
                    "enrolled": int(enrolled or 0),
                    "inside": int(inside or 0),
                    "goal": int(goal or 0),
                    "holdout": int(holdout or 0),
                    "emails": int(sent.get("email", 0)),
                    "webhooks": int(sent.get("webhook", 0)),
                    "onsite": int(onsite or 0),
                }
            )
    return out


def demo_smtp() -> SmtpSettings:
    """``PERCORSO_SMTP_*``, except that with neither host nor port set the demo sends to the local
    inbox (``percorso automation inbox``, 127.0.0.1:1025) rather than port 25."""
    import os
    from dataclasses import replace

    from percorso.automation.inbox import SMTP_PORT

    smtp = SmtpSettings.from_env()
    if not os.environ.get("PERCORSO_SMTP_HOST") and not os.environ.get("PERCORSO_SMTP_PORT"):
        smtp = replace(smtp, port=SMTP_PORT)
    if smtp.sender == SmtpSettings().sender:
        smtp = replace(smtp, sender="Casa Aurora <ciao@casa-aurora.example>")
    return smtp


def answers(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


def own_inbox() -> LocalInbox | None:
    """The demo's own inbox, started in this process, when nobody configured an SMTP server
    (``PERCORSO_SMTP_*``) and none answers where the local inbox would be: the emails and the CRM
    webhooks of the example automations arrive there, quietly; None when one is already there."""
    import os

    from percorso.automation.inbox import SMTP_PORT, WEBHOOK_PORT

    if os.environ.get("PERCORSO_SMTP_HOST") or os.environ.get("PERCORSO_SMTP_PORT"):
        return None
    if answers("127.0.0.1", SMTP_PORT):
        return None
    webhooks = None if answers("127.0.0.1", WEBHOOK_PORT) else WEBHOOK_PORT
    return LocalInbox(smtp_port=SMTP_PORT, webhook_port=webhooks).start()


__all__ = [
    "RESPONSES",
    "ReplayReport",
    "apply_examples",
    "demo_smtp",
    "own_inbox",
    "replay_demo",
]
