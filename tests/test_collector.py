"""The collector over real HTTP: Segment endpoints, auth, partial batches, bad input (never a 500)."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest


def post(server, path: str, body, key: str | None = None, **kw) -> httpx.Response:
    with server.client(key or server.write_key) as c:
        if isinstance(body, (bytes, str)):
            return c.post(
                path,
                content=body,
                headers={"content-type": "application/json", **kw.pop("headers", {})},
                **kw,
            )
        return c.post(path, json=body, **kw)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/track", {"event": "Signed Up", "userId": "u1"}),
        ("/v1/identify", {"userId": "u1", "traits": {"email": "u1@example.it"}}),
        ("/v1/page", {"anonymousId": "a1", "name": "Home"}),
        ("/v1/screen", {"anonymousId": "a1", "name": "Home"}),
        ("/v1/group", {"userId": "u1", "groupId": "acme"}),
        ("/v1/alias", {"userId": "u1", "previousId": "a1"}),
    ],
)
def test_each_call_type_is_stored(server, path, body):
    r = post(server, path, {**body, "messageId": "m-" + path})
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "stored": True}
    assert server.store.counts()["events"] == 1


def test_retried_batch_stores_nothing_twice(server):
    batch = {
        "batch": [
            {"type": "track", "event": "X", "anonymousId": "a", "messageId": f"r{i}"} for i in range(50)
        ]
    }
    first, second = post(server, "/v1/batch", batch), post(server, "/v1/batch", batch)
    assert first.json()["stored"] == 50
    assert second.json() == {"success": True, "received": 50, "stored": 0, "duplicates": 50, "rejected": []}
    assert server.store.counts()["events"] == 50


def test_batch_keeps_valid_messages_and_lists_rejections(server):
    batch = {
        "batch": [
            {"type": "track", "event": "Ok", "userId": "u1", "messageId": "ok1"},
            {"type": "track", "userId": "u1", "messageId": "bad1"},
            {"type": "page", "anonymousId": "a", "timestamp": "not-a-date", "messageId": "bad2"},
            {"type": "identify", "userId": 3.5, "messageId": "bad3"},
            "not an object",
            {
                "type": "track",
                "event": "Ok",
                "userId": "u1",
                "messageId": "ok2",
                "properties": {"x": [1, {"y": 2}]},
            },
        ]
    }
    r = post(server, "/v1/batch", batch)
    assert r.status_code == 200
    body = r.json()
    assert body["stored"] == 2
    assert [(x["index"], x["field"]) for x in body["rejected"]] == [
        (1, "event"),
        (2, "timestamp"),
        (3, "userId"),
        (4, "message"),
    ]
    assert "not-a-date" in body["rejected"][1]["reason"]
    with server.store.session() as s:
        assert sorted(r[0] for r in s.rows("SELECT message_id FROM events")) == ["ok1", "ok2"]


def test_batch_with_only_bad_messages_is_a_400_naming_the_first_problem(server):
    r = post(server, "/v1/batch", {"batch": [{"type": "track", "userId": "u"}]})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_batch" and "message 0: event" in r.json()["message"]


@pytest.mark.parametrize(
    ("path", "raw", "status", "field", "fragment"),
    [
        ("/v1/batch", b'{"batch": [', 400, "body", "invalid JSON"),
        ("/v1/batch", b"", 400, "body", "empty"),
        ("/v1/batch", b"[1,2]", 400, "body", "JSON object"),
        ("/v1/batch", b'{"batch": {}}', 400, "batch", "expected 'array'"),
        ("/v1/batch", b'{"batch": []}', 400, "batch", "at least one"),
        (
            "/v1/batch",
            b'{"batch": [{"type":"track","event":"\xff","userId":"u"}]}',
            400,
            "body",
            "UTF-8 (byte 36)",
        ),
        ("/v1/track", b'{"event": "X"', 400, "body", "invalid JSON"),
        ("/v1/track", b'{"event": "X", "userId": ["u"]}', 400, "userId", "got 'array'"),
        ("/v1/track", b'{"userId": "u"}', 400, "event", "required"),
        ("/v1/track", b'{"type": "page", "userId": "u"}', 400, "type", "/v1/track endpoint"),
        (
            "/v1/identify",
            b'{"userId": "u", "timestamp": "2026-02-30T10:00:00Z"}',
            400,
            "timestamp",
            "ISO 8601",
        ),
        ("/v1/identify", b'{"userId": "u", "timestamp": "3026-01-01T10:00:00Z"}', 400, "timestamp", "future"),
    ],
)
def test_bad_input_is_a_clear_4xx(server, path, raw, status, field, fragment):
    r = post(server, path, raw)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["field"] == field
    assert fragment in body["message"]
    assert server.store.counts()["events"] == 0


def test_oversized_and_compressed_bodies(server):
    big = {"batch": [{"type": "track", "event": "X", "userId": "u", "properties": {"p": "x" * 30_000}}] * 20}
    r = post(server, "/v1/batch", json.dumps(big))
    assert r.status_code == 413 and r.json()["code"] == "body_too_large" and "524,288" in r.json()["message"]
    small = {"batch": [{"type": "track", "event": "Zipped", "userId": "u", "messageId": "z1"}]}
    r = post(
        server, "/v1/batch", gzip.compress(json.dumps(small).encode()), headers={"content-encoding": "gzip"}
    )
    assert r.status_code == 200 and r.json()["stored"] == 1
    bomb = gzip.compress(b'{"batch": [' + b" " * 5_000_000 + b"]}")
    r = post(server, "/v1/batch", bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413
    r = post(server, "/v1/batch", b"not gzip", headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["message"]


def test_deeply_nested_properties_are_refused_by_name(server):
    deep: dict = {"leaf": 1}
    for _ in range(40):
        deep = {"n": deep}
    r = post(server, "/v1/track", {"event": "X", "userId": "u", "properties": deep})
    assert r.status_code == 400 and r.json()["field"] == "properties" and "levels deep" in r.json()["message"]


def test_write_key_in_body_and_auth_rules(server):
    body = {"event": "X", "userId": "u", "writeKey": server.write_key}
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.post("/v1/track", json=body).status_code == 200
        r = anonymous.post("/v1/track", json={"event": "X", "userId": "u"})
        assert r.status_code == 401 and "HTTP Basic username" in r.json()["message"]
        assert anonymous.post("/v1/track", json={**body, "writeKey": "wk_nope"}).status_code == 401
        assert anonymous.get("/v1/contacts").status_code == 401
    with server.client(server.write_key) as writer:
        r = writer.get("/v1/contacts")
        assert r.status_code == 403 and "write keys can only send data" in r.json()["message"]
    with server.client() as admin:  # a secret key may also write
        assert admin.post("/v1/track", json={"event": "X", "userId": "u"}).status_code == 200


def test_revoked_key_stops_working(server):
    with server.client() as admin:
        created = admin.post("/v1/keys", json={"kind": "write", "name": "temporary"}).json()
        assert post(server, "/v1/track", {"event": "X", "userId": "u"}, key=created["key"]).status_code == 200
        assert admin.delete(f"/v1/keys/{created['id']}").json()["revoked"] is True
        assert admin.post("/v1/keys", json={"kind": "admin", "name": "x"}).status_code == 400
    assert post(server, "/v1/track", {"event": "X", "userId": "u"}, key=created["key"]).status_code == 401


def test_import_endpoint_takes_ndjson_history_without_skew_correction(server):
    lines = "\n".join(
        json.dumps(
            {
                "type": "track",
                "event": "Store Visit",
                "userId": f"c{i}",
                "messageId": f"h{i}",
                "timestamp": f"2024-05-0{i + 1}T10:00:00Z",
                "sentAt": "2026-01-01T00:00:00Z",
                "context": {"channel": "store"},
            }
        )
        for i in range(3)
    )
    with server.client() as c:
        r = c.post(
            "/v1/import", content=lines + "\n{broken\n", headers={"content-type": "application/x-ndjson"}
        )
    assert r.status_code == 200
    assert r.json()["stored"] == 3 and r.json()["rejected"][0]["index"] == 3
    with server.store.session() as s:
        rows = s.rows("SELECT min(timestamp), max(channel) FROM events")
    assert rows[0][0].isoformat().startswith("2024-05-01T10:00:00") and rows[0][1] == "store"


def test_unknown_routes_and_methods_are_json(server):
    with server.client() as c:
        assert c.get("/v1/nothing").json()["code"] == "not_found"
        assert c.get("/v1/track").status_code == 405
