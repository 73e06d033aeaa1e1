"""Delivery of automation side effects: emails through a real SMTP server (aiosmtpd) and webhooks
to a real HTTP receiver, plus the pure parts — templates, tracking, signatures, backoff."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import http.server
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiosmtpd.controller import Controller

from percorso.automation.actions import (
    ALLOWED_VARIABLES,
    DeliveryError,
    RenderedEmail,
    SmtpSettings,
    add_tracking,
    backoff_seconds,
    build_message,
    check_templates,
    deliver_webhook,
    render_email,
    send_email,
    sign,
    verify,
)
from percorso.automation.actions.egress import webhook_client

SECRET = "whsec_test"
NOW = 1_700_000_000.0
SENDER = "Shop <news@shop.test>"
UNSUBSCRIBE = "https://shop.test/u/abc123"
OPEN_URL = "https://t.shop.test/o/abc123.gif"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def click_url(original: str) -> str:
    return "https://t.shop.test/c?u=" + quote(original, safe="")


# --- a real SMTP server ---------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message, refuses the recipients listed in ``refuse``
    and, when ``reject_data`` is set, answers the message itself with it."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    reject_data: str | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reject_data is not None:
            return self.reject_data
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[Mailbox, SmtpSettings]]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield mailbox, SmtpSettings(host="127.0.0.1", port=controller.port, sender=SENDER, timeout=5.0)
    finally:
        controller.stop()


@pytest.fixture
def smtp(smtp_server: tuple[Mailbox, SmtpSettings]) -> tuple[Mailbox, SmtpSettings]:
    mailbox, settings = smtp_server
    mailbox.received.clear()
    mailbox.refuse.clear()
    mailbox.reject_data = None
    return mailbox, settings


CART_HTML = """<html><body>
<p>Hi {{ traits.first_name }}, {{ traits.bio }}</p>
<p><a href="https://shop.test/cart?x=1&amp;y=2">Back to your cart</a>
<a href='https://shop.test/help'>Help</a> <a href="mailto:help@shop.test">Write to us</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>"""


def cart_email(
    traits: dict[str, Any], key: str = "run-1:reminder", to: str = "ada@example.com"
) -> EmailMessage:
    rendered = render_email(
        "Your cart is waiting, {{ traits.first_name }}",
        "Hi {{ traits.first_name }}, your cart: https://shop.test/cart\nUnsubscribe: {{ unsubscribe_url }}\n",
        CART_HTML,
        {"traits": traits, "unsubscribe_url": UNSUBSCRIBE},
    )
    assert rendered.html is not None
    html = add_tracking(rendered.html, open_url=OPEN_URL, click_url=click_url, unsubscribe_url=UNSUBSCRIBE)
    rendered = RenderedEmail(rendered.subject, rendered.text, html)
    return build_message(rendered, to=to, sender=SENDER, unsubscribe_url=UNSUBSCRIBE, idempotency_key=key)


def test_email_arrives_with_both_parts_tracking_and_one_click_unsubscribe(
    smtp: tuple[Mailbox, SmtpSettings],
) -> None:
    mailbox, settings = smtp
    send_email(cart_email({"first_name": "Ada", "bio": "<script>alert(1)</script>"}), settings)

    [got] = mailbox.received
    assert got.mail_from == "news@shop.test"
    assert got.rcpt_tos == ["ada@example.com"]
    message = got.message
    assert message["Subject"] == "Your cart is waiting, Ada"
    assert message["To"] == "ada@example.com"
    assert message.get_content_type() == "multipart/alternative"
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Percorso-Idempotency-Key"] == "run-1:reminder"
    assert message["Message-ID"] == cart_email({}, key="run-1:reminder")["Message-ID"]

    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text = text_part.get_content()
    html = html_part.get_content()
    assert text.startswith("Hi Ada, your cart: https://shop.test/cart")  # text links are left alone
    # The trait is escaped in HTML: it arrives as text, never as a script.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html
    # Links go through the click tracker with the URL as the reader would follow it.
    assert f'href="{click_url("https://shop.test/cart?x=1&y=2")}"' in html
    assert f"href='{click_url('https://shop.test/help')}'" in html
    assert 'href="mailto:help@shop.test"' in html
    assert f'href="{UNSUBSCRIBE}"' in html
    assert html.index(f'<img src="{OPEN_URL}"') < html.index("</body>")


def test_message_id_follows_the_idempotency_key() -> None:
    first = cart_email({}, key="run-1:reminder")
    again = cart_email({}, key="run-1:reminder")
    other = cart_email({}, key="run-2:reminder")
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"] != other["Message-ID"]
    assert first["Message-ID"].endswith("@percorso.local>")


def test_text_only_email_is_a_single_plain_part(smtp: tuple[Mailbox, SmtpSettings]) -> None:
    mailbox, settings = smtp
    rendered = render_email("Receipt", "Thanks for your order.", None, {})
    send_email(
        build_message(
            rendered, to="bob@example.com", sender=SENDER, unsubscribe_url=None, idempotency_key="k"
        ),
        settings,
    )
    [got] = mailbox.received
    assert got.message.get_content_type() == "text/plain"
    assert got.message.get_content().rstrip() == "Thanks for your order."
    assert "List-Unsubscribe" not in got.message


@pytest.mark.parametrize(
    ("reply", "transient"),
    [("550 5.1.1 No such mailbox", False), ("451 4.3.0 Mailbox busy, try later", True)],
)
def test_refused_recipient_is_classified_by_code(
    smtp: tuple[Mailbox, SmtpSettings], reply: str, transient: bool
) -> None:
    mailbox, settings = smtp
    mailbox.refuse["ghost@example.com"] = reply
    with pytest.raises(DeliveryError) as caught:
        send_email(cart_email({}, to="ghost@example.com"), settings)
    assert caught.value.transient is transient
    assert f"127.0.0.1:{settings.port}" in str(caught.value)
    assert reply.split()[0] in str(caught.value)
    assert mailbox.received == []


@pytest.mark.parametrize(
    ("reply", "transient"),
    [("554 5.7.1 Message rejected as spam", False), ("452 4.3.1 Insufficient system storage", True)],
)
def test_rejected_message_is_classified_by_code(
    smtp: tuple[Mailbox, SmtpSettings], reply: str, transient: bool
) -> None:
    mailbox, settings = smtp
    mailbox.reject_data = reply
    with pytest.raises(DeliveryError) as caught:
        send_email(cart_email({}), settings)
    assert caught.value.transient is transient
    assert f"127.0.0.1:{settings.port} refused the message: {reply}" in str(caught.value)


def test_closed_port_is_transient() -> None:
    port = free_port()
    with pytest.raises(DeliveryError) as caught:
        send_email(cart_email({}), SmtpSettings(port=port, timeout=2.0))
    assert caught.value.transient is True
    assert f"127.0.0.1:{port}" in str(caught.value)


@pytest.mark.parametrize("to", ["not-an-address", "ada@example.com\r\nBcc: all@example.com", ""])
def test_build_message_refuses_a_bad_recipient(to: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        cart_email({}, to=to)
    assert caught.value.transient is False


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, SmtpSettings()),
        (
            {
                "PERCORSO_SMTP_HOST": "mail.example.com",
                "PERCORSO_SMTP_PORT": "587",
                "PERCORSO_SMTP_USER": "u",
                "PERCORSO_SMTP_PASSWORD": "p",
                "PERCORSO_SMTP_STARTTLS": "true",
                "PERCORSO_SMTP_FROM": SENDER,
            },
            SmtpSettings(
                host="mail.example.com", port=587, username="u", password="p", starttls=True, sender=SENDER
            ),
        ),
        ({"PERCORSO_SMTP_SSL": "1"}, SmtpSettings(port=465, ssl=True)),
    ],
)
def test_smtp_settings_from_env(environ: dict[str, str], expected: SmtpSettings) -> None:
    assert SmtpSettings.from_env(environ) == expected


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PERCORSO_SMTP_PORT": "smtp"}, "PERCORSO_SMTP_PORT"),
        ({"PERCORSO_SMTP_PORT": "70000"}, "PERCORSO_SMTP_PORT"),
        ({"PERCORSO_SMTP_STARTTLS": "maybe"}, "PERCORSO_SMTP_STARTTLS"),
        ({"PERCORSO_SMTP_SSL": "1", "PERCORSO_SMTP_STARTTLS": "1"}, "PERCORSO_SMTP_SSL"),
    ],
)
def test_smtp_settings_name_the_bad_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SmtpSettings.from_env(environ)


# --- templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "text", "html", "expected"),
    [
        ("Hi {{ traits.first_name }}", "{{ contact.email }} {{ now }}", "<p>{{ events | length }}</p>", []),
        ("Hi", "{% for e in events %}{{ loop.index }}{{ e.name }}{% endfor %}", None, []),
        ("Hi", "ok", "<p>\n  {{ contact.email }\n</p>", ["html: syntax error on line 2"]),
        ("Hi {% if %}", "ok", None, ["subject: syntax error on line 1"]),
        (
            "Hi",
            "ok",
            "<p>\n{{ frist_name }}</p>",
            [
                "html: unknown variable 'frist_name' (available: contact, traits, events",
                "line 2",
                "traits.frist_name",
            ],
        ),
        ("Hi", "{{ trait.first_name }}", None, ["text: unknown variable 'trait'", "did you mean 'traits'?"]),
        ("{{ traits.x | shout }}", "ok", None, ["subject: error on line 1: No filter named 'shout'"]),
        ("Hi", "{% include 'footer.txt' %}", None, ["text: include, import and extends are not available"]),
    ],
)
def test_check_templates(subject: str, text: str, html: str | None, expected: list[str]) -> None:
    problems = check_templates(subject, text, html)
    if not expected:
        assert problems == []
    else:
        assert len(problems) == 1, problems
        for fragment in expected:
            assert fragment in problems[0]


def test_allowed_variables() -> None:
    assert {
        "contact",
        "traits",
        "events",
        "automation",
        "unsubscribe_url",
        "survey_url",
        "now",
    } == ALLOWED_VARIABLES


def test_render_tolerates_missing_traits_and_escapes_only_html() -> None:
    rendered = render_email(
        "Hello {{ traits.first_name }}\r\nBcc: all@example.com",
        "Hi {{ traits.first_name }}{{ traits.address.city }}! {{ traits.note }} <b>{{ traits.nickname }}</b>\n",
        "<p>Hi {{ traits.first_name }}! {{ traits.note }} {{ traits.nickname }}</p>",
        {"traits": {"note": "Tom & Jerry <3", "nickname": None}},
    )
    assert rendered.subject == "Hello Bcc: all@example.com"  # one line: no header can be injected
    assert rendered.text == "Hi ! Tom & Jerry <3 <b></b>\n"
    assert rendered.html == "<p>Hi ! Tom &amp; Jerry &lt;3 </p>"


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{{ traits.__class__.__init__.__globals__ }}", "unsafe"),
        ("{{ traits.missing.__class__ }}", "unsafe"),
        ("{{ traits.count + 1 }}", "could not be rendered"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ],
)
def test_render_failures_are_permanent(template: str, says: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        render_email("Hi", "ok", template, {"traits": {}})
    assert caught.value.transient is False
    assert "html template" in str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<a href="https://a.test/">a</a>', f'<a href="{click_url("https://a.test/")}">a</a>'),
        (
            "<A HREF='http://a.test/?q=1&amp;r=2'>a</A>",
            f"<A HREF='{click_url('http://a.test/?q=1&r=2')}'>a</A>",
        ),
        ("<a class=x href=https://a.test/>a</a>", f'<a class=x href="{click_url("https://a.test/")}">a</a>'),
        (
            '<a title="href=https://no.test" href="#top">a</a>',
            '<a title="href=https://no.test" href="#top">a</a>',
        ),
        ('<a href="mailto:a@b.test">a</a>', '<a href="mailto:a@b.test">a</a>'),
        (f'<a href="{UNSUBSCRIBE}">u</a>', f'<a href="{UNSUBSCRIBE}">u</a>'),
        ('<a data-href="https://x.test" name="n">a</a>', '<a data-href="https://x.test" name="n">a</a>'),
        (
            '<link href="https://a.test/s.css"><abbr>x</abbr>',
            '<link href="https://a.test/s.css"><abbr>x</abbr>',
        ),
    ],
)
def test_add_tracking_rewrites_only_web_links(html: str, expected: str) -> None:
    assert add_tracking(html, open_url=None, click_url=click_url, unsubscribe_url=UNSUBSCRIBE) == expected


def test_add_tracking_pixel() -> None:
    pixel = '<img src="https://t.test/o?a=1&amp;b=2" width="1" height="1"'
    with_body = add_tracking("<body><p>x</p></BODY>", open_url="https://t.test/o?a=1&b=2", click_url=None)
    assert with_body.startswith("<body><p>x</p>" + pixel) and with_body.endswith("</BODY>")
    fragment = add_tracking("<p>x</p>", open_url="https://t.test/o?a=1&b=2", click_url=None)
    assert fragment.startswith("<p>x</p>" + pixel)
    assert add_tracking("<p>x</p>", open_url=None, click_url=None) == "<p>x</p>"


# --- a real webhook receiver ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    hold: float = 0.0  # seconds to wait before answering (until the test ends, at most)


@dataclass
class Request:
    path: str
    headers: Message
    body: bytes


class HookServer(http.server.ThreadingHTTPServer):
    """Records every POST and answers with the next queued :class:`Reply` (200 when none)."""

    daemon_threads = False  # server_close() waits for handlers: no thread outlives its test

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HookHandler)
        self.requests: list[Request] = []
        self.replies: queue.SimpleQueue[Reply] = queue.SimpleQueue()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/hook"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here


class HookHandler(http.server.BaseHTTPRequestHandler):
    server: HookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(Request(self.path, self.headers, body))
        reply = Reply() if self.server.replies.empty() else self.server.replies.get()
        if reply.hold:
            self.server.release.wait(reply.hold)
        payload = reply.body.encode()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up waiting

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    server = HookServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture(scope="module")
def loopback() -> Iterator[httpx.Client]:
    """A webhook client allowed to reach this machine, where the test receivers listen."""
    with webhook_client(["127.0.0.0/8"]) as client:
        yield client


def deliver(url: str, client: httpx.Client, **options: Any) -> int:
    options.setdefault("secret", SECRET)
    options.setdefault("idempotency_key", "run-1:notify")
    return deliver_webhook(
        url, {"event": "Signed Up", "traits": {"plan": "pro"}}, now=lambda: NOW, client=client, **options
    )


def test_webhook_is_signed_json_with_an_idempotency_key(hooks: HookServer, loopback: httpx.Client) -> None:
    assert deliver(hooks.url, loopback) == 200
    [request] = hooks.requests
    assert request.path == "/hook"
    assert request.body == b'{"event":"Signed Up","traits":{"plan":"pro"}}'
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == "run-1:notify"
    assert request.headers["User-Agent"] == "percorso-webhooks/1"
    signature = request.headers["X-Percorso-Signature"]
    assert signature.startswith(f"t={int(NOW)},v1=")
    assert verify(SECRET, signature, request.body, now=NOW + 10)
    assert not verify(SECRET, signature, request.body.replace(b"pro", b"free"), now=NOW)
    assert not verify("another-secret", signature, request.body, now=NOW)
    assert not verify(SECRET, signature, request.body, now=NOW + 301)  # a replay, too late


def test_webhook_without_a_secret_is_unsigned_and_reuses_a_client(
    hooks: HookServer, loopback: httpx.Client
) -> None:
    assert deliver(hooks.url, loopback, secret=None) == 200
    assert deliver(hooks.url, loopback, secret=None, idempotency_key="run-2:notify") == 200
    assert not loopback.is_closed
    assert [r.headers["X-Percorso-Signature"] for r in hooks.requests] == [None, None]
    assert [r.headers["Idempotency-Key"] for r in hooks.requests] == ["run-1:notify", "run-2:notify"]


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (500, True),
        (503, True),
        (408, True),
        (425, True),
        (429, True),
        (400, False),
        (404, False),
        (410, False),
    ],
)
def test_webhook_failures_are_classified_by_status(
    hooks: HookServer, loopback: httpx.Client, status: int, transient: bool
) -> None:
    hooks.replies.put(Reply(status, body="internal detail " * 100))
    with pytest.raises(DeliveryError) as caught:
        deliver(hooks.url, loopback)
    assert caught.value.transient is transient
    message = str(caught.value)
    assert hooks.url in message and str(status) in message
    assert ("will retry" if transient else "not retried") in message
    assert "internal detail" not in message  # stats show the error to viewers: never the reply


def test_webhook_retry_after_and_redirects(hooks: HookServer, loopback: httpx.Client) -> None:
    hooks.replies.put(Reply(429, headers={"Retry-After": "7"}))
    with pytest.raises(DeliveryError) as caught:
        deliver(hooks.url, loopback)
    assert caught.value.transient is True
    assert caught.value.retry_after == 7.0

    hooks.replies.put(Reply(302, headers={"Location": "https://elsewhere.test/hook"}))
    with pytest.raises(DeliveryError) as caught:
        deliver(hooks.url, loopback)
    assert caught.value.transient is False
    assert "https://elsewhere.test/hook" in str(caught.value)
    assert len(hooks.requests) == 2  # the redirect was not followed


def test_webhook_connection_refused_is_transient(loopback: httpx.Client) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    with pytest.raises(DeliveryError) as caught:
        deliver(url, loopback, timeout=2.0)
    assert caught.value.transient is True
    assert url in str(caught.value)


def test_webhook_timeout_is_transient(hooks: HookServer, loopback: httpx.Client) -> None:
    hooks.replies.put(Reply(hold=5.0))
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        deliver(hooks.url, loopback, timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert caught.value.transient is True
    assert "0.3s" in str(caught.value)


def test_webhook_payload_must_be_json(hooks: HookServer, loopback: httpx.Client) -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    assert deliver_webhook(hooks.url, {"at": when}, secret=None, idempotency_key="k", client=loopback) == 200
    assert hooks.requests[0].body == b'{"at":"2024-05-01T12:00:00+00:00"}'
    with pytest.raises(DeliveryError) as caught:
        deliver_webhook(hooks.url, {"blob": object()}, secret=None, idempotency_key="k", client=loopback)
    assert caught.value.transient is False
    assert len(hooks.requests) == 1


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", f"t={int(NOW)}", f"t=soon,v1={'0' * 64}", f"t={int(NOW)},v1={'0' * 64}", "garbage"],
)
def test_verify_rejects_malformed_or_wrong_signatures(header: str) -> None:
    assert not verify(SECRET, header, b"{}", now=NOW)


def test_verify_accepts_any_signature_during_secret_rotation() -> None:
    body = b'{"event":"Signed Up"}'
    old = sign("old-secret", int(NOW), body)
    new = sign(SECRET, int(NOW), body).partition(",")[2]
    assert verify(SECRET, f"{old},{new}", body, now=NOW)
    assert verify("old-secret", f"{old},{new}", body, now=NOW)


# --- backoff --------------------------------------------------------------------------------------


def test_backoff_grows_with_bounded_jitter_and_is_capped() -> None:
    delays = [backoff_seconds(attempt, base=30.0, cap=3600.0) for attempt in range(1, 16)]
    for attempt, delay in enumerate(delays, start=1):
        assert delay <= 3600.0
        assert delay == min(3600.0, delay) and delay >= min(3600.0, 0.9 * 30.0 * 2 ** (attempt - 1))
        assert delay <= 1.1 * 30.0 * 2 ** (attempt - 1)
    uncapped = [d for d in delays if d < 3600.0]
    assert len(uncapped) >= 5
    assert uncapped == sorted(uncapped) and len(set(uncapped)) == len(uncapped)
    assert delays[-1] == 3600.0
    assert delays == [backoff_seconds(attempt, base=30.0, cap=3600.0) for attempt in range(1, 16)]
    # Different deliveries spread out instead of retrying in lockstep.
    assert len({backoff_seconds(3, key=f"run-{n}") for n in range(10)}) == 10
    with pytest.raises(ValueError, match="attempt"):
        backoff_seconds(0)
