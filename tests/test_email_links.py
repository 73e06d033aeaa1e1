"""Links in sent emails work end to end, on both stores: an automation sends a real email through
a real SMTP server (aiosmtpd); the reader's clicks on its tracked link, its open pixel and its
unsubscribe link go over HTTP to the live server and come back as touchpoints and an unsubscribe.
Tokens in the earlier format keep working; forged and non-ASCII ones are refused, never a 500."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import msgspec
import pytest
from aiosmtpd.controller import Controller

from percorso.automation.actions.email import SmtpSettings
from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine, EngineSettings
from percorso.automation.store import instance_secret, save_automation
from percorso.events import parse_message
from percorso.store import Store
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer, free_port
from tests.test_dashboard import signed_in

OFFER = "https://shop.example/offer?x=1&y=2"

AUTOMATION = """
key: welcome
name: Welcome
trigger: {event: Signed Up}
steps:
  - id: hello
    email:
      subject: "Welcome, {{ traits.firstName }}"
      text: "Our offer: https://shop.example/offer. Unsubscribe: {{ unsubscribe_url }}"
      html: >-
        <html><body><p>Hi {{ traits.firstName }}</p>
        <p><a href="https://shop.example/offer?x=1&amp;y=2">See the offer</a></p>
        <p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>
"""


class Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpSettings]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, SmtpSettings(host="127.0.0.1", port=controller.port, sender="Shop <news@shop.example>")
    controller.stop()


class Links(HTMLParser):
    """Every link target and image source of an HTML body, as a reader's client sees them."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.hrefs.append(str(found["href"]))
        if tag == "img" and found.get("src"):
            self.images.append(str(found["src"]))


def signed_up(store: Store, classifier: Any, user: str) -> int:
    messages = [
        {
            "type": "identify",
            "userId": user,
            "traits": {"email": f"{user}@example.it", "firstName": user.title(), "marketing_consent": True},
        },
        {"type": "track", "userId": user, "event": "Signed Up"},
    ]
    store.ingest(
        [
            parse_message(
                json.dumps({**m, "messageId": str(uuid.uuid4())}).encode(),
                received_at=datetime.now(UTC),
                classifier=classifier,
            )
            for m in messages
        ]
    )
    with store.session() as s:
        return int(
            s.rows("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value = ?", [user])[0][0]
        )


def sent_email(
    server: LiveServer, classifier: Any, smtp: tuple[Inbox, SmtpSettings]
) -> tuple[int, EmailMessage]:
    inbox, settings = smtp
    save_automation(server.store, load_automation(AUTOMATION), "test")
    contact = signed_up(server.store, classifier, "ada")
    Engine(server.store, smtp=settings, settings=EngineSettings(base_url=server.url)).run_until_idle()
    [message] = inbox.messages
    return contact, message


def touchpoints(store: Store, event: str) -> list[dict[str, Any]]:
    with store.session() as s:
        rows = s.rows("SELECT properties FROM events WHERE event = ? ORDER BY received_at", [event])
    return [msgspec.json.decode(r[0]) for r in rows]


def unsubscribed(store: Store, contact: int) -> bool:
    with store.session() as s:
        return bool(
            s.rows("SELECT count(*) FROM unsubscribes WHERE contact_id = ? AND channel = 'email'", [contact])[
                0
            ][0]
        )


def links_in(message: EmailMessage) -> tuple[str, str, str]:
    """The tracked link, the unsubscribe link and the open pixel of a received email's HTML."""
    html_part = message.get_body(("html",))
    assert html_part is not None
    found = Links(html_part.get_content())
    [tracked] = [h for h in found.hrefs if "/t/c/" in h]
    [unsubscribe] = [h for h in found.hrefs if "/u/" in h]
    [pixel] = found.images
    return tracked, unsubscribe, pixel


def test_tracked_link_open_pixel_and_unsubscribe_work_from_the_received_email(
    server: LiveServer, classifier: Any, smtp: tuple[Inbox, SmtpSettings]
) -> None:
    contact, message = sent_email(server, classifier, smtp)
    tracked, unsubscribe, pixel = links_in(message)
    assert str(message["List-Unsubscribe"]).strip() == f"<{unsubscribe}>"

    with httpx.Client(timeout=10) as reader:
        click = reader.get(tracked)
        assert click.status_code == 302, click.text
        assert click.headers["location"] == OFFER
        assert reader.get(tracked).status_code == 302  # a second click redirects too
        opened = reader.get(pixel)
        assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
        page = reader.get(unsubscribe)
        assert page.status_code == 200 and "Unsubscribe" in page.text
        assert not unsubscribed(server.store, contact)
        assert reader.post(unsubscribe).status_code == 200

    [clicked] = touchpoints(server.store, "Email Link Clicked")  # recorded once per link
    assert clicked["url"] == OFFER and clicked["automation"] == "welcome" and clicked["step"] == "hello"
    [seen] = touchpoints(server.store, "Email Opened")
    assert seen["automation"] == "welcome"
    assert unsubscribed(server.store, contact)


