"""Email through SMTP servers as real providers run them (aiosmtpd, on loopback): STARTTLS on a
submission port with authentication required after TLS, implicit TLS (port 465 style) with
authentication, and the failures a user meets — a wrong password, a server that wants STARTTLS
when the settings do not ask for it, a certificate nobody trusts — each a DeliveryError naming
the setting to check. The certificates are made here: a CA, and a server certificate for
127.0.0.1 it signs; the client trusts the CA through SSL_CERT_FILE, as a user with a private CA
would."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from percorso.automation.actions.email import DeliveryError, SmtpSession, SmtpSettings
from tests.conftest import free_port

USER, PASSWORD = "percorso@casa-aurora.it", "a long app password"


def _cert(subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any, *, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("percorso test CA", ca_key, None, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", key, ca.subject, ca_key, ca=False)
    paths = {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[tuple[bool, bool], bytes]] = []  # ((signed in, over TLS), content)
        self.logins: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # STARTTLS sets session.ssl; implicit TLS shows on the transport
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        self.messages.append(((bool(session.authenticated), tls), envelope.content))
        return "250 OK"


def authenticator(inbox: Inbox):
    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        if ok:
            inbox.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)

    return check


def server_context(certificates: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates["cert"], certificates["key"])
    return context


@pytest.fixture
def submission(certificates: dict[str, Path]) -> Iterator[tuple[Inbox, int]]:
    """Port 587 style: STARTTLS required, then authentication required."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context(certificates),
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator(inbox),
    )
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def implicit_tls(certificates: dict[str, Path]) -> Iterator[tuple[Inbox, int]]:
    """Port 465 style: TLS from the first byte, authentication required."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        ssl_context=server_context(certificates),
        auth_required=True,
        auth_require_tls=False,  # aiosmtpd only counts STARTTLS as TLS; here every byte is TLS
        authenticator=authenticator(inbox),
    )
    controller.start()
    yield inbox, port
    controller.stop()


def letter(subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Casa Aurora <ciao@casa-aurora.it>"
    message["To"] = "giulia@example.it"
    message["Subject"] = subject
    message.set_content("Benvenuta nel Club.")
    return message


def settings(port: int, **env: str) -> SmtpSettings:
    return SmtpSettings.from_env({"PERCORSO_SMTP_HOST": "127.0.0.1", "PERCORSO_SMTP_PORT": str(port), **env})


def test_starttls_then_login_delivers(
    submission: tuple[Inbox, int], certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, port = submission
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    env = {"PERCORSO_SMTP_STARTTLS": "1", "PERCORSO_SMTP_USER": USER, "PERCORSO_SMTP_PASSWORD": PASSWORD}
    with SmtpSession(settings(port, **env)) as session:
        session.send(letter("Benvenuta"))
        session.send(letter("Il Club in due minuti"))  # the same connection, still TLS and signed in
    assert [how for how, _ in inbox.messages] == [(True, True), (True, True)]
    assert b"Subject: Il Club in due minuti" in inbox.messages[1][1]
    assert len(inbox.logins) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # TLS from the first byte
def test_implicit_tls_then_login_delivers(
    implicit_tls: tuple[Inbox, int], certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, port = implicit_tls
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    env = {"PERCORSO_SMTP_SSL": "1", "PERCORSO_SMTP_USER": USER, "PERCORSO_SMTP_PASSWORD": PASSWORD}
    with SmtpSession(settings(port, **env)) as session:
        session.send(letter("Benvenuta"))
    assert [how for how, _ in inbox.messages] == [(True, True)]


def test_what_goes_wrong_is_named(
    submission: tuple[Inbox, int], certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, port = submission
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    wrong = {"PERCORSO_SMTP_STARTTLS": "1", "PERCORSO_SMTP_USER": USER, "PERCORSO_SMTP_PASSWORD": "nope"}
    with pytest.raises(DeliveryError) as caught, SmtpSession(settings(port, **wrong)) as session:
        session.send(letter("x"))
    assert "rejected the login" in str(caught.value) and "PERCORSO_SMTP_PASSWORD" in str(caught.value)
    assert caught.value.transient  # the message is not at fault: it waits for the settings to be fixed

    # Without STARTTLS this server refuses to go on; the error says which setting to look at.
    plain = {"PERCORSO_SMTP_USER": USER, "PERCORSO_SMTP_PASSWORD": PASSWORD}
    with pytest.raises(DeliveryError) as caught, SmtpSession(settings(port, **plain)) as session:
        session.send(letter("x"))
    assert "STARTTLS" in str(caught.value), str(caught.value)

    # A certificate the client does not trust: the TLS failure, not a silent plain-text fallback.
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSL_CERT_DIR", str(certificates["ca"].parent / "none"))
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["cert"].parent / "none.pem"))
    good = {"PERCORSO_SMTP_STARTTLS": "1", "PERCORSO_SMTP_USER": USER, "PERCORSO_SMTP_PASSWORD": PASSWORD}
    with pytest.raises(DeliveryError) as caught, SmtpSession(settings(port, **good)) as session:
        session.send(letter("x"))
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) or "certificate" in str(caught.value).lower()
    assert inbox.messages == []
