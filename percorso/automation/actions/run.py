"""Actions: decided (and rendered) inside the engine's transaction, delivered from the outbox.

:func:`act` runs at decision time. Messages are rendered then, so the outbox row holds exactly what
will be sent and a resend after a crash sends the same bytes; consent, unsubscribes and frequency
caps are checked then too. Profile changes (traits, tags) and on-site messages are written in the
same transaction — no outbox needed. :func:`send` sends one claimed outbox row and
:func:`record_sent` marks a group of sent ones.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from percorso.automation import links
from percorso.automation.actions.errors import DeliveryError
from percorso.journey.definition import display, duration_seconds
from percorso.values import read_json

if TYPE_CHECKING:
    from percorso.automation.actions.email import SmtpSession
    from percorso.automation.core import EngineCore as Engine
    from percorso.automation.definition import Automation, Step
    from percorso.automation.state import Batch, Enrollment
    from percorso.events import Event
    from percorso.store.base import Session

log = logging.getLogger("percorso.automation")

RECENT_EVENTS = 20


def idempotency_key(enrollment: Enrollment) -> str:
    return f"{enrollment.automation_key}/{enrollment.enrollment_id}/{enrollment.seq + 1}"


def act(
    engine: Engine, s: Session, batch: Batch, automation: Automation, enrollment: Enrollment, step: Step
) -> tuple[str, str | None]:
    """Performs (or queues) the step's action; returns the outcome logged for the step."""
    profile = engine.profile(s, enrollment.live_contact, batch.contacts)
    if profile is None:
        return "skipped", "the contact was erased"
    key = idempotency_key(enrollment)
    now = batch.now
    if step.set_traits is not None or step.unset_traits is not None or step.tag is not None:
        traits = dict(batch.traits.get(profile.contact_id) or profile.traits)
        if step.set_traits:
            traits.update(step.set_traits)
        for name in step.unset_traits or []:
            traits.pop(name, None)
        if step.tag:
            found = traits.get("tags")
            tags: list[Any] = found if isinstance(found, list) else []
            if step.tag not in tags:
                traits["tags"] = [*tags, step.tag]
        batch.traits[profile.contact_id] = traits
        profile.traits = traits
        return "done", None
    if step.onsite is not None:
        message = {
            "title": step.onsite.title,
            "body": step.onsite.body,
            "cta_text": step.onsite.cta_text,
            "cta_url": step.onsite.cta_url,
            "automation": automation.key,
            "step": step.id,
        }
        batch.onsite.append(
            [
                key,
                profile.contact_id,
                automation.key,
                msgspec.json.encode(message).decode(),
                now,
                now + timedelta(seconds=duration_seconds(step.onsite.expires)),
            ]
        )
        return "queued", None
    if step.move_stage is not None:
        return _move_stage(s, batch, enrollment, step, profile.contact_id, key)
    if step.emit is not None:
        emitted = {"event": step.emit.event, "properties": step.emit.properties}
        _queue(batch, key, enrollment, step, profile.contact_id, "event", "internal", emitted)
        return "queued", None
    if step.webhook is not None:
        payload: dict[str, Any] = {
            "automation": automation.key,
            "version": enrollment.version,
            "step": step.id,
            "enrollment": enrollment.enrollment_id,
            "variant": enrollment.variant,
            "contact": {"id": profile.contact_id, "email": profile.email, "traits": profile.traits},
            "data": step.webhook.data,
            "idempotency_key": key,
            "decided_at": now.isoformat(),
        }
        body = {"url": step.webhook.url, "secret_env": step.webhook.secret_env, "payload": payload}
        _queue(batch, key, enrollment, step, profile.contact_id, "webhook", "internal", body)
        return "queued", None
    if step.email is not None:
        return _email(engine, s, batch, automation, enrollment, step, profile, key)
    return "skipped", f"nothing to do for a {step.kind} step"


#: The touchpoint an outcome leaves on the contact's timeline, and its channel.
OUTCOME_EVENTS = {
    "suppressed": ("Email Suppressed", "email"),
    "capped": ("Email Suppressed", "email"),
    "failed": ("Automation Step Failed", "internal"),
}


#: The outbox category of events that only record an outcome: not an action of their step.
TIMELINE = "timeline"


def record_outcome(batch: Batch, enrollment: Enrollment, step: str, outcome: str, reason: str | None) -> None:
    """Queues the event that shows a suppressed send or a failed step on the contact's timeline
    (delivered through the outbox, once: its key is the step's own)."""
    event, channel = OUTCOME_EVENTS[outcome]
    key = f"{idempotency_key(enrollment)}:{outcome}"
    properties = {"automation": enrollment.automation_key, "step": step, "outcome": outcome, "reason": reason}
    payload = {"event": event, "properties": properties, "channel": channel}
    batch.outbox.append(
        [
            key,
            enrollment.enrollment_id,
            enrollment.automation_key,
            step,
            enrollment.live_contact,
            "event",
            TIMELINE,
            msgspec.json.encode(payload).decode(),
            "pending",
            0,
            batch.now,
            batch.now,
        ]
    )


