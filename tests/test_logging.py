"""What is and is not logged (docs/security.md, "What is logged"), over real HTTP on both stores:
dashboard actions with the signed-in user, a sign-in lockout with the account and address, an
erasure without the erased data; never a password, a key, a token or a request body; collector
rejections and failed sign-ins that do not lock are not logged."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import login_token, signed_in

ADMIN = ("ada@example.it", "correct horse battery staple")
WRONG = "not-the-password-9137"


def test_what_is_and_is_not_logged(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="percorso")
    add_user(server.store, *ADMIN, role="admin")
    add_user(server.store, "enzo@example.it", "another long passphrase", role="viewer")
    with server.client(server.write_key) as writer:
        person = {"userId": "giulia", "traits": {"email": "giulia.rossi@example.it", "firstName": "Giulia"}}
        assert writer.post("/v1/identify", json=person).status_code == 200
        # A rejected call goes back to the client, not to the log.
        assert writer.post("/v1/track", json={"userId": "giulia"}).status_code == 400
    with server.store.session() as s:
        contact = int(s.rows("SELECT contact_id FROM identities WHERE value = 'giulia'")[0][0])

    admin = signed_in(server, ADMIN)
    try:
        token = re.search(r'name="csrf_token" value="([^"]+)"', admin.get("/settings").text).group(1)  # type: ignore[union-attr]
        created = admin.post("/settings/keys", data={"kind": "write", "name": "site", "csrf_token": token})
        assert created.status_code == 200
        secret = re.search(r"\b(wk_[A-Za-z0-9_-]{20,})", created.text).group(1)  # type: ignore[union-attr]
        with server.store.session() as s:
            key_id = s.rows("SELECT key_id FROM api_keys WHERE name = 'site'")[0][0]
        revoked = admin.post(f"/settings/keys/{key_id}/revoke", data={"csrf_token": token})
        assert revoked.status_code == 303
        erased = admin.post(f"/contacts/{contact}/erase", data={"confirm": str(contact), "csrf_token": token})
        assert erased.status_code == 303
    finally:
        admin.close()

    # Failed sign-ins: the first ones are not logged; the one that locks the account is.
    browser = httpx.Client(base_url=server.url, timeout=30)
    token = login_token(browser)
    answers = [
        browser.post(
            "/login", data={"email": "enzo@example.it", "password": WRONG, "csrf_token": token}
        ).status_code
        for _ in range(6)
    ]
    assert 401 in answers and 429 in answers
    browser.close()

    records = [r for r in caplog.records if r.name.startswith("percorso")]
    text = "\n".join(r.getMessage() for r in records)
    assert f"write key {key_id} (site) created by ada@example.it" in text
    assert f"key {key_id} revoked by ada@example.it" in text
    assert re.search(rf"contact {contact} erased by ada@example\.it \(\d+ events, \d+ identifiers\)", text)
    lockouts = [r for r in records if "locked" in r.getMessage()]
    assert (
        len(lockouts) == 1
        and "enzo@example.it" in lockouts[0].getMessage()
        and "127.0.0.1" in lockouts[0].getMessage()
    )
    for never in (
        ADMIN[1],
        WRONG,
        secret,
        server.write_key,
        server.secret_key,
        "giulia.rossi@example.it",
        "Giulia",
        token,
    ):
        assert never not in text, f"{never!r} was logged"
    assert len(records) == 4, text  # the rejected call and the failures before the lockout left no trace
    assert not any(r.levelno >= logging.ERROR for r in records), text
