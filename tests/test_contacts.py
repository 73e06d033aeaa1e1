"""Contacts API on both engines: search, profile, timeline pages, export, erasure, consent."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import msgspec

from percorso.events import parse_message

T0 = datetime(2026, 4, 1, 9, tzinfo=UTC)


def load(store, classifier, messages):
    events = []
    for i, m in enumerate(messages):
        m = {
            "messageId": m.get("messageId", f"m{i}"),
            "timestamp": (T0 + timedelta(minutes=i)).isoformat(),
            **m,
        }
        events.append(
            parse_message(msgspec.json.encode(m), received_at=T0 + timedelta(days=2), classifier=classifier)
        )
    store.ingest(events)


def people(store, classifier):
    load(
        store,
        classifier,
        [
            {
                "type": "page",
                "anonymousId": "v1",
                "context": {
                    "library": {"name": "analytics.js"},
                    "page": {"url": "https://s.it/", "referrer": ""},
                },
            },
            {
                "type": "identify",
                "anonymousId": "v1",
                "userId": "anna",
                "traits": {"email": "anna@example.it", "plan": "member", "city": "Milano"},
            },
            {"type": "track", "userId": "anna", "event": "Store Visit", "context": {"channel": "store"}},
            {"type": "identify", "userId": "bruno", "traits": {"email": "bruno@example.it", "plan": "free"}},
            {"type": "track", "userId": "bruno", "event": "Email Opened", "context": {"channel": "email"}},
            {"type": "page", "anonymousId": "stranger"},
        ]
        + [{"type": "track", "userId": "anna", "event": f"Step {i}", "messageId": f"s{i}"} for i in range(7)],
    )


def test_search_filters(server, classifier):
    people(server.store, classifier)
    with server.client() as api:

        def ids(**params):
            return [c["userId"] for c in api.get("/v1/contacts", params=params).json()["contacts"]]

        assert ids() == ["anna", None, "bruno"]  # most recently seen first
        assert ids(email="ANNA@example.it") == ["anna"]
        assert ids(**{"trait.plan": "member"}) == ["anna"]
        assert ids(**{"trait.plan": "member", "trait.city": "Roma"}) == []
        assert ids(channel="email") == ["bruno"]
        assert ids(known="false") == [None]
        assert ids(q="brun") == ["bruno"]
        assert ids(last_seen_before=(T0 + timedelta(minutes=5)).isoformat()) == ["bruno"]
        bad = api.get("/v1/contacts", params={"limit": 0})
        assert bad.status_code == 400 and bad.json()["field"] == "limit"
        assert api.get("/v1/contacts", params={"email": "nope"}).json()["field"] == "email"
        assert api.get("/v1/contacts", params={"cursor": "garbage"}).json()["field"] == "cursor"
        assert api.get("/v1/contacts", params={"trait.bad'key": "x"}).status_code == 400
        first = api.get("/v1/contacts", params={"limit": 2}).json()
        rest = api.get("/v1/contacts", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [c["userId"] for c in first["contacts"] + rest["contacts"]] == ["anna", None, "bruno"]
        assert rest["next_cursor"] is None


def test_profile_and_paginated_timeline(server, classifier):
    people(server.store, classifier)
    with server.client() as api:
        profile = api.get("/v1/contacts/lookup", params={"userId": "anna"}).json()
        assert profile["traits"] == {"email": "anna@example.it", "plan": "member", "city": "Milano"}
        assert profile["channels"] == {"server": 8, "direct": 1, "store": 1}
        assert profile["events"] == 10
        seen, cursor = [], None
        while True:
            page = api.get(
                f"/v1/contacts/{profile['id']}/timeline",
                params={"limit": 3, **({"cursor": cursor} if cursor else {})},
            ).json()
            seen += [e["messageId"] for e in page["events"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == 10 == len(set(seen))
        assert seen[-1] == "m0"  # the anonymous first visit closes the story
        only_store = api.get(f"/v1/contacts/{profile['id']}/timeline", params={"channel": "store"}).json()
        assert [e["event"] for e in only_store["events"]] == ["Store Visit"]
        assert api.get("/v1/contacts/999999").status_code == 404
        assert api.get("/v1/contacts/lookup", params={"email": "x@y.it", "userId": "u"}).status_code == 400


def test_a_merged_id_answers_with_the_survivor(server, classifier):
    for i, message in enumerate(
        [
            {"type": "page", "anonymousId": "phone"},
            {"type": "identify", "userId": "carla", "traits": {"email": "carla@example.it"}},
            {"type": "identify", "anonymousId": "phone", "traits": {"email": "carla@example.it"}},
        ]
    ):  # separate batches: three visits on different days
        load(server.store, classifier, [{**message, "messageId": f"c{i}"}])
    with server.store.session() as s:
        merged = s.rows("SELECT contact_id, merged_into FROM contacts WHERE merged_into IS NOT NULL")
    assert len(merged) == 1
    loser, survivor = merged[0]
    with server.client() as api:
        profile = api.get(f"/v1/contacts/{loser}").json()
    assert profile["id"] == survivor and profile["requestedId"] == loser and profile["events"] == 3
    assert profile["mergedContacts"] == [loser] and survivor < loser


def test_export_then_erase(server, classifier):
    people(server.store, classifier)
    before = server.store.counts()
    with server.client() as api:
        anna = api.get("/v1/contacts/lookup", params={"email": "anna@example.it"}).json()["id"]
        export = api.get(f"/v1/contacts/{anna}/export").json()
        assert export["contact"]["id"] == anna and len(export["events"]) == 10
        assert {e["messageId"] for e in export["events"]} >= {"m0", "m1", "m2"}
        assert api.get(f"/v1/contacts/{anna}/export", auth=(server.write_key, "")).status_code == 403
        erased = api.delete(f"/v1/contacts/{anna}").json()
        assert erased == {**erased, "erased": anna, "events": 10, "identities": 3}
        assert api.get(f"/v1/contacts/{anna}").status_code == 404
        assert api.get("/v1/contacts/lookup", params={"email": "anna@example.it"}).status_code == 404
    after = server.store.counts()
    assert after == {
        "events": before["events"] - 10,
        "contacts": before["contacts"] - 1,
        "identities": before["identities"] - 3,
    }
    with server.store.session() as s:
        for table, column in (("events", "user_id"), ("events", "anonymous_id"), ("identities", "value")):
            assert (
                s.rows(f"SELECT count(*) FROM {table} WHERE {column} IN ('anna', 'v1', 'anna@example.it')")[
                    0
                ][0]
                == 0
            )
        assert s.rows("SELECT count(*) FROM contacts WHERE traits::TEXT LIKE '%anna%'")[0][0] == 0
        assert s.rows("SELECT events, identities FROM erasures") == [(10, 3)]


def test_consent_from_traits_and_api(server, classifier):
    load(
        server.store,
        classifier,
        [{"type": "identify", "userId": "dario", "traits": {"email": "d@example.it", "consent": "granted"}}],
    )
    with server.client() as api:
        dario = api.get("/v1/contacts/lookup", params={"userId": "dario"}).json()
        assert dario["consent"] == "granted"
        r = api.put(f"/v1/contacts/{dario['id']}/consent", json={"consent": "denied"})
        assert r.status_code == 200 and r.json()["consent"] == "denied"
        assert api.get(f"/v1/contacts/{dario['id']}").json()["consent"] == "denied"
        bad = api.put(f"/v1/contacts/{dario['id']}/consent", json={"consent": "maybe"})
        assert bad.status_code == 400 and bad.json()["field"] == "consent"


def test_later_traits_win_and_late_old_traits_only_fill_gaps(store, classifier):
    def identify(mid, when, traits):
        m = {
            "type": "identify",
            "userId": "eva",
            "messageId": mid,
            "timestamp": when.isoformat(),
            "traits": traits,
        }
        store.ingest(
            [parse_message(msgspec.json.encode(m), received_at=T0 + timedelta(days=9), classifier=classifier)]
        )

    identify("1", T0 + timedelta(days=2), {"plan": "member", "city": "Roma"})
    identify("2", T0 + timedelta(days=1), {"plan": "free", "phone": "+39 02 1234"})  # older, arrives late
    from percorso.store.contacts import contact_profile, find_contact

    traits = contact_profile(store, find_contact(store, "user_id", "eva"))["traits"]
    assert traits == {"plan": "member", "city": "Roma", "phone": "+39 02 1234"}


def test_the_timeline_reads_nested_properties_as_fields_not_json(server):
    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    event = {
        "type": "track",
        "userId": "nina",
        "event": "Order Completed",
        "properties": {
            "order": {"total": 120.5, "currency": "EUR"},
            "products": [{"name": "Lampada Luna"}],
            "tags": ["gift", "promo"],
        },
    }
    with server.client(server.write_key) as writer:
        assert writer.post("/v1/track", json=event).status_code == 200
    with server.store.session() as s:
        contact = s.rows("SELECT contact_id FROM identities WHERE value = 'nina'")[0][0]
    add_user(server.store, "ada@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("ada@example.it", "a long enough secret"))
    try:
        page = dashboard.get(f"/contacts/{contact}").text
    finally:
        dashboard.close()
    details = re.search(r'<span class="details small">(.*?)</span></span>\s*</', page, re.S)
    assert details is not None
    text = re.sub(r"<[^>]+>", " ", details.group(1))
    assert "order.total" in text and "120.5" in text and "products.1.name" in text and "gift, promo" in text
    assert "{" not in text and "&#34;" not in details.group(1) and "&quot;" not in details.group(1)


def test_an_identifier_was_first_seen_on_its_first_event(server, classifier):
    """Not when it was stored: an import of last year's history stores it today."""
    with server.client(server.write_key) as writer:
        history = [
            {"type": "page", "anonymousId": "old-browser", "timestamp": "2025-03-01T10:00:00Z", "name": "Home"},
            {"type": "identify", "anonymousId": "old-browser", "userId": "olga",
             "traits": {"email": "olga@example.it"}, "timestamp": "2025-03-02T10:00:00Z"},
        ]  # fmt: skip
        assert writer.post("/v1/batch", json={"batch": history}).status_code == 200
    with server.client() as api:
        contact = api.get("/v1/contacts/lookup", params={"email": "olga@example.it"}).json()
        profile = api.get(f"/v1/contacts/{contact['id']}").json()
    seen = {i["kind"]: i["firstSeen"] for i in profile["identifiers"]}
    assert seen["anonymous_id"].startswith("2025-03-01T10:00:00")
    assert seen["user_id"].startswith("2025-03-02T10:00:00") and seen["email"].startswith(
        "2025-03-02T10:00:00"
    )
    assert all(v <= profile["lastSeen"] for v in seen.values())
    assert all(i["storedAt"] > "2026" for i in profile["identifiers"])  # stored now, seen long before


def test_search_by_name_and_phone(server):
    person = {"type": "identify", "userId": "gc", "traits": {"email": "gc@example.it", "firstName": "Giulia",
              "lastName": "Colombo", "phone": "+39 02 555 0101"}}  # fmt: skip
    other = {"type": "identify", "userId": "gr", "traits": {"firstName": "Giulia", "lastName": "Rossi"}}
    with server.client(server.write_key) as writer:
        assert writer.post("/v1/batch", json={"batch": [person, other]}).status_code == 200
    with server.client() as api:

        def ids(q: str) -> list[str]:
            return sorted(c["userId"] for c in api.get("/v1/contacts", params={"q": q}).json()["contacts"])

        # By name, every word in any order, and by phone: what a CX agent has at hand.
        assert ids("Giulia Colombo") == ["gc"] and ids("colombo giu") == ["gc"]
        assert ids("Giulia") == ["gc", "gr"] and ids("Giulia Bianchi") == []
        assert ids("555 0101") == ["gc"]
        assert ids("%") == []  # literally a percent sign, which no one has