def _move_stage(
    s: Session, batch: Batch, enrollment: Enrollment, step: Step, contact_id: int, key: str
) -> tuple[str, str | None]:
    """Queues a ``Stage Moved`` event: the stage engine reads it as entering the stage, so the move
    is part of the stage history that ``stages update``/``rebuild`` derive from events."""
    from percorso.analytics.stages import STAGE_MOVED
    from percorso.journey.definition import JourneyError, load_journey

    move = step.move_stage
    assert move is not None
    rows = s.rows("SELECT definition FROM journeys WHERE journey_key = ?", [move.journey])
    if not rows:
        return "failed", f"no journey {move.journey!r} is stored"
    raw = rows[0][0]
    try:
        journey = load_journey(raw if isinstance(raw, str) else msgspec.json.encode(raw).decode(), "store")
    except JourneyError as exc:
        return "failed", f"the stored journey {move.journey!r} is not valid: {exc}"
    if move.stage not in journey.stage_keys():
        return "failed", f"{move.stage!r} is not a stage of journey {move.journey}"
    moved = {
        "event": STAGE_MOVED,
        "properties": {
            "journey": move.journey,
            "stage": move.stage,
            "automation": enrollment.automation_key,
            "step": step.id,
        },
    }
    _queue(batch, key, enrollment, step, contact_id, "event", "internal", moved)
    return "queued", f"to {move.journey}/{move.stage}"


def _queue(
    batch: Batch,
    key: str,
    enrollment: Enrollment,
    step: Step,
    contact_id: int,
    channel: str,
    category: str,
    payload: dict[str, Any],
) -> None:
    batch.outbox.append(
        [
            key,
            enrollment.enrollment_id,
            enrollment.automation_key,
            step.id,
            contact_id,
            channel,
            category,
            msgspec.json.encode(payload).decode(),
            "pending",
            0,
            batch.now,
            batch.now,
        ]
    )
    if category == "marketing":
        batch.queued[(contact_id, channel)] += 1


def _email(
    engine: Engine,
    s: Session,
    batch: Batch,
    automation: Automation,
    enrollment: Enrollment,
    step: Step,
    profile: Any,
    key: str,
) -> tuple[str, str | None]:
    from percorso.automation.actions.email import add_tracking, render_email

    spec = step.email
    assert spec is not None
    if not profile.email:
        return "skipped", "the contact has no email address"
    if spec.category == "marketing":
        if profile.consent != "granted":
            why = "denied" if profile.consent == "denied" else "not given"
            return "suppressed", f"marketing consent {why}"
        if "email" in profile.unsubscribed:
            return "suppressed", "unsubscribed from email"
        cap = automation.caps.get("email")
        if cap is not None:
            since = batch.now - timedelta(seconds=duration_seconds(cap.per))
            sent = engine.marketing_emails(s, batch, profile.contact_id, since)
            if int(sent) + batch.queued[(profile.contact_id, "email")] >= cap.max:
                return "capped", f"{cap.max} marketing emails per {cap.per} reached"
    unsubscribe = links.unsubscribe_url(engine.settings.base_url, engine.secret, profile.contact_id)
    events: list[dict[str, Any]] = []
    if "events" in spec.text or (spec.html and "events" in spec.html) or "events" in spec.subject:
        events = s.dicts(
            "SELECT e.type, e.event, e.name, e.page_path AS page, e.timestamp, e.channel, e.properties "
            "FROM events e JOIN identities i ON i.identity_id = e.identity_id WHERE i.contact_id = ? "
            f"ORDER BY e.timestamp DESC LIMIT {RECENT_EVENTS}",
            [profile.contact_id],
        )
        for event in events:
            event["properties"] = read_json(event["properties"])
    variables = {
        "contact": {"id": profile.contact_id, "email": profile.email, **profile.traits},
        "traits": profile.traits,
        "events": events,
        "automation": {"key": automation.key, "name": display(automation.name)},
        "unsubscribe_url": unsubscribe,
        # {{ survey_url('nps-main', 9) }}: a score in one click from this email (web/automations.py)
        "survey_url": functools.partial(
            links.survey_url,
            engine.settings.base_url,
            engine.secret,
            contact_id=profile.contact_id,
            email_key=key,
        ),
        "now": batch.now,
    }
    try:
        rendered = render_email(spec.subject, spec.text, spec.html, variables)
    except DeliveryError as exc:
        return "failed", str(exc)
    html = rendered.html
    if html is not None and spec.track:
        base, secret = engine.settings.base_url, engine.secret
        html = add_tracking(
            html,
            open_url=links.open_url(base, secret, key),
            unsubscribe_url=unsubscribe,
            click_url=lambda url: links.click_url(base, secret, key, url),
        )
    payload = {
        "to": profile.email,
        "subject": rendered.subject,
        "text": rendered.text,
        "html": html,
        "unsubscribe_url": unsubscribe if spec.category == "marketing" else None,
    }
    _queue(batch, key, enrollment, step, profile.contact_id, "email", spec.category, payload)
    return "queued", None


