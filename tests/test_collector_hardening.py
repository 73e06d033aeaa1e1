"""What once made the collector answer 500 or lose valid data, over real HTTP on both stores:
calendar-edge timestamps, JSON nested past the decoder's depth, lone UTF-16 surrogates, the
traits RudderStack sends in context, and two copies of a batch sent at the same moment."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor

import httpx

from percorso.store.contacts import EMAIL, contact_profile, find_contact


def post(server, path: str, body: bytes | str | dict, **headers: str) -> httpx.Response:
    with server.client(server.write_key) as c:
        if isinstance(body, dict):
            return c.post(path, json=body)
        return c.post(path, content=body, headers={"content-type": "application/json", **headers})


EDGES = ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"]


EDGE_FIELDS = [(field, stamp) for field in ("timestamp", "originalTimestamp", "sentAt") for stamp in EDGES]


def test_timestamps_at_the_calendars_edges_are_refused_by_name(server):
    ok = {"type": "track", "event": "Fine", "userId": "u1", "messageId": "fine"}
    for field, stamp in EDGE_FIELDS:
        message = {"type": "track", "event": "Edge", "userId": "u1", field: stamp}
        if field == "sentAt":
            message["timestamp"] = "2026-01-01T00:00:00Z"

        single = post(server, "/v1/track", message)
        assert single.status_code == 400, single.text
        assert single.json()["field"] == field
        assert "years 1 to 9999" in single.json()["message"]

        for path in ("/v1/batch", "/v1/import"):
            batch = post(server, path, {"batch": [message, ok]})
            assert batch.status_code == 200, batch.text
            assert [r["field"] for r in batch.json()["rejected"]] == [field]

    # A batch's own sentAt is every member's: each is refused, by name, and the batch is a 400.
    stamped = {"type": "track", "event": "Edge", "userId": "u1", "timestamp": "2026-01-01T00:00:00Z"}
    r = post(server, "/v1/batch", {"batch": [stamped, ok], "sentAt": EDGES[1]})
    assert r.status_code == 400, r.text
    assert [(x["index"], x["field"]) for x in r.json()["rejected"]] == [(0, "sentAt"), (1, "sentAt")]
    assert server.store.counts()["events"] == 1  # only the valid member, stored once


def test_a_received_at_sent_by_the_client_is_ignored(server):
    # The server sets receivedAt; a client's value, even off the calendar, is not read.
    for stamp in EDGES:
        r = post(server, "/v1/track", {"event": "Edge", "userId": "u1", "receivedAt": stamp})
        assert r.status_code == 200, r.text
    assert all(2020 < row[0].year < 9999 for row in _rows(server.store, "SELECT received_at FROM events"))


def test_a_sent_at_that_overflows_the_clock_correction_is_refused(server):
    # Both stamps are on the calendar; the skew between them would move the event before year 1.
    message = {
        "type": "track",
        "event": "Skewed",
        "userId": "u1",
        "timestamp": "0002-01-01T00:00:00Z",
        "sentAt": "9999-01-01T00:00:00Z",
    }
    r = post(server, "/v1/track", message)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "sentAt"


def _deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def test_json_nested_a_thousand_levels_deep_gets_a_400_before_and_after_authentication(server):
    deep = f'{{"type":"track","event":"Deep","userId":"u1","properties":{_deep(1000)}}}'
    batch = f'{{"batch":[{deep}]}}'
    assert len(batch) < 8_000
    for path, body in (("/v1/track", deep), ("/v1/batch", batch)):
        authenticated = post(server, path, body)
        assert authenticated.status_code == 400, authenticated.text
        assert "nested too deeply" in authenticated.json()["message"]
        anonymous = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
        assert anonymous.status_code in (400, 401), anonymous.text
    assert server.store.counts()["events"] == 0


def test_a_deep_ndjson_line_is_rejected_alone(server):
    good = [{"type": "track", "event": "Imported", "userId": f"u{i}", "messageId": f"n{i}"} for i in range(3)]
    lines = [
        json.dumps(good[0]),
        f'{{"type":"track","event":"Deep","userId":"x","properties":{_deep(1000)}}}',
    ]
    lines += [json.dumps(m) for m in good[1:]]
    r = post(server, "/v1/import", "\n".join(lines), **{"content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 3
    assert [(x["index"], x["field"]) for x in r.json()["rejected"]] == [(1, "message")]
    assert "nested too deeply" in r.json()["rejected"][0]["reason"]


def test_an_ndjson_line_that_is_not_utf8_is_rejected_alone(server):
    lines = [
        b'{"type":"track","event":"Imported","userId":"u1","messageId":"g1"}',
        b'{"type":"track","event":"Bad \xff","userId":"u1"}',
        b'{"type":"track","event":"Bad","userId":"u1","properties":{"p":"\xfe"}}',
        b'{"type":"track","event":"Imported","userId":"u1","messageId":"g2"}',
    ]
    r = post(server, "/v1/import", b"\n".join(lines), **{"content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 2
    assert [(x["index"], x["field"]) for x in r.json()["rejected"]] == [(1, "message"), (2, "properties")]
    assert "UTF-8" in r.json()["rejected"][1]["reason"]


def test_every_member_of_a_gzip_body_is_read_and_a_cut_one_refused(server):
    lines = [
        json.dumps({"type": "track", "event": "Zipped", "userId": "u1", "messageId": f"z{i}"})
        for i in range(4)
    ]
    # gzip files may hold several members (`cat a.gz b.gz`); each is part of the body.
    body = gzip.compress("\n".join(lines[:2]).encode() + b"\n") + gzip.compress("\n".join(lines[2:]).encode())
    ndjson = {"content-type": "application/x-ndjson", "content-encoding": "gzip"}
    r = post(server, "/v1/import", body, **ndjson)
    assert r.status_code == 200, r.text
    assert (r.json()["received"], r.json()["stored"]) == (4, 4)
    for broken in (body[:-3], body + b"junk"):
        r = post(server, "/v1/import", broken, **ndjson)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "body" and "gzip" in r.json()["message"]
    assert server.store.counts()["events"] == 4


def test_members_nested_past_the_limit_but_readable_are_rejected_alone(server):
    members = [
        {"type": "track", "event": "Deep", "userId": "u1", "properties": json.loads(_deep(40))},
        {"type": "track", "event": "Fine", "userId": "u1"},
    ]
    r = post(server, "/v1/batch", {"batch": members})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1
    assert r.json()["rejected"][0]["field"] == "properties"


def _rows(store, sql: str) -> list[tuple]:
    with store.session() as s:
        return s.rows(sql)


def _event_names(store) -> list[str]:
    return sorted(row[0] for row in _rows(store, "SELECT event FROM events"))


def test_a_lone_surrogate_is_replaced_and_the_batch_kept(server):
    # What JSON.stringify sends for an emoji cut in half ("Ciao 😀"[0:6]).
    body = (
        '{"batch":['
        '{"type":"track","event":"Ciao \\ud83d","userId":"u1","messageId":"s1",'
        '"properties":{"title":"Ciao \\ud83d!"}},'
        '{"type":"track","event":"Paired \\ud83d\\ude00","userId":"u1","messageId":"s2"},'
        '{"type":"track","event":"Plain","userId":"u1","messageId":"s3"}]}'
    )
    r = post(server, "/v1/batch", body)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 3
    assert [w["index"] for w in r.json()["warnings"]] == [0]
    assert _event_names(server.store) == ["Ciao \ufffd", "Paired \U0001f600", "Plain"]
    with server.store.session() as s:  # the engine itself reads U+FFFD out of the stored JSON
        title, param = s.json_text("properties", "title")
        assert s.rows(f"SELECT {title} FROM events WHERE message_id = 's1'", [param]) == [("Ciao \ufffd!",)]

    single = post(server, "/v1/track", '{"event":"Low \\ude00 alone","userId":"u1","messageId":"s4"}')
    assert single.status_code == 200, single.text
    assert single.json()["warnings"][0]["reason"].startswith("a lone UTF-16 surrogate")
    assert "Low \ufffd alone" in _event_names(server.store)


def test_an_escaped_backslash_before_u_is_not_taken_for_a_surrogate(server):
    body = '{"event":"path C:\\\\ud83d and \\ud83d","userId":"u1"}'
    r = post(server, "/v1/track", body)
    assert r.status_code == 200, r.text
    assert _event_names(server.store) == ["path C:\\ud83d and \ufffd"]


def test_identify_traits_sent_only_in_context_reach_the_contact(server):
    # rudder-sdk-python's identify: traits in context.traits, none at the top level.
    message = {
        "type": "identify",
        "userId": "rudder-1",
        "context": {
            "traits": {"email": "Giulia@Example.it", "plan": "member"},
            "library": {"name": "rudder"},
        },
    }
    assert post(server, "/v1/identify", message).status_code == 200
    contact = find_contact(server.store, EMAIL, "giulia@example.it")
    assert contact_profile(server.store, contact)["traits"]["plan"] == "member"

    # Where both are sent, the top-level traits are the identify's traits.
    both = {**message, "traits": {"plan": "gold"}}
    assert post(server, "/v1/identify", both).status_code == 200
    assert contact_profile(server.store, contact)["traits"]["plan"] == "gold"


def test_a_page_calls_category_is_kept_in_its_properties(server):
    page = {"type": "page", "anonymousId": "a1", "name": "Shoes", "category": "Shop", "properties": {"x": 1}}
    assert post(server, "/v1/page", page).status_code == 200
    stored = _rows(server.store, "SELECT name, properties FROM events")
    name, properties = stored[0]
    properties = json.loads(properties) if isinstance(properties, str) else properties
    assert name == "Shoes"
    assert properties == {"x": 1, "category": "Shop"}


def test_two_copies_of_a_batch_sent_at_once_count_each_message_once(server):
    batch = {
        "batch": [
            {"type": "track", "event": "Twice", "userId": "u1", "messageId": f"c{i}"} for i in range(200)
        ]
    }
    for attempt in range(5):  # the copies land in one group commit on some tries, in two on others
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda body: post(server, "/v1/batch", body), [batch, batch]))
        assert all(a.status_code == 200 for a in answers)
        stored = sum(a.json()["stored"] for a in answers)
        duplicates = sum(a.json()["duplicates"] for a in answers)
        assert stored == 200
        assert stored + duplicates == 400
        assert server.store.counts()["events"] == 200 * (attempt + 1)
        batch = {"batch": [{**m, "messageId": f"{m['messageId']}-{attempt}"} for m in batch["batch"]]}
