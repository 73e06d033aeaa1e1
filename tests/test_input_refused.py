"""Input a store cannot hold, or that would be read as something else, gets the same clear 4xx on
both stores over real HTTP: NUL anywhere in a query, a path or a document (PostgreSQL used to
answer 503 "retry"), unknown query parameters, LIKE wildcards in a contact search, tokens that
differ from the one signed, NUL or empty timestamps."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from percorso.automation import links
from percorso.automation.store import instance_secret
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import signed_in

NUL_QUERIES = [
    ("/v1/contacts", {"q": "\x00"}, "q"),
    ("/v1/contacts", {"channel": "web\x00"}, "channel"),
    ("/v1/contacts", {"trait.email": "\x00"}, "trait.email"),
    ("/v1/contacts", {"email": "a\x00@b.it"}, "email"),
    ("/v1/contacts/lookup", {"userId": "\x00"}, "userId"),
    ("/v1/contacts/lookup", {"email": "x\x00@example.it"}, "email"),
    ("/v1/paths", {"url_rule": "a\x00=>b"}, "url_rule"),
]


def identify(server: LiveServer, user: str, **traits: Any) -> None:
    with server.client(server.write_key) as c:
        r = c.post("/v1/identify", json={"userId": user, "traits": traits})
        assert r.status_code == 200, r.text


def test_nul_in_a_query_is_a_400_naming_the_parameter_on_both_stores(server: LiveServer) -> None:
    identify(server, "anna", email="anna@example.it")
    with server.client() as api:
        for path, params, field in NUL_QUERIES:
            r = api.get(path, params=params)
            assert r.status_code == 400, (path, params, r.status_code, r.text)
            assert r.json()["field"] == field and "NUL" in r.json()["message"]
        assert api.get("/v1/contacts/%00").status_code in (400, 404)
        assert api.get("/v1/journeys/a%00b").json()["field"] == "path"
    with server.client(server.write_key) as browser:
        r = browser.get("/v1/messages", params={"token": "\x00"})
        assert r.status_code == 400 and r.json()["field"] == "token", r.text


def test_nul_in_a_document_is_a_400_and_nothing_is_created(server: LiveServer) -> None:
    with server.client() as api:
        before = len(api.get("/v1/keys").json()["keys"])
        r = api.post("/v1/keys", json={"kind": "write", "name": "site\x00"})
        assert r.status_code == 400 and r.json()["field"] == "body", r.text
        assert len(api.get("/v1/keys").json()["keys"]) == before
        consent = api.put("/v1/contacts/1/consent", content=b'{"consent": "granted\\u0000"}',
                          headers={"content-type": "application/json"})  # fmt: skip
        assert consent.status_code == 400 and consent.json()["field"] == "body"


def test_nul_in_a_dashboard_query_or_form_is_a_400(server: LiveServer) -> None:
    add_user(server.store, "anna@example.it", "a long enough secret", role="admin")
    dash = signed_in(server, ("anna@example.it", "a long enough secret"))
    try:
        assert dash.get("/contacts", params={"q": "\x00"}).status_code == 400
        assert dash.get("/contacts", params={"q": "anna"}).status_code == 200
    finally:
        dash.close()
    with httpx.Client(base_url=server.url, timeout=10) as browser:
        form = browser.post("/login", data={"email": "anna\x00@example.it", "password": "x"})
        assert form.status_code == 400, form.text


def test_unknown_query_parameters_are_named(server: LiveServer) -> None:
    with server.client() as api:
        r = api.get("/v1/paths", params={"url_rules": "^/p/.*=>/p"})  # misspelt url_rule
        assert r.status_code == 400 and r.json()["field"] == "url_rules", r.text
        assert "url_rule" in r.json()["message"]
        assert api.get("/v1/contacts", params={"trait.plan": "member"}).status_code == 200
        assert api.get("/v1/contacts", params={"traits.plan": "member"}).json()["field"] == "traits.plan"


def test_contact_search_reads_wildcards_literally(server: LiveServer) -> None:
    identify(server, "anna_b", email="anna@example.it")
    identify(server, "annaxb", email="bruno@example.it")
    identify(server, "100%", email="carla@example.it")
    with server.client() as api:

        def found(q: str) -> set[str]:
            contacts = api.get("/v1/contacts", params={"q": q}).json()["contacts"]
            return {c["userId"] for c in contacts}

        assert found("%_%") == set()
        assert found("%") == {"100%"}
        assert found("a_b") == {"anna_b"}
        assert found("anna") == {"anna_b", "annaxb"}


def test_a_token_that_differs_from_the_signed_one_is_refused(server: LiveServer) -> None:
    secret = instance_secret(server.store, "link_secret")
    token = links.sign(secret, links.MESSAGE, "welcome/1/1")
    encoded, _, mac = token.partition(".")
    assert links.read(secret, links.MESSAGE, token) == "welcome/1/1"
    tampered = [
        f"{encoded[:4]}!{encoded[4:]}.{mac}",
        f"{encoded}=.{mac}",
        f"{encoded}==.{mac}",
        f"{encoded[:4]}\x00{encoded[4:]}.{mac}",
        f" {encoded}.{mac}",
    ]
    for forged in tampered:
        assert links.read(secret, links.MESSAGE, forged) is None, forged
    # A click link with a forged token redirects nowhere (an open pixel answers its image anyway).
    click = links.click_url(server.url, secret, "welcome/1/1", "https://shop.example/offer")
    query = click.partition("?")[2]
    with httpx.Client(timeout=10) as reader:
        assert reader.get(click).status_code == 302  # the signed one redirects
        for forged in [f"{encoded[:4]}!{encoded[4:]}.{mac}", f"{encoded}=.{mac}", f"{encoded}==.{mac}"]:
            assert reader.get(f"{server.url}/t/c/{forged}?{query}").status_code == 404, forged
        assert reader.get(f"{server.url}/t/c/{encoded[:4]}%00{encoded[4:]}.{mac}?{query}").status_code == 400


@pytest.mark.parametrize(
    ("stamps", "stored", "field"),
    [
        ({"timestamp": "2026-01-01T00:00:00Z\x00"}, False, "timestamp"),
        ({"originalTimestamp": "2026-01-01T00:00:00Z\x00"}, False, "originalTimestamp"),
        ({"sentAt": "2026-01-01T00:00:00Z\x00", "timestamp": "2026-01-01T00:00:00Z"}, False, "sentAt"),
        ({"timestamp": ""}, True, "timestamp"),
        ({"originalTimestamp": ""}, True, "originalTimestamp"),
        ({"timestamp": "", "originalTimestamp": "2026-01-01T00:00:00Z"}, True, "timestamp"),
    ],
)
def test_nul_and_empty_timestamps(
    server: LiveServer, stamps: dict[str, str], stored: bool, field: str
) -> None:
    with server.client(server.write_key) as c:
        r = c.post("/v1/track", json={"userId": "u1", "event": "Stamped", **stamps})
    if not stored:
        assert r.status_code == 400 and r.json()["field"] == field, r.text
        assert server.store.counts()["events"] == 0
        return
    assert r.status_code == 200 and r.json()["stored"] is True, r.text
    assert [w["field"] for w in r.json()["warnings"]] == [field]
    with server.client() as api:
        contact = api.get("/v1/contacts/lookup", params={"userId": "u1"}).json()["id"]
        [event] = api.get(f"/v1/contacts/{contact}/timeline").json()["events"]
    if stamps.get("originalTimestamp"):
        assert event["timestamp"].startswith("2026-01-01T00:00:00")


def test_every_route_but_the_collectors_refuses_nul() -> None:
    """The guard is added per router (app.py): a router added later without it would let NUL
    reach PostgreSQL again."""
    from collections.abc import Iterable, Iterator

    from fastapi.routing import APIRoute

    from percorso.config import Settings
    from percorso.web.app import create_app
    from percorso.web.guard import refuse_nul

    def walk(routes: Iterable[Any], guarded: bool = False) -> Iterator[tuple[APIRoute, bool]]:
        for route in routes:
            if hasattr(route, "original_router"):  # a router included with its own dependencies
                added = route.include_context.dependencies
                yield from walk(
                    route.original_router.routes, guarded or any(d.dependency is refuse_nul for d in added)
                )
            elif isinstance(route, APIRoute):
                yield route, guarded or any(d.call is refuse_nul for d in route.dependant.dependencies)

    routes = list(walk(create_app(Settings(automation_worker=False)).routes))
    collector = [r.path for r, _ in routes if "collect" in r.tags]
    calls = ("track", "identify", "page", "screen", "group", "alias", "batch", "import")
    expected = {f"/v1/{c}" for c in calls} | {f"/v1/{c}" for c in "tipsgab"}
    expected |= {"/v1/projects/{write_key}/settings", "/percorso.js"}
    assert set(collector) == expected
    unguarded = [r.path for r, guarded in routes if not guarded and "collect" not in r.tags]
    # health, and the API reference's two pages (they read nothing from the request)
    assert sorted(unguarded) == ["/docs", "/docs/oauth2-redirect", "/health"]
    assert len(routes) > 60