# -- delivery ------------------------------------------------------------------------------


@dataclass
class Sent:
    """A message the remote side accepted, not yet marked sent."""

    row: dict[str, Any]
    payload: dict[str, Any]
    record: Event | None  # an ``emit`` step's event, stored when the row is marked sent


def send(engine: Engine, row: dict[str, Any], smtp: SmtpSession | None = None) -> Sent | None:
    """Sends one claimed outbox row (an email through ``smtp``, a connection kept open for the
    sender's batch, when given). A failure is recorded at once (retry later with backoff, or
    failed) and gives None; a success is recorded by :func:`record_sent`, with others."""
    from percorso.automation.actions.webhook import backoff_seconds

    payload = msgspec.json.decode(row["payload"])
    key = row["idempotency_key"]
    record: Event | None = None
    try:
        if row["channel"] == "email":
            _send_email(engine, key, payload, smtp)
        elif row["channel"] == "webhook":
            _send_webhook(engine, key, payload)
        elif row["channel"] == "event":
            record = _event(
                engine,
                key,
                row["contact_id"],
                payload["event"],
                payload.get("properties") or {},
                payload.get("channel") or "internal",
            )
        else:
            raise DeliveryError(f"unknown channel {row['channel']!r}", transient=False)
    except DeliveryError as exc:
        attempts = int(row["attempts"]) + 1
        give_up = not exc.transient or attempts >= _max_attempts()
        delay = exc.retry_after or backoff_seconds(attempts, key=key)
        # Only while the claim is still ours: a worker that took the row over may have sent it.
        lease = row.get("claimed_at")
        with engine.store.writing() as s:
            s.execute(
                "UPDATE outbox SET status = ?, attempts = ?, next_attempt_at = ?, claimed_at = NULL, last_error = ? "
                "WHERE idempotency_key = ? AND status = 'sending'" + (" AND claimed_at = ?" if lease else ""),
                [
                    "failed" if give_up else "pending",
                    attempts,
                    engine.clock.now() + timedelta(seconds=delay),
                    str(exc)[:1000],
                    key,
                    *([lease] if lease else []),
                ],
            )
        log.warning("%s %s: %s", "gave up on" if give_up else "will retry", key, exc)
        return None
    return Sent(row, payload, record)


def record_sent(engine: Engine, done: list[Sent]) -> None:
    """Marks ``done`` sent and stores what they produced — each email's ``Email Sent``
    touchpoint, each ``emit`` step's event — in one transaction, so every one of them exists
    exactly once. Only the remote side (SMTP server, webhook receiver) can see a message twice:
    when the worker dies after the remote accepted it and before this commit."""
    if not done:
        return
    emails = [d for d in done if d.row["channel"] == "email"]
    with engine.store.session() as s:
        known = _identifiers(s, {int(d.row["contact_id"]) for d in emails})
    records = [d.record for d in done if d.record is not None]
    for d in emails:
        # What the business did is part of the journey: the email comes back as a touchpoint.
        row = d.row
        try:
            records.append(
                _event(
                    engine,
                    f"{row['idempotency_key']}:sent",
                    row["contact_id"],
                    "Email Sent",
                    {
                        "automation": row["automation_key"],
                        "step": row["step"],
                        "subject": d.payload["subject"],
                    },
                    "email",
                    ids=known.get(int(row["contact_id"])),
                )
            )
        except DeliveryError as exc:
            log.warning("could not record the sent email %s: %s", row["idempotency_key"], exc)
    sent_at = engine.clock.now()
    keys = [d.row["idempotency_key"] for d in done]

    def mark_sent(s: Session) -> None:
        among, params = s.member("idempotency_key", keys)
        s.execute(
            "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, claimed_at = NULL, "
            f"last_error = NULL WHERE {among}",
            [sent_at, *params],
        )

    if records:
        engine.store.ingest(records, also=mark_sent)
        return
    with engine.store.writing() as s:
        mark_sent(s)


def deliver_one(engine: Engine, row: dict[str, Any]) -> None:
    """Sends one claimed outbox row and records the result (sent, retry later, or failed)."""
    sent = send(engine, row)
    if sent is not None:
        record_sent(engine, [sent])


