"""Crafted query input to the REST API gets a 400 that names the parameter, over real HTTP, on
both engines: pagination cursors the API never issued, JSON keys that a path built by
concatenation would misread, URL rules that are not valid, credentials that are not ASCII."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.test_analytics_api import PERIOD, load


def send(server, *messages: dict) -> None:
    """Messages through the collector, as a site would send them."""
    stamped = [{"timestamp": "2026-06-01T10:00:00Z", **m} for m in messages]
    r = httpx.post(f"{server.url}/v1/batch", json={"batch": stamped}, auth=(server.write_key, ""))
    assert r.status_code == 200 and r.json()["stored"] == len(messages), r.text


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("2026-01-01T00:00:00|x"),  # the contact id is not a number
        _cursor("2026-01-01T00:00:00|99999999999999999999999"),  # past BIGINT
        _cursor("2026-01-01T00:00:00|-1"),
        _cursor("9999-12-31T23:59:59-05:00|1"),  # past the calendar's end in UTC
        _cursor("0001-01-01T00:00:00+05:00|1"),  # before its start
        _cursor("not a time|1"),
        _cursor("2026-01-01T00:00:00"),  # one part
        "%%%",
        "é",
    ],
)
def test_a_contacts_cursor_the_api_did_not_issue_is_a_400(server, cursor: str) -> None:
    r = server.client().get("/v1/contacts", params={"cursor": cursor})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "cursor" and "cursor this API returned" in r.json()["message"]


def test_cursors_the_api_issues_page_through_every_contact(server) -> None:
    load(server)
    http = server.client()
    seen: list[int] = []
    page = http.get("/v1/contacts", params={"limit": 3}).json()
    while True:
        seen += [c["id"] for c in page["contacts"]]
        if not page["next_cursor"]:
            break
        page = http.get("/v1/contacts", params={"limit": 3, "cursor": page["next_cursor"]}).json()
    everyone = http.get("/v1/contacts", params={"limit": 100}).json()["contacts"]
    assert len(seen) == len(set(seen)) == len(everyone) > 3
    busiest = max(everyone, key=lambda c: c["events"])["id"]
    timeline = http.get(f"/v1/contacts/{busiest}/timeline", params={"limit": 1}).json()
    assert timeline["next_cursor"]
    second = http.get(
        f"/v1/contacts/{busiest}/timeline", params={"limit": 1, "cursor": timeline["next_cursor"]}
    )
    assert second.json()["events"] != timeline["events"]
    crafted = http.get(
        f"/v1/contacts/{busiest}/timeline", params={"cursor": _cursor("9999-12-31T23:59:59-05:00|m")}
    )
    assert crafted.status_code == 400 and crafted.json()["field"] == "cursor"
    offset = http.get(
        f"/v1/contacts/{busiest}/timeline", params={"cursor": _cursor("2030-01-01T00:00:00+02:00|zzz")}
    )
    assert offset.status_code == 200 and offset.json()["events"], offset.text


@pytest.mark.parametrize("key", ["a\\", 'a"', "a/b", "t~z", "$.x", "é ü"])
def test_a_breakdown_by_any_property_key_answers(server, key: str) -> None:
    """A JSON key is passed as a JSON pointer on DuckDB and as a text key on PostgreSQL, so
    backslashes, quotes and slashes in it are only characters."""
    send(
        server,
        {"type": "track", "event": "Signed Up", "userId": "u1", "properties": {key: "yes"}},
        {"type": "track", "event": "Signed Up", "userId": "u2", "properties": {"other": 1}},
        {"type": "track", "event": "Ordered", "userId": "u1", "timestamp": "2026-06-01T11:00:00Z"},
    )
    body = {
        "steps": ["Signed Up", "Ordered"],
        "breakdown": f"property:{key}",
        "from": "2000-01-01T00:00:00Z",
        "to": "2100-01-01T00:00:00Z",
    }
    r = server.client().post("/v1/funnels", json=body)
    assert r.status_code == 200, r.text
    groups = {g["group"]: g["entered"] for g in r.json()["breakdown"]["groups"]}
    assert groups.get("yes") == 1, groups


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (r"/p/(\d+)=>\9", "refers to group 9"),
        (r"/p/(\d+)=>\g<name>", "refers to group 'name'"),
        ("/p/=>\\", "backslash"),
        ("(a=>x", "not a regular expression"),
        (r"(a)\1=>x", "without backreferences"),
        ("(?<=a)b=>x", "look-arounds"),
        ("a" * 1001 + "=>x", "at most 1000 characters"),
    ],
)
def test_a_url_rule_that_cannot_run_is_a_400_naming_it(server, rule: str, problem: str) -> None:
    r = server.client().get("/v1/paths", params={**PERIOD, "url_rule": rule})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "url_rules" and problem in r.json()["message"], r.json()


def test_url_rules_with_groups_clean_page_paths(server) -> None:
    send(
        server,
        {"type": "page", "userId": "u1", "name": "x", "properties": {"path": "/product/41"}},
        {"type": "page", "userId": "u2", "name": "x", "properties": {"path": "/product/42"}},
    )
    params = {
        "from": "2000-01-01T00:00:00Z",
        "to": "2100-01-01T00:00:00Z",
        "url_rule": r"^/(product)/\d+$=>/\1/:id",
    }
    r = server.client().get("/v1/paths", params=params)
    assert r.status_code == 200, r.text
    names = {n["id"] for n in r.json()["nodes"]}
    assert "1:page:/product/:id" in names and not any("/41" in n for n in names), names


@pytest.mark.parametrize("credential", ["Basic w6k=", "Basic é", "Basic ZmFrZTo=\u00e9", "Bearer é"])
def test_a_credential_that_is_not_ascii_is_a_401(server, credential: str) -> None:
    r = httpx.post(
        f"{server.url}/v1/track",
        content=b'{"event":"x","userId":"u"}',
        headers={"Authorization": credential.encode("utf-8"), "Content-Type": "application/json"},
    )
    assert r.status_code == 401, r.text
    assert server.store.counts()["events"] == 0


@pytest.mark.parametrize(
    ("path", "key", "name"),
    [
        ("/v1/messages?token=a&token=b", "write", "token"),
        ("/v1/contacts?limit=1&limit=2", "secret", "limit"),
        ("/v1/retention?period=week&period=day", "secret", "period"),
    ],
)
def test_a_single_value_query_parameter_given_twice_is_a_400(server, path: str, key: str, name: str) -> None:
    """Which of two values counts would be a guess (the last, in FastAPI): the API says so."""
    with server.client(server.write_key if key == "write" else server.secret_key) as api:
        answer = api.get(path)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == name and "given 2 times" in answer.json()["message"]


def test_list_query_parameters_still_take_many_values(server) -> None:
    with server.client() as api:
        answer = api.get("/v1/paths", params=[("url_rule", "a=>b"), ("url_rule", "c=>d")])
    assert answer.status_code == 200, answer.text
