"""Actions: decided (and rendered) inside the engine's transaction, delivered from the outbox.

:func:`act` runs at decision time. Messages are rendered then, so the outbox row holds exactly what
will be sent and a resend after a crash sends the same bytes; consent, unsubscribes and frequency
caps are checked then too. Profile changes (traits, tags) and on-site messages are written in the
same transaction — no outbox needed. :func:`deliver_one` sends one claimed outbox row.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from percorso.automation.actions.errors import DeliveryError
from percorso.journey.definition import display, duration_seconds

if TYPE_CHECKING:
    from percorso.automation.definition import Automation, Step
    from percorso.automation.engine import Batch, Engine, Enrollment
    from percorso.store.base import Session

log = logging.getLogger("percorso.automation")

RECENT_EVENTS = 20


def idempotency_key(enrollment: Enrollment) -> str:
    return f"{enrollment.automation_key}/{enrollment.enrollment_id}/{enrollment.seq + 1}"


def act(
    engine: Engine, s: Session, batch: Batch, automation: Automation, enrollment: Enrollment, step: Step
) -> tuple[str, str | None]:
    """Performs (or queues) the step's action; returns the outcome logged for the step."""
    profile = engine.profile(s, enrollment.live_contact)
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
            sent = s.rows(
                "SELECT count(*) FROM outbox WHERE contact_id = ? AND channel = 'email' AND category = 'marketing' "
                "AND status IN ('pending', 'sending', 'sent') AND created_at > ?",
                [profile.contact_id, since],
            )[0][0]
            if int(sent) + batch.queued[(profile.contact_id, "email")] >= cap.max:
                return "capped", f"{cap.max} marketing emails per {cap.per} reached"
    unsubscribe = f"{engine.settings.base_url}/u/{engine.sign(f'{profile.contact_id}:email')}"
    events: list[dict[str, Any]] = []
    if "events" in spec.text or (spec.html and "events" in spec.html) or "events" in spec.subject:
        events = s.dicts(
            "SELECT e.type, e.event, e.name, e.page_path AS page, e.timestamp, e.channel, e.properties "
            "FROM events e JOIN identities i ON i.identity_id = e.identity_id WHERE i.contact_id = ? "
            f"ORDER BY e.timestamp DESC LIMIT {RECENT_EVENTS}",
            [profile.contact_id],
        )
        for event in events:
            event["properties"] = msgspec.json.decode(event["properties"]) if event["properties"] else {}
    variables = {
        "contact": {"id": profile.contact_id, "email": profile.email, **profile.traits},
        "traits": profile.traits,
        "events": events,
        "automation": {"key": automation.key, "name": display(automation.name)},
        "unsubscribe_url": unsubscribe,
        "now": batch.now,
    }
    try:
        rendered = render_email(spec.subject, spec.text, spec.html, variables)
    except DeliveryError as exc:
        return "failed", str(exc)
    html = rendered.html
    if html is not None and spec.track:
        base = engine.settings.base_url
        token = engine.sign(key)
        html = add_tracking(
            html,
            open_url=f"{base}/t/o/{token}",
            unsubscribe_url=unsubscribe,
            click_url=lambda url: (
                f"{base}/t/c/{token}?u={_quote(url)}&s={engine.sign(url).rpartition('.')[2]}"
            ),
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


def _quote(url: str) -> str:
    from urllib.parse import quote

    return quote(url, safe="")


# -- delivery ------------------------------------------------------------------------------


def deliver_one(engine: Engine, row: dict[str, Any]) -> None:
    """Sends one claimed outbox row and records the result (sent, retry later, or failed)."""
    from percorso.automation.actions.webhook import backoff_seconds

    payload = msgspec.json.decode(row["payload"])
    key = row["idempotency_key"]
    try:
        if row["channel"] == "email":
            _send_email(engine, key, payload)
        elif row["channel"] == "webhook":
            _send_webhook(key, payload)
        elif row["channel"] == "event":
            _emit(
                engine, key, row["contact_id"], payload["event"], payload.get("properties") or {}, "internal"
            )
        else:
            raise DeliveryError(f"unknown channel {row['channel']!r}", transient=False)
    except DeliveryError as exc:
        attempts = int(row["attempts"]) + 1
        give_up = not exc.transient or attempts >= _max_attempts()
        delay = exc.retry_after or backoff_seconds(attempts, key=key)
        with engine.store.writing() as s:
            s.execute(
                "UPDATE outbox SET status = ?, attempts = ?, next_attempt_at = ?, claimed_at = NULL, last_error = ? "
                "WHERE idempotency_key = ?",
                [
                    "failed" if give_up else "pending",
                    attempts,
                    engine.clock.now() + timedelta(seconds=delay),
                    str(exc)[:1000],
                    key,
                ],
            )
        log.warning("%s %s: %s", "gave up on" if give_up else "will retry", key, exc)
        return
    with engine.store.writing() as s:
        s.execute(
            "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_at = ?, claimed_at = NULL, "
            "last_error = NULL WHERE idempotency_key = ?",
            [engine.clock.now(), key],
        )
    if row["channel"] == "email":
        # What the business did is part of the journey: the email comes back as a touchpoint.
        try:
            _emit(
                engine,
                f"{key}:sent",
                row["contact_id"],
                "Email Sent",
                {"automation": row["automation_key"], "step": row["step"], "subject": payload["subject"]},
                "email",
            )
        except DeliveryError as exc:
            log.warning("could not record the sent email %s: %s", key, exc)


def _max_attempts() -> int:
    from percorso.automation.engine import MAX_ATTEMPTS

    return MAX_ATTEMPTS


def _send_email(engine: Engine, key: str, payload: dict[str, Any]) -> None:
    from percorso.automation.actions.email import RenderedEmail, build_message, send_email

    rendered = RenderedEmail(subject=payload["subject"], text=payload["text"], html=payload.get("html"))
    message = build_message(
        rendered,
        to=payload["to"],
        sender=engine.smtp.sender,
        unsubscribe_url=payload.get("unsubscribe_url"),
        idempotency_key=key,
    )
    send_email(message, engine.smtp)


def _send_webhook(key: str, body: dict[str, Any]) -> None:
    from percorso.automation.actions.webhook import deliver_webhook

    secret = None
    if body.get("secret_env"):
        secret = os.environ.get(body["secret_env"])
        if not secret:
            raise DeliveryError(
                f"the webhook secret variable {body['secret_env']} is not set in this worker's environment",
                transient=True,
            )
    deliver_webhook(body["url"], body["payload"], secret=secret, idempotency_key=key)


def _emit(
    engine: Engine, message_id: str, contact_id: int, event: str, properties: dict[str, Any], channel: str
) -> None:
    """Stores an event for the contact (message id = the idempotency key, so it is stored once)."""
    from percorso.events import Limits, MessageError, parse_message

    with engine.store.session() as s:
        profile = engine.profile(s, int(contact_id))
        engine.__dict__.pop("_profiles", None)
    if profile is None:
        raise DeliveryError(f"contact {contact_id} no longer exists", transient=False)
    message: dict[str, Any] = {
        "type": "track",
        "event": event,
        "messageId": message_id,
        "properties": properties,
        # Wall-clock time: the event is stored now, whatever clock drives the engine's timers.
        "timestamp": datetime.now(UTC).isoformat(),
        "context": {"library": {"name": "percorso-automation", "version": "1"}, "channel": channel},
    }
    if profile.user_id:
        message["userId"] = profile.user_id
    elif profile.anonymous_id:
        message["anonymousId"] = profile.anonymous_id
    elif profile.email:
        message["context"]["traits"] = {"email": profile.email}
    else:
        raise DeliveryError(f"contact {contact_id} has no identifier to attach the event to", transient=False)
    try:
        parsed = parse_message(
            msgspec.json.encode(message),
            received_at=datetime.now(UTC),
            classifier=engine.classifier,
            limits=Limits(),
            historical=True,
        )
    except MessageError as exc:
        raise DeliveryError(f"the event is not valid: {exc}", transient=False) from None
    engine.store.ingest([parsed])