def _identifiers(s: Session, contacts: set[int]) -> dict[int, dict[str, str]]:
    """Each contact's identifiers by kind (the smallest of each), following merges; one query."""
    if not contacts:
        return {}
    among, params = s.member("c.contact_id", sorted(contacts))
    found: dict[int, dict[str, str]] = {}
    for contact, kind, value in s.rows(
        "SELECT c.contact_id, i.kind, min(i.value) FROM contacts c JOIN identities i "
        f"ON i.contact_id = coalesce(c.merged_into, c.contact_id) WHERE {among} GROUP BY c.contact_id, i.kind",
        params,
    ):
        found.setdefault(int(contact), {})[kind] = value
    return found


def _max_attempts() -> int:
    from percorso.automation.state import MAX_ATTEMPTS

    return MAX_ATTEMPTS


def _send_email(engine: Engine, key: str, payload: dict[str, Any], smtp: SmtpSession | None = None) -> None:
    from percorso.automation.actions.email import RenderedEmail, build_message, send_email

    rendered = RenderedEmail(subject=payload["subject"], text=payload["text"], html=payload.get("html"))
    message = build_message(
        rendered,
        to=payload["to"],
        sender=engine.smtp.sender,
        unsubscribe_url=payload.get("unsubscribe_url"),
        idempotency_key=key,
        date=engine.clock.now(),
    )
    if smtp is not None:
        smtp.send(message)
    else:
        send_email(message, engine.smtp)


@lru_cache(maxsize=4)
def _http(allowed: tuple[str, ...]) -> httpx.Client:
    # One client per process (and allowed networks), reusing connections: creating a client loads
    # the CA bundle, which takes longer than a delivery.
    from percorso.automation.actions.egress import webhook_client

    return webhook_client(allowed)


def _send_webhook(engine: Engine, key: str, body: dict[str, Any]) -> None:
    from percorso.automation.actions.webhook import deliver_webhook, secret_env_problem

    secret = None
    name = body.get("secret_env")
    if name:
        problem = secret_env_problem(name)
        if problem:
            raise DeliveryError(f"the webhook was not sent: {problem}", transient=False)
        secret = os.environ.get(name)
        if not secret:
            raise DeliveryError(
                f"the webhook secret variable {name} is not set in this worker's environment",
                transient=True,
            )
    client = _http(engine.settings.webhook_allow_networks)
    deliver_webhook(body["url"], body["payload"], secret=secret, idempotency_key=key, client=client)


def _emit(
    engine: Engine, message_id: str, contact_id: int, event: str, properties: dict[str, Any], channel: str
) -> None:
    """Stores an event for the contact (message id = the idempotency key, so it is stored once)."""
    engine.store.ingest([_event(engine, message_id, contact_id, event, properties, channel)])


def _event(
    engine: Engine,
    message_id: str,
    contact_id: int,
    event: str,
    properties: dict[str, Any],
    channel: str,
    *,
    ids: dict[str, str] | None = None,
) -> Event:
    """An event for the contact to store (its message id is derived from the idempotency key).
    ``ids``: the contact's identifiers by kind when the caller already read them."""
    from percorso.events import Limits, MessageError, parse_message

    profile = None
    if not ids:
        with engine.store.session() as s:
            ids = _identifiers(s, {int(contact_id)}).get(int(contact_id), {})
            # No identifier left: an email only in the traits, or the contact was erased.
            profile = None if ids else engine.load_profile(s, int(contact_id))
    if not ids and profile is None:
        raise DeliveryError(f"contact {contact_id} no longer exists", transient=False)
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "messageId": message_id,
        "properties": properties,
        # The engine's time (a replay runs on a simulated clock), but never later than the wall
        # clock: the collector refuses events from the future.
        "timestamp": min(engine.clock.now(), datetime.now(UTC)).isoformat(),
        "context": {"library": {"name": "percorso-automation", "version": "1"}, "channel": channel},
    }
    email = ids.get("email") or (profile.email if profile else None)
    if ids.get("user_id"):
        message["userId"] = ids["user_id"]
    elif ids.get("anonymous_id"):
        message["anonymousId"] = ids["anonymous_id"]
    elif email:
        message["context"]["traits"] = {"email": email}
    else:
        raise DeliveryError(f"contact {contact_id} has no identifier to attach the event to", transient=False)
    try:
        return parse_message(
            msgspec.json.encode(message),
            received_at=datetime.now(UTC),
            classifier=engine.classifier,
            limits=Limits(),
            historical=True,
        )
    except MessageError as exc:
        raise DeliveryError(f"the event is not valid: {exc}", transient=False) from None
