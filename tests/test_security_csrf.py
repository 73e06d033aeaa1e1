"""Cross-site request forgery, over real HTTP: what another site can make a visitor's browser send.

* **login CSRF**: ``POST /login`` needs the token of the sign-in form, matched to the pre-session
  cookie ``GET /login`` set; another site can neither read that value nor set the cookie, so it
  cannot sign a visitor in to the attacker's account (where the visitor's later work would be
  recorded);
* **session CSRF**: every state-changing dashboard request carries the session's token (form
  field ``csrf_token`` or header ``X-CSRF-Token``); a forged, missing or non-ASCII one is a 403,
  never a change and never a server error;
* the session cookie is ``HttpOnly`` and ``SameSite=Lax``; the pre-session one ``Strict``.

The collector and the REST API take keys in headers or bodies, not cookies, so a forged request
from a browser carries no credential; they are out of scope here.
"""

from __future__ import annotations

import re

import httpx

from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer

ADMIN = ("ada@example.it", "a long admin secret")
ATTACKER = ("mallory@example.it", "the attacker's own account")


def form_token(client: httpx.Client, path: str = "/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, path
    return match.group(1)


def test_sign_in_needs_the_forms_token_and_its_cookie(server: LiveServer) -> None:
    add_user(server.store, *ATTACKER, role="viewer")
    # The attacker's page posts the attacker's credentials from the visitor's browser: it has no
    # pre-session cookie of percorso's and cannot read a token.
    visitor = httpx.Client(base_url=server.url, timeout=30)
    forged = visitor.post("/login", data={"email": ATTACKER[0], "password": ATTACKER[1]})
    assert forged.status_code == 403 and "percorso_session" not in forged.headers.get("set-cookie", "")
    assert "expired or was sent from another site" in forged.text
    # A token the attacker got from their own visit does not match the visitor's cookie.
    attackers_token = form_token(httpx.Client(base_url=server.url, timeout=30))
    visitor.get("/login")
    stolen = visitor.post(
        "/login", data={"email": ATTACKER[0], "password": ATTACKER[1], "csrf_token": attackers_token}
    )
    assert stolen.status_code == 403 and "percorso_session" not in stolen.headers.get("set-cookie", "")
    # The refusal renews the form, so a person whose form went stale just signs in again.
    renewed = re.search(r'name="csrf_token" value="([^"]+)"', stolen.text)
    assert renewed and renewed.group(1) != attackers_token
    ok = visitor.post(
        "/login", data={"email": ATTACKER[0], "password": ATTACKER[1], "csrf_token": renewed.group(1)}
    )
    assert ok.status_code == 303 and "percorso_session=" in ok.headers["set-cookie"]


def test_the_sign_in_cookies_cannot_be_sent_or_read_cross_site(server: LiveServer) -> None:
    add_user(server.store, *ADMIN, role="admin")
    client = httpx.Client(base_url=server.url, timeout=30)
    pre = client.get("/login").headers["set-cookie"]
    assert "percorso_login=" in pre and "HttpOnly" in pre and "SameSite=strict" in pre
    signed = client.post(
        "/login", data={"email": ADMIN[0], "password": ADMIN[1], "csrf_token": form_token(client)}
    )
    session = [c for c in signed.headers.get_list("set-cookie") if c.startswith("percorso_session=")]
    assert session and "HttpOnly" in session[0] and "SameSite=lax" in session[0]


def test_dashboard_changes_need_the_sessions_token(server: LiveServer) -> None:
    add_user(server.store, *ADMIN, role="admin")
    client = httpx.Client(base_url=server.url, timeout=30)
    client.post("/login", data={"email": ADMIN[0], "password": ADMIN[1], "csrf_token": form_token(client)})
    note = {"journey": "shop", "stage": "buy", "text": "forged note"}
    for extra, headers in (
        ({}, {}),
        ({"csrf_token": "forged"}, {}),
        ({}, {"X-CSRF-Token": "forged"}),
        ({}, {"X-CSRF-Token": "forgé".encode()}),
    ):
        r = client.post("/map/notes", data={**note, **extra}, headers=headers)
        assert r.status_code == 403, (extra, headers, r.status_code, r.text[:200])
    with server.store.session() as s:
        assert s.rows("SELECT count(*) FROM map_notes")[0][0] == 0
    # Signing out is a change too: a forged POST /logout leaves the session alive.
    assert client.post("/logout").status_code == 403
    assert client.get("/map.json").status_code != 401
