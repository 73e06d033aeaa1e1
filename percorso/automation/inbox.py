"""A local inbox for trying automations: an SMTP server and a webhook receiver on loopback that
print every message as it arrives and keep it (``percorso automation inbox``).

The SMTP side is aiosmtpd, the server the test suite uses too; the webhook side checks the
``X-Percorso-Signature`` with the secret in ``PERCORSO_WEBHOOK_CRM_SECRET`` (the example
membership automation's), or the demo's secret when that is not set.

Example::

    with LocalInbox(smtp_port=1025, webhook_port=8765) as inbox:
        ...  # run the engine with SmtpSettings(host="127.0.0.1", port=1025)
        print(inbox.subjects("giulia.rossi1@example.it"))
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SMTP_PORT = 1025
WEBHOOK_PORT = 8765  # the example membership automation posts to http://127.0.0.1:8765/crm/...
WEBHOOK_SECRET_ENV = "PERCORSO_WEBHOOK_CRM_SECRET"
DEMO_WEBHOOK_SECRET = "casa-aurora-demo"  # what `percorso demo --automations` signs with by default


def webhook_secret() -> str:
    return os.environ.get(WEBHOOK_SECRET_ENV) or DEMO_WEBHOOK_SECRET


def email_line(message: EmailMessage) -> str:
    """One line per email: when it was sent (its Date header: the engine's clock), to, subject."""
    try:
        when = parsedate_to_datetime(str(message["Date"])).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        when = "(no date)"
    return f"{when}  email    to {message['To']}  {message['Subject']}"


class LocalInbox:
    """Receives emails (SMTP) and webhooks (HTTP POST) on loopback; ``echo`` gets a line for each."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        smtp_port: int = SMTP_PORT,
        webhook_port: int | None = WEBHOOK_PORT,
        save_dir: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ):
        self.host = host
        self.smtp_port = smtp_port
        self.webhook_port = webhook_port
        self.save_dir = save_dir
        self.echo = echo
        self.emails: list[EmailMessage] = []
        self.webhooks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._controller: Any = None
        self._http: ThreadingHTTPServer | None = None

    # -- receiving -------------------------------------------------------------------------------
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.emails.append(message)
            number = len(self.emails)
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / f"{number:05d}.eml").write_bytes(envelope.content)
        if self.echo is not None:
            self.echo(email_line(message))
        return "250 Message accepted for delivery"

    def _webhook(self, path: str, headers: dict[str, str], body: bytes) -> None:
        from percorso.automation.actions.webhook import verify

        header = headers.get("x-percorso-signature")
        signed = (
            "unsigned"
            if not header
            else "signed"
            if verify(webhook_secret(), header, body)
            else "BAD SIGNATURE"
        )
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"raw": body.decode("utf-8", "replace")}
        if not isinstance(payload, dict):  # any JSON may arrive here, not only percorso's
            payload = {"raw": payload}
        record = {"path": path, "headers": headers, "payload": payload, "signature": signed}
        with self._lock:
            self.webhooks.append(record)
            number = len(self.webhooks)
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            (self.save_dir / f"webhook-{number:05d}.json").write_text(json.dumps(record, indent=2))
        if self.echo is not None:
            when = str(payload.get("decided_at") or datetime.now(UTC).isoformat())[:16].replace("T", " ")
            person = payload.get("contact")
            contact = person.get("email") if isinstance(person, dict) else person
            self.echo(
                f"{when} UTC  webhook  {path}  {payload.get('automation')}/{payload.get('step')} "
                f"for {contact} ({signed})"
            )

    # -- reading ---------------------------------------------------------------------------------
    def subjects(self, address: str) -> list[str]:
        """The subjects of the emails sent to ``address``, in arrival order."""
        with self._lock:
            return [str(m["Subject"]) for m in self.emails if str(m["To"]) == address]

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> LocalInbox:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname=self.host, port=self.smtp_port)
        self._controller.start()
        if self.webhook_port is not None:
            inbox = self

            class Handler(BaseHTTPRequestHandler):
                def do_POST(self) -> None:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    inbox._webhook(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    self.send_response(204)
                    self.end_headers()

                def log_message(self, *args: Any) -> None:
                    return None

            try:
                self._http = ThreadingHTTPServer((self.host, self.webhook_port), Handler)
            except OSError:
                self._controller.stop()
                raise
            self.webhook_port = self._http.server_port
            threading.Thread(target=self._http.serve_forever, name="percorso-inbox-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> LocalInbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["DEMO_WEBHOOK_SECRET", "SMTP_PORT", "WEBHOOK_PORT", "LocalInbox", "email_line", "webhook_secret"]
