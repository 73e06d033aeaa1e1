"""Delivery of an automation's side effects: emails over SMTP and signed webhooks.

Each action is a pure part (check and render templates, add tracking, build the message, sign
the payload) and a thin I/O edge (:func:`send_email`, :func:`deliver_webhook`). Every failure is
a :class:`DeliveryError` whose ``transient`` flag tells the outbox to retry later
(:func:`backoff_seconds`) or give up.

Modules: ``errors`` (DeliveryError), ``email`` (templates, tracking, SMTP), ``webhook``
(signing, HTTP delivery, backoff).
"""

from percorso.automation.actions.email import (
    ALLOWED_VARIABLES,
    RenderedEmail,
    SmtpSettings,
    TemplateProblem,
    add_tracking,
    build_message,
    check_templates,
    message_id,
    render_email,
    send_email,
)
from percorso.automation.actions.errors import DeliveryError
from percorso.automation.actions.webhook import backoff_seconds, deliver_webhook, sign, verify

__all__ = [
    "ALLOWED_VARIABLES",
    "DeliveryError",
    "RenderedEmail",
    "SmtpSettings",
    "TemplateProblem",
    "add_tracking",
    "backoff_seconds",
    "build_message",
    "check_templates",
    "deliver_webhook",
    "message_id",
    "render_email",
    "send_email",
    "sign",
    "verify",
]
