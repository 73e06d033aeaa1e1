"""Webhooks cannot be turned against the network the worker runs in (server-side request forgery).

What an editor could try, and what happens:

* a webhook URL on loopback, a private or link-local network (the cloud metadata service at
  169.254.169.254), carrier-grade NAT, multicast or the unspecified address — written as an IP, an
  IPv6 literal, a name that resolves there (``localhost``), or an odd spelling the resolver
  understands (``2130706433``, ``0x7f.0.0.1``): refused before connecting, the delivery recorded
  as failed with the reason — unless an admin allows that network (PERCORSO_WEBHOOK_ALLOW_NETWORKS);
* a public receiver that redirects to a private address: redirects are never followed;
* reading internal replies through the stats: errors carry the status, never the reply's body;
* ``secret_env`` naming another secret of the worker (the database URL, cloud keys) to have it
  used as the signing key: only ``PERCORSO_WEBHOOK_*`` variables, refused when saved and at send.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import msgspec
import pytest

from percorso.automation.actions.egress import Destinations, parse_networks, webhook_client
from percorso.automation.actions.errors import DeliveryError
from percorso.automation.actions.webhook import deliver_webhook
from percorso.automation.definition import Automation, AutomationError, load_automation
from percorso.automation.engine import Engine, EngineSettings
from percorso.automation.stats import automation_stats
from percorso.automation.store import save_automation
from percorso.config import ConfigError, Settings
from percorso.events import parse_message
from percorso.store import Store
from tests.conftest import IN_CI, LiveServer


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on this machine that records every request and answers ``reply``."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.reply: tuple[int, dict[str, str], bytes] = (204, {}, b"")

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, headers, content = self.server.reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args: Any) -> None:
        return None


def serve(receiver: Receiver) -> Iterator[Receiver]:
    thread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield receiver
    receiver.shutdown()
    receiver.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve(Receiver())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def post(url: str, client: httpx.Client) -> int:
    return deliver_webhook(url, {"event": "Signed Up"}, secret=None, idempotency_key="k", client=client)


# -- the address check, on real sockets ------------------------------------------------------


def refused_urls(port: int) -> list[tuple[str, str]]:
    """URLs that reach this machine or a private network, and the reason each is refused for."""
    return [
        (f"http://127.0.0.1:{port}/hook", "loopback"),
        (f"http://127.1.2.3:{port}/hook", "loopback"),
        (f"http://localhost:{port}/hook", "loopback"),
        (f"http://2130706433:{port}/hook", "loopback"),  # 127.0.0.1 as one decimal number
        (f"http://0x7f.0.0.1:{port}/hook", "loopback"),  # hexadecimal
        (f"http://[::1]:{port}/hook", "loopback"),
        (f"http://[::ffff:127.0.0.1]:{port}/hook", "loopback"),  # IPv4-mapped IPv6
        (f"http://0.0.0.0:{port}/hook", "unspecified"),
        ("http://10.0.0.1/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://[fd00::1]/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://100.64.0.1/hook", "carrier-grade NAT"),
        ("http://224.0.0.1/hook", "multicast"),
    ]


def test_private_and_local_destinations_are_refused_before_connecting(receiver: Receiver) -> None:
    client = webhook_client()
    started = time.monotonic()
    for url, reason in refused_urls(receiver.port):
        with pytest.raises(DeliveryError) as caught:
            post(url, client)
        message = str(caught.value)
        assert caught.value.transient is False, url
        assert reason in message and url in message and "PERCORSO_WEBHOOK_ALLOW_NETWORKS" in message, message
    assert time.monotonic() - started < 3  # refused, not timed out
    assert receiver.requests == []


@pytest.mark.parametrize("url", ["http://0177.0.0.1/hook", "file:///etc/passwd", "http://user@[::1]/hook"])
def test_other_spellings_are_refused(url: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        post(url, webhook_client())
    assert caught.value.transient is False


def test_an_admin_can_allow_a_network(receiver: Receiver) -> None:
    client = webhook_client(["127.0.0.0/8"])
    assert post(f"http://127.0.0.1:{receiver.port}/hook", client) == 204
    # localhost may also resolve to ::1, which is not allowed: the allowed address is the one used.
    assert post(f"http://localhost:{receiver.port}/hook", client) == 204
    assert len(receiver.requests) == 2
    with pytest.raises(DeliveryError, match="private"):
        post("http://10.0.0.1/hook", client)  # only the networks listed


def test_ipv6_loopback_is_refused_unless_allowed() -> None:
    if not _ipv6_loopback():
        if IN_CI:
            pytest.fail("CI needs an IPv6 loopback (::1) for this test; it must not skip there")
        pytest.skip("no IPv6 loopback on this machine")
    for ipv6 in serve(Receiver("::1")):
        url = f"http://[::1]:{ipv6.port}/hook"
        with pytest.raises(DeliveryError, match="loopback"):
            post(url, webhook_client(["127.0.0.0/8"]))
        assert post(url, webhook_client(["::1"])) == 204
        assert len(ipv6.requests) == 1


def test_a_redirect_to_a_private_address_is_not_followed(receiver: Receiver) -> None:
    receiver.reply = (307, {"Location": "http://169.254.169.254/latest/meta-data/iam/"}, b"")
    with pytest.raises(DeliveryError) as caught:
        post(f"http://127.0.0.1:{receiver.port}/hook", webhook_client(["127.0.0.1"]))
    assert caught.value.transient is False
    assert "redirects are not followed" in str(caught.value)
    assert len(receiver.requests) == 1


def test_the_address_rules() -> None:
    rules = Destinations(["10.20.0.0/16", "192.168.1.20"])
    refused = [
        "127.0.0.1",
        "10.21.0.1",
        "192.168.1.21",
        "::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::a00:1",
    ]
    for address in refused:
        assert rules.refusal(_ip(address)) is not None, address
    for address in ["8.8.8.8", "2a00:1450:4001:82b::200e", "10.20.3.4", "192.168.1.20", "::ffff:10.20.0.9"]:
        assert rules.refusal(_ip(address)) is None, address
    with pytest.raises(ValueError, match="PERCORSO_WEBHOOK_ALLOW_NETWORKS: 'intranet'"):
        parse_networks(["10.0.0.0/8", "intranet"])


def _ip(text: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(text)


def test_the_setting_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERCORSO_WEBHOOK_ALLOW_NETWORKS", "10.20.0.0/16, 127.0.0.1")
    settings = EngineSettings.from_settings(Settings.from_env())
    assert settings.webhook_allow_networks == ("10.20.0.0/16", "127.0.0.1")
    assert EngineSettings.from_settings(Settings()).webhook_allow_networks == ()
    monkeypatch.setenv("PERCORSO_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/8,nope")
    with pytest.raises((ValueError, ConfigError), match="PERCORSO_WEBHOOK_ALLOW_NETWORKS"):
        EngineSettings.from_settings(Settings.from_env())


# -- through the engine, on both stores ------------------------------------------------------

HOOK = """
key: crm
name: CRM
trigger: {event: Signed Up}
steps:
  - id: notify
    webhook: {url: "URL", data: {reason: welcome}}
