"""Authorisation: who may call what. Every route the application serves is listed from the app
itself, so a route added without a guard fails here.

- No credential: every API route answers 401 except the few public ones named below; every
  dashboard page sends the browser to sign in (or answers 401 to a JSON or non-GET request).
- A write key (public: it sits in a website's page source) only sends data; every read and admin
  route answers 403.
- A revoked key is refused everywhere.
- A viewer reads the dashboard but changes nothing; editors change automations and journeys but
  not users, keys or erasure (tests/test_dashboard_pages.py covers each role's buttons too)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
from fastapi.routing import APIRoute

from percorso.config import Settings
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer

# Routes a stranger may call: health, the email links (signed tokens), the sign-in page and assets.
# analytics.js' settings take the write key in the path, as Segment's CDN does: an unknown or
# secret key is a 404, and the answer holds nothing the caller did not send.
PUBLIC_API = {
    "/health",
    "/u/{token}",
    "/t/o/{token:path}",
    "/t/c/{token:path}",
    "/s/{token}",
    "/v1/projects/{write_key}/settings",
}
PUBLIC_PAGES = {
    "/login",
    "/logout",
    "/lang",
    "/percorso.js",
    "/docs",
    "/docs/oauth2-redirect",
}  # sign in, sign out, the language switch; the tracker; the API reference (the public schema)
# Routes that take the write key: the collector and what the browser tracker reads.
# analytics.js' short paths (/v1/t, /v1/b, ...) are the same endpoints under other names.
WRITE_KEY_ROUTES = re.compile(
    r"^/v1/(track|identify|page|screen|group|alias|batch|import|messages|visitors|visitors/surveys|[tipsgab]|surveys/{key}/answers)$"
)


def routes(settings: Settings, server: LiveServer) -> list[tuple[str, str, bool]]:
    """(method, path, in the OpenAPI schema) for every route the application serves."""
    from percorso.web.app import create_app

    def walk(items: list[Any]) -> Iterator[APIRoute]:
        for route in items:
            if isinstance(route, APIRoute):
                yield route
            elif hasattr(route, "original_router"):  # an included router (FastAPI keeps it whole)
                yield from walk(route.original_router.routes)

    app = create_app(settings, server.store)
    found = [
        (method, route.path, route.include_in_schema)
        for route in walk(app.routes)
        for method in sorted(route.methods - {"HEAD"})
    ]
    assert len(found) > 40, "the route listing found too little to be a real check"
    return found


def filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


# The collector reads the write key from the body too, so it parses the body first: give it a valid one.
MESSAGE = {"type": "track", "event": "Probe", "userId": "authz-probe"}
BODIES: dict[str, Any] = {p: {"batch": [MESSAGE]} for p in ("/v1/batch", "/v1/b", "/v1/import")}


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    if method in ("POST", "PUT", "PATCH"):
        kwargs.setdefault("json", BODIES.get(path, MESSAGE if WRITE_KEY_ROUTES.match(path) else {}))
    return client.request(method, filled(path), **kwargs)


def test_every_api_route_needs_a_key_and_write_keys_only_write(
    settings: Settings, server: LiveServer
) -> None:
    stranger = httpx.Client(base_url=server.url, timeout=30)
    writer = server.client(server.write_key)
    checked = 0
    for method, path, in_schema in routes(settings, server):
        if not (in_schema or path.startswith("/v1/")) or path in PUBLIC_API:
            continue
        anonymous = call(stranger, method, path)
        assert anonymous.status_code == 401, (method, path, anonymous.status_code, anonymous.text[:200])
        assert anonymous.json()["code"] == "unauthorized"
        with_write_key = call(writer, method, path)
        if WRITE_KEY_ROUTES.match(path):
            assert with_write_key.status_code not in (401, 403), (method, path)
        else:
            assert with_write_key.status_code == 403, (method, path, with_write_key.status_code)
            assert "secret key" in with_write_key.json()["message"]
        checked += 1
    assert checked >= 30


def test_public_routes_hold_no_data_without_a_valid_token(server: LiveServer) -> None:
    stranger = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    assert stranger.get("/health").json()["status"] == "ok"
    for path in ("/u/forged.token", "/t/c/forged.token?u=https://evil.example&s=x"):
        r = stranger.get(path)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "evil.example" not in r.headers.get("location", "")
    # The open pixel answers an image whatever the token, so mail clients show nothing broken,
    # but a forged token records nothing.
    before = server.store.counts()["events"]
    stranger.get("/t/o/forged.token")
    assert server.store.counts()["events"] == before


def test_a_revoked_key_is_refused(server: LiveServer) -> None:
    key, secret = server.store.create_api_key("secret", "to revoke")
    client = server.client(secret)
    assert client.get("/v1/keys").status_code == 200
    assert server.client().delete(f"/v1/keys/{key.key_id}").status_code in (200, 204)
    # The key ring may cache a key briefly; the revoking process drops it at once.
    refused = client.get("/v1/contacts")
    assert refused.status_code == 401 and "revoked" in refused.json()["message"]


def test_every_dashboard_page_needs_a_session(settings: Settings, server: LiveServer) -> None:
    stranger = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    checked = 0
    for method, path, in_schema in routes(settings, server):
        if in_schema or path.startswith("/v1/") or path in PUBLIC_PAGES or path.startswith("/static"):
            continue
        r = call(stranger, method, path, json=None) if method != "GET" else stranger.get(filled(path))
        if method == "GET" and not path.endswith(".json"):
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), (path, r)
        else:
            assert r.status_code == 401, (method, path, r.status_code)
        checked += 1
    assert checked >= 15


def test_a_viewer_changes_nothing_an_editor_cannot_administer(server: LiveServer) -> None:
    add_user(server.store, "vera@example.it", "viewer passphrase 3", role="viewer")
    add_user(server.store, "edo@example.it", "editor passphrase 2", role="editor")
    for email, password, forbidden in (
        ("vera@example.it", "viewer passphrase 3", ["/settings", "/settings.json"]),
        ("edo@example.it", "editor passphrase 2", ["/settings", "/settings.json"]),
    ):
        client = httpx.Client(base_url=server.url, timeout=30)
        login_page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text)
        form = {"email": email, "password": password, "next": "/"}
        if token:
            form["csrf_token"] = token.group(1)
        assert client.post("/login", data=form).status_code == 303
        for path in forbidden:
            r = client.get(path)
            assert r.status_code == 403, (email, path)
        # A forged CSRF token with non-ASCII text is refused cleanly, not a server error.
        r = client.post("/automations/x/pause", headers={"X-CSRF-Token": "forgé".encode()})
        assert r.status_code == 403
