"""The real segment-analytics-python and rudder-sdk-python clients, unmodified, against percorso
over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_library_anonymous_visitor_identifies_and_keeps_history(server, gzip):
    failures: list = []
    client = Client(
        server.write_key, host=server.url, gzip=gzip, on_error=lambda e, batch: failures.append(e)
    )
    start = datetime.now(UTC) - timedelta(hours=2)
    at = [start + timedelta(minutes=10 * i) for i in range(5)]
    client.page(
        anonymous_id="anon-42",
        name="Home",
        properties={"path": "/", "url": "https://shop.example/"},
        context={"page": {"referrer": "https://www.google.com/"}},
        timestamp=at[0],
    )
    client.track(
        anonymous_id="anon-42", event="Product Viewed", properties={"product_id": "p1"}, timestamp=at[1]
    )
    client.track(anonymous_id="anon-42", event="Registration Started", timestamp=at[2])
    client.identify(
        user_id="user-42",
        anonymous_id="anon-42",
        traits={"email": "Chiara.Bianchi@example.it", "first_name": "Chiara"},
        timestamp=at[3],
    )
    client.track(user_id="user-42", event="Registration Confirmed", timestamp=at[4])
    client.flush()
    client.shutdown()
    assert failures == []

    with server.client() as api:
        found = api.get("/v1/contacts/lookup", params={"email": "chiara.bianchi@example.it"})
        assert found.status_code == 200, found.text
        profile = found.json()
        assert profile["traits"]["first_name"] == "Chiara"
        kinds = {(i["kind"], i["value"]) for i in profile["identifiers"]}
        assert {
            ("anonymous_id", "anon-42"),
            ("user_id", "user-42"),
            ("email", "chiara.bianchi@example.it"),
        } <= kinds
        timeline = api.get(f"/v1/contacts/{profile['id']}/timeline").json()["events"]
    # Newest first; the anonymous visits from before the identify are part of the contact's story.
    names = [e.get("event") or e.get("name") or e["type"] for e in timeline]
    assert names == ["Registration Confirmed", "identify", "Registration Started", "Product Viewed", "Home"]
    assert timeline[-1]["channel"] == "search"
    assert all(e["context"]["library"]["name"] == "analytics-python" for e in timeline)
    assert profile["events"] == 5 and server.store.counts()["contacts"] == 1


def test_segment_library_sees_a_client_error(server):
    errors: list = []
    client = Client(server.write_key, host=server.url, on_error=lambda e, b: errors.append(e))
    client.track(user_id="u", event="x" * 300)  # longer than any event name percorso accepts
    client.flush()
    client.shutdown()
    assert len(errors) == 1 and errors[0].status == 400 and "event" in errors[0].message


def test_rudder_library_identify_traits_and_page_category_are_kept(server):
    # rudder-sdk-python puts identify traits only in context.traits, and sends page(category=...).
    failures: list = []
    client = RudderClient(server.write_key, host=server.url, on_error=lambda e, batch: failures.append(e))
    client.page(anonymous_id="anon-7", category="Shop", name="Shoes", properties={"path": "/shoes"})
    client.identify(
        user_id="user-7", anonymous_id="anon-7", traits={"email": "Luca@Example.it", "plan": "member"}
    )
    client.flush()
    client.shutdown()
    assert failures == []

    with server.client() as api:
        profile = api.get("/v1/contacts/lookup", params={"email": "luca@example.it"}).json()
        timeline = api.get(f"/v1/contacts/{profile['id']}/timeline").json()["events"]
    assert profile["traits"] == {"email": "Luca@Example.it", "plan": "member"}
    page = next(e for e in timeline if e["type"] == "page")
    assert page["name"] == "Shoes" and page["properties"] == {"path": "/shoes", "category": "Shop"}


def test_segment_library_retries_after_429_and_loses_nothing(server):
    from percorso.web.throttle import RateLimiter

    # A collector limit of 5 requests per second per key, so the client meets 429.
    refused: list[float] = []
    limiter = RateLimiter(capacity=5, rate=5)
    take = limiter.take

    def counting(key: str) -> float:
        wait = take(key)
        if wait:
            refused.append(wait)
        return wait

    limiter.take = counting  # type: ignore[method-assign]
    server.app.state.collect_limiter = limiter
    failures: list = []
    # One request per event: 20 requests at a limit of 5 per second.
    client = Client(
        server.write_key,
        host=server.url,
        upload_size=1,
        upload_interval=0.01,
        on_error=lambda e, batch: failures.append(e),
    )
    for n in range(20):
        client.track(user_id="u-429", event="Step Done", properties={"n": n}, message_id=f"r429-{n}")
    client.flush()
    client.shutdown()
    assert failures == []
    assert refused, "the limit was never reached: the test proves nothing"
    with server.store.session() as s:
        stored = s.rows("SELECT message_id FROM events WHERE user_id = 'u-429' ORDER BY message_id")
    assert sorted(r[0] for r in stored) == sorted(f"r429-{n}" for n in range(20))
