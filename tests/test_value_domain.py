"""One value domain, over real HTTP on both stores: numbers outside what the stores and msgspec
read back (1e999, 1e-400, integers of 30 or 5,000 digits) are stored as the strings they were
written as, with a warning naming their path, through every entry; every read shows them; rows
stored before the domain existed read back, and the repair migration rewrites them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from percorso.events import Event
from percorso.store.migrations import MIGRATIONS
from percorso.values import clean_json, read_json
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import signed_in

HUGE_INT = "1" + "0" * 5000
POISON = f'{{"big":1e999,"neg":-1e309,"max":1.8e308,"tiny":1e-400,"wide":123456789012345678901234567890,"deep":{{"list":[1,2,{HUGE_INT}]}},"fine":1.5e300,"int":-9223372036854775808}}'
EXPECTED_STRINGS = {
    "big": "1e999",
    "neg": "-1e309",
    "max": "1.8e308",
    "tiny": "1e-400",
    "wide": "123456789012345678901234567890",
}
PATHS = {"big", "neg", "max", "tiny", "wide", "deep.list[2]"}


def test_clean_json_keeps_what_is_in_the_domain_and_names_what_is_not() -> None:
    assert clean_json('{"a": 1, "b": 2.5, "c": "1e999", "d": 18446744073709551615}', "p") is None
    text, value, warnings = clean_json(POISON, "properties")  # type: ignore[misc]
    assert {k: value[k] for k in EXPECTED_STRINGS} == EXPECTED_STRINGS
    assert value["deep"]["list"] == [1, 2, HUGE_INT]
    assert value["fine"] == 1.5e300 and value["int"] == -(2**63)
    assert sorted(w[0] for w in warnings) == sorted(f"properties.{p}" for p in PATHS)
    assert json.loads(text) == value
    # A string that only looks like a number is left alone, even after a colon.
    assert clean_json('{"time": "at 12:1e999"}', "p") is None
    assert read_json('{"x": 1e999}') == {"x": "1e999"}
    assert read_json("not json") == {"$unreadable": "not json"}


def post(server: LiveServer, path: str, body: str, content_type: str = "application/json") -> httpx.Response:
    with server.client(server.write_key) as c:
        return c.post(path, content=body.encode(), headers={"content-type": content_type})


def _profile(api: httpx.Client, user_id: str) -> dict:
    r = api.get("/v1/contacts/lookup", params={"userId": user_id})
    assert r.status_code == 200, r.text
    return r.json()


def test_every_entry_stores_them_as_strings_and_every_read_shows_them(server: LiveServer) -> None:
    messages = {
        "identify": f'{{"type":"identify","userId":"victim","traits":{POISON}}}',
        "track": f'{{"type":"track","event":"Poisoned","userId":"victim","properties":{POISON},"context":{{"x":{POISON}}},"integrations":{POISON}}}',
        "page": f'{{"type":"page","name":"Home","userId":"victim","properties":{POISON}}}',
        "screen": f'{{"type":"screen","name":"Home","userId":"victim","properties":{POISON}}}',
        "group": f'{{"type":"group","groupId":"acme","userId":"victim","traits":{POISON}}}',
    }
    for call, body in messages.items():
        r = post(server, f"/v1/{call}", body)
        assert r.status_code == 200, (call, r.text)
        assert r.json()["stored"] is True
        assert {w["field"].split(".", 1)[1] for w in r.json()["warnings"]} >= PATHS, call

    # In a batch and an NDJSON import, the poisoned member and its valid sibling are both stored.
    ok = '{"type":"track","event":"Fine","userId":"bystander"}'
    batch = post(server, "/v1/batch", f'{{"batch":[{messages["track"]},{ok}]}}')
    assert batch.status_code == 200, batch.text
    assert batch.json()["stored"] == 2 and batch.json()["rejected"] == []
    assert {w["index"] for w in batch.json()["warnings"]} == {0}
    ndjson = post(server, "/v1/import", f"{messages['page']}\n{ok}\n", "application/x-ndjson")
    assert ndjson.status_code == 200 and ndjson.json()["stored"] == 2, ndjson.text
    assert server.store.counts()["events"] == 9

    with server.client() as api:
        victim = _profile(api, "victim")
        assert {k: victim["traits"][k] for k in EXPECTED_STRINGS} == EXPECTED_STRINGS
        timeline = api.get(f"/v1/contacts/{victim['id']}/timeline", params={"limit": 50})
        assert timeline.status_code == 200, timeline.text
        events = timeline.json()["events"]
        assert len(events) == 7
        track = next(e for e in events if e["type"] == "track")
        assert track["properties"]["big"] == "1e999" and track["context"]["x"]["deep"]["list"][2] == HUGE_INT
        export = api.get(f"/v1/contacts/{victim['id']}/export")
        assert export.status_code == 200, export.text
        assert HUGE_INT in export.text and '"1e-400"' in export.text
        # A breakdown by the property reads the string, like any other text value.
        funnel = api.post("/v1/funnels", json={"steps": ["Poisoned", "Fine"], "breakdown": "property:big"})
        assert funnel.status_code == 200, funnel.text
        assert [g["group"] for g in funnel.json()["breakdown"]["groups"]] == ["1e999"]

    add_user(server.store, "anna@example.it", "a long enough secret", role="admin")
    dash = signed_in(server, ("anna@example.it", "a long enough secret"))
    page = dash.get(f"/contacts/{victim['id']}")
    assert page.status_code == 200 and "1e999" in page.text
    twin = dash.get(f"/contacts/{victim['id']}.json")
    assert twin.status_code == 200 and "1e999" in twin.text, twin.text
    dash.close()


def _event(message_id: str, properties: str, traits: str = "{}") -> Event:
    now = datetime.now(UTC)
    return Event(
        message_id=message_id, type="track", event="Old", name=None, anonymous_id=None,
        user_id="old-victim", email=None, group_id=None, previous_id=None, timestamp=now,
        original_timestamp=None, sent_at=None, received_at=now, channel="web", source_id=None,
        page_url=None, page_path=None, page_referrer=None, page_title=None, utm_source=None,
        utm_medium=None, utm_campaign=None, utm_term=None, utm_content=None, ip=None,
        user_agent=None, locale=None, library=None, properties=properties, traits=traits,
        context="{}", integrations="{}",
    )  # fmt: skip


def test_rows_stored_before_the_domain_read_back_and_the_repair_rewrites_them(server: LiveServer) -> None:
    # As the collector stored them before: the raw text went straight to the store. (PostgreSQL
    # keeps 1e999 as a 1,000-digit numeric, and 1e4400 as a 4,401-digit one msgspec cannot read.)
    server.store.ingest(
        [
            _event("old-1", '{"x":1e999,"y":1}'),
            _event(
                "old-2",
                f'{{"n":{HUGE_INT[:4400]}e0}}' if server.store.engine == "postgres" else '{"n":-1e999}',
            ),
        ]
    )
    with server.store.session() as s:
        s.execute("UPDATE contacts SET traits = CAST(? AS " + s.json_type + ")", ['{"score":1e999}'])
    with server.client() as api:
        victim = _profile(api, "old-victim")
        assert str(victim["traits"]["score"]) in ("1e999", "1" + "0" * 999)
        timeline = api.get(f"/v1/contacts/{victim['id']}/timeline")
        assert timeline.status_code == 200, timeline.text
        assert api.get(f"/v1/contacts/{victim['id']}/export").status_code == 200

    # What migration 8 runs on a store upgraded from before it (its own repair, in its transaction).
    [migration] = [m for m in MIGRATIONS if m.name == "numbers outside the value domain stored as strings"]
    assert migration.version == 8 and migration.repair is not None
    with server.store.session() as s:
        migration.repair(s)
    with server.store.session() as s:
        texts = [row[0] for row in s.rows("SELECT CAST(properties AS TEXT) FROM events ORDER BY message_id")]
        traits = s.rows("SELECT CAST(traits AS TEXT) FROM contacts")[0][0]
    values = [json.loads(t) for t in texts]
    assert all(isinstance(v, str) for value in values for v in value.values() if v != 1), values
    assert values[0]["y"] == 1
    assert isinstance(json.loads(traits)["score"], str)
    with server.client() as api:
        timeline = api.get(f"/v1/contacts/{victim['id']}/timeline").json()["events"]
        assert sorted(e["properties"]["x"] for e in timeline if "x" in e["properties"]) in (
            ["1e999"],
            ["1" + "0" * 999],
        )


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import"])
def test_a_batch_of_junk_answers_a_short_list(server: LiveServer, path: str) -> None:
    ok = {"type": "track", "event": "Fine", "userId": "u1"}
    r = post(server, path, json.dumps({"batch": [ok, *([1] * 5000)]}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] == 1 and len(body["rejected"]) == 100 and body["rejected_more"] == 4900
    assert [x["index"] for x in body["rejected"]] == list(range(1, 101))
    assert len(r.content) < 20_000


def test_file_imports_keep_them_as_strings(store, settings, tmp_path) -> None:
    from typer.testing import CliRunner

    from percorso.cli import app
    from percorso.store import open_store
    from percorso.store.contacts import contact_timeline, find_contact
    from tests.test_import_cli import env_for

    store.close()  # the command opens the store itself (DuckDB allows one owner)
    jsonl = tmp_path / "visits.jsonl"
    jsonl.write_text(
        f'{{"customer_id": "c-1", "at": "2026-03-02T10:00:00Z", "amount": 1e999, "ref": {HUGE_INT}}}\n'
        '{"customer_id": "c-2", "at": "2026-03-02T11:00:00Z", "amount": 12}\n'
    )
    csv = tmp_path / "visits.csv"
    csv.write_text("customer_id,at,amount\nc-1,2026-03-03 10:00,1e-400\nc-2,2026-03-03 11:00,1e999\n")
    runner = CliRunner()
    for path in (jsonl, csv):
        args = [
            "import",
            str(path),
            "--event",
            "Visit",
            "--map",
            "userId=customer_id",
            "--map",
            "timestamp=at",
        ]
        result = runner.invoke(app, args, env=env_for(settings))
        assert result.exit_code == 0, result.output
        assert "2 stored" in result.output

    s = open_store(settings)
    try:
        amounts = {
            (e["userId"], e["timestamp"][:10]): e["properties"]["amount"]
            for who in ("c-1", "c-2")
            for e in contact_timeline(s, find_contact(s, "user_id", who))["events"]
        }
        ref = contact_timeline(s, find_contact(s, "user_id", "c-1"))["events"][-1]["properties"]["ref"]
    finally:
        s.close()
    assert amounts == {
        ("c-1", "2026-03-02"): "1e999",
        ("c-2", "2026-03-02"): 12,
        ("c-1", "2026-03-03"): "1e-400",
        ("c-2", "2026-03-03"): "1e999",
    }
    assert ref == HUGE_INT