def test_one_click_unsubscribe_from_the_header(
    server: LiveServer, classifier: Any, smtp: tuple[Inbox, SmtpSettings]
) -> None:
    contact, message = sent_email(server, classifier, smtp)
    link = str(message["List-Unsubscribe"]).strip()[1:-1]
    assert "%" not in link.rpartition("/")[2]
    with httpx.Client(timeout=10) as mail_client:
        answer = mail_client.post(link, data={"List-Unsubscribe": "One-Click"})  # RFC 8058
        again = mail_client.post(link, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200 and again.status_code == 200
    assert unsubscribed(server.store, contact)
    # Where a user looks: the timeline (once, however often the link is used), the profile, the export.
    with server.client() as api:
        events = api.get(f"/v1/contacts/{contact}/timeline").json()["events"]
        profile = api.get(f"/v1/contacts/{contact}").json()
        export = api.get(f"/v1/contacts/{contact}/export").json()
    left = [e for e in events if e.get("event") == "Unsubscribed"]
    assert len(left) == 1 and left[0]["channel"] == "email" and left[0]["properties"]["source"] == "link"
    assert [(u["channel"], u["source"]) for u in profile["unsubscribed"]] == [("email", "link")]
    assert export["contact"]["unsubscribed"] == profile["unsubscribed"]
    assert "Unsubscribed" in [e.get("event") for e in export["events"]]
    add_user(server.store, "anna@example.it", "a long enough secret", role="admin")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    page = dashboard.get(f"/contacts/{contact}", params={"lang": "it"})
    dashboard.close()
    assert page.status_code == 200 and 'data-fact="unsubscribed"' in page.text


def legacy_token(secret: str, value: str) -> str:
    """A token as emails sent before the current format carried it."""
    mac = hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{quote(value, safe='')}.{mac}"


def test_links_in_emails_sent_before_the_current_format_still_work(
    server: LiveServer, classifier: Any, smtp: tuple[Inbox, SmtpSettings]
) -> None:
    contact, _ = sent_email(server, classifier, smtp)
    secret = instance_secret(server.store, "link_secret")
    with server.store.session() as s:
        [[key]] = s.rows("SELECT idempotency_key FROM outbox WHERE channel = 'email'")
    token = legacy_token(secret, key)
    assert "%2F" in token
    url_mac = legacy_token(secret, OFFER).rpartition(".")[2]
    with httpx.Client(base_url=server.url, timeout=10) as reader:
        click = reader.get(f"/t/c/{token}?u={quote(OFFER, safe='')}&s={url_mac}")
        assert click.status_code == 302 and click.headers["location"] == OFFER
        assert reader.get(f"/t/o/{token}").status_code == 200
        assert reader.post(f"/u/{legacy_token(secret, f'{contact}:email')}").status_code == 200
        # An old-format signature of another kind of value is no unsubscribe link.
        assert reader.post(f"/u/{legacy_token(secret, f'{contact}:sms')}").status_code == 404
    assert [c["url"] for c in touchpoints(server.store, "Email Link Clicked")] == [OFFER]
    assert len(touchpoints(server.store, "Email Opened")) == 1
    assert unsubscribed(server.store, contact)


def test_forged_links_are_refused_and_record_nothing(
    server: LiveServer, classifier: Any, smtp: tuple[Inbox, SmtpSettings]
) -> None:
    contact, message = sent_email(server, classifier, smtp)
    tracked, unsubscribe, _ = links_in(message)
    parts = urlsplit(tracked)
    query = parse_qs(parts.query)
    token = parts.path.rpartition("/")[2]
    with httpx.Client(base_url=server.url, timeout=10) as attacker:
        # An open redirect: the real token with another target.
        evil = attacker.get(f"/t/c/{token}", params={"u": "https://evil.example/", "s": query["s"][0]})
        assert evil.status_code == 404 and evil.json()["code"] == "not_found"
        # A tracked link's URL signature is not a token for anything else.
        url_token = f"{token.partition('.')[0]}.{query['s'][0]}"
        assert attacker.post(f"/u/{url_token}").status_code == 404
        # The unsubscribe token does not open messages, and vice versa.
        unsubscribe_token = unsubscribe.rpartition("/")[2]
        assert (
            attacker.get(f"/t/c/{unsubscribe_token}", params={"u": OFFER, "s": query["s"][0]}).status_code
            == 404
        )
        assert attacker.post(f"/u/{token}").status_code == 404
        tampered = unsubscribe_token[:-1] + ("1" if unsubscribe_token.endswith("0") else "0")
        assert attacker.post(f"/u/{tampered}").status_code == 404
    assert touchpoints(server.store, "Email Link Clicked") == []
    assert not unsubscribed(server.store, contact)


NON_ASCII_TOKENS = ["é", "abc.é", "YWJj.ü" + "0" * 31, "%FF.%FE", "12:email.\u00ff", "☃" * 40]


def test_non_ascii_tokens_are_refused_not_a_server_error(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as attacker:
        for token in NON_ASCII_TOKENS:
            path = quote(token, safe="%")
            for method in ("GET", "POST"):
                answer = attacker.request(method, f"/u/{path}")
                assert answer.status_code == 404, (token, method, answer.text)
                assert answer.json()["code"] == "not_found"
            pixel = attacker.get(f"/t/o/{path}")
            assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif", token
            click = attacker.get(f"/t/c/{path}", params={"u": "https://shop.example/", "s": token})
            assert click.status_code == 404 and click.json()["code"] == "not_found", token