"""


def signed_up(store: Store, classifier: Any, user: str) -> None:
    message = {
        "type": "track",
        "userId": user,
        "messageId": str(uuid.uuid4()),
        "event": "Signed Up",
        "context": {"traits": {"email": f"{user}@example.it"}},
    }
    store.ingest(
        [parse_message(json.dumps(message).encode(), received_at=datetime.now(UTC), classifier=classifier)]
    )


def outbox(store: Store) -> list[tuple[str, str]]:
    with store.session() as s:
        return [
            (str(status), str(error or ""))
            for status, error in s.rows("SELECT status, last_error FROM outbox")
        ]


def test_a_webhook_to_this_machine_fails_with_the_reason_in_the_stats(
    store: Store, classifier: Any, receiver: Receiver
) -> None:
    save_automation(
        store, load_automation(HOOK.replace("URL", f"http://localhost:{receiver.port}/crm")), "test"
    )
    signed_up(store, classifier, "ada")
    Engine(store).run_until_idle()
    [(status, error)] = outbox(store)
    assert status == "failed" and "loopback" in error, error
    assert receiver.requests == []
    [failure] = automation_stats(store, "crm")["failures"]
    assert "loopback" in failure["error"] and "PERCORSO_WEBHOOK_ALLOW_NETWORKS" in failure["error"]


def test_an_allowed_network_is_reached_and_reply_bodies_stay_out_of_the_stats(
    store: Store, classifier: Any, receiver: Receiver
) -> None:
    receiver.reply = (403, {}, b"db_password=hunter2 internal stack trace")
    url = f"http://127.0.0.1:{receiver.port}/crm"
    save_automation(store, load_automation(HOOK.replace("URL", url)), "test")
    signed_up(store, classifier, "bea")
    Engine(store, settings=EngineSettings(webhook_allow_networks=("127.0.0.1",))).run_until_idle()
    assert len(receiver.requests) == 1
    [(status, error)] = outbox(store)
    assert status == "failed" and "403" in error
    [failure] = automation_stats(store, "crm")["failures"]
    assert "403" in failure["error"] and "hunter2" not in failure["error"]
    # Errors recorded by earlier versions carried the reply's first 200 characters: not shown.
    with store.writing() as s:
        s.execute("UPDATE outbox SET last_error = ?", [f"webhook {url} answered 500: hunter2 trace"])
    [failure] = automation_stats(store, "crm")["failures"]
    assert failure["error"] == f"webhook {url} answered 500"


# -- secret_env ------------------------------------------------------------------------------

SIGNED = HOOK.replace("data: {reason: welcome}", "secret_env: NAME")


@pytest.mark.parametrize(
    "name",
    [
        "PERCORSO_DATABASE_URL",
        "AWS_SECRET_ACCESS_KEY",
        "PERCORSO_WEBHOOK_ALLOW_NETWORKS",
        "percorso_webhook_x",
    ],
)
def test_secret_env_must_be_a_webhook_variable(name: str) -> None:
    with pytest.raises(AutomationError) as caught:
        load_automation(SIGNED.replace("URL", "https://crm.example/hook").replace("NAME", name))
    [problem] = caught.value.problems
    assert problem.as_dict()["field"] == "steps[0].webhook.secret_env"
    assert "PERCORSO_WEBHOOK_" in problem.message
    load_automation(SIGNED.replace("URL", "https://crm.example/hook").replace("NAME", "PERCORSO_WEBHOOK_CRM"))


def test_the_api_refuses_a_secret_env_naming_the_field(server: LiveServer) -> None:
    document = SIGNED.replace("URL", "https://crm.example/hook").replace("NAME", "PERCORSO_DATABASE_URL")
    with server.client() as http:
        answer = http.put("/v1/automations/crm", content=document)
        assert answer.status_code == 422
        assert answer.json()["field"] == "steps[0].webhook.secret_env"
        assert http.get("/v1/automations").json() == {"automations": []}


def test_a_stored_secret_env_outside_the_allowed_names_is_not_used(
    store: Store, classifier: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Saved before the rule existed: the definition loads, the webhook is not sent.
    monkeypatch.setenv("PERCORSO_TEST_CLOUD_KEY", "AKIA-secret")
    document = SIGNED.replace("URL", f"http://127.0.0.1:{receiver.port}/crm").replace(
        "NAME", "PERCORSO_TEST_CLOUD_KEY"
    )
    data = __import__("yaml").safe_load(document)
    save_automation(store, msgspec.convert(data, Automation), "before the rule")
    signed_up(store, classifier, "cid")
    Engine(store, settings=EngineSettings(webhook_allow_networks=("127.0.0.1",))).run_until_idle()
    [(status, error)] = outbox(store)
    assert status == "failed" and "secret_env must name a variable starting with PERCORSO_WEBHOOK_" in error
    assert receiver.requests == []
