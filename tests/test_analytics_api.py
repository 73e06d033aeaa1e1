"""The journeys and analytics REST API over real HTTP, on both engines: the JSON twins of the CLI."""

from __future__ import annotations

from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.events import Limits
from tests.test_funnel import scenario
from tests.test_stages import FORWARD

JOURNEY = (
    FORWARD.replace("key: shop", "key: api-shop")
    + """personas:
  - key: buyers
    name: {en: Buyers, it: Acquirenti}
    when:
      behaviour:
        - {did: {event: Order Completed}, at_least: 1}
funnels:
  - key: checkout
    name: Checkout
    window: 7d
    steps: [{event: Product Viewed}, {event: Checkout Started}, {event: Order Completed}]
"""
)
PERIOD = {"from": "2026-05-31T00:00:00Z", "to": "2026-06-26T00:00:00Z"}


def load(server) -> None:
    report = load_messages(
        server.store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []


def test_journey_lifecycle_stages_map_and_painpoints(server):
    load(server)
    http = server.client()
    put = http.put("/v1/journeys/api-shop", content=JOURNEY, headers={"content-type": "application/yaml"})
    assert put.status_code == 200, put.text
    assert put.json()["created"] is True and put.json()["stages"]["contacts"] == 8
    assert [j["key"] for j in http.get("/v1/journeys").json()] == ["api-shop"]
    assert http.get("/v1/journeys/api-shop").json()["funnels"][0]["key"] == "checkout"
    stages = http.get("/v1/journeys/api-shop/stages", params=PERIOD).json()
    by = {s["stage"]: s for s in stages["stages"]}
    # Viewers: A B C D F G H(outside the period); buyers: A C E F G (E without viewing).
    assert by["buy"]["entered_in_period"] == 5
    the_map = http.get("/v1/journeys/api-shop/map", params={**PERIOD, "lang": "it"}).json()
    assert [s["stage"] for s in the_map["stages"]] == ["aware", "consider", "buy", "loyal"]
    consider = the_map["stages"][1]
    assert consider["top_actions"][0]["action"] in ("Checkout Started", "Product Viewed")
    assert consider["emotion"] == {
        "score": None,
        "evidence": "none",
        "nps": None,
        "nps_responses": 0,
        "csat": None,
        "csat_responses": 0,
        "quotes": [],
    }
    buyers = http.get(
        "/v1/journeys/api-shop/map", params={**PERIOD, "persona": "buyers", "pain_points": "false"}
    )
    assert buyers.status_code == 200 and buyers.json()["persona"]["key"] == "buyers"
    assert buyers.json()["stages"][2]["contacts"]["entered"] == 5
    pains = http.get("/v1/journeys/api-shop/painpoints", params=PERIOD)
    assert pains.status_code == 200 and pains.json()["funnels"] == ["checkout"]
    assert http.get("/v1/journeys.schema.json").json()["title"] == "percorso journey"


def test_funnel_endpoint(server):
    load(server)
    http = server.client()
    body = {"steps": ["Product Viewed", "Checkout Started", "Order Completed"], "window": "7d", **PERIOD}
    r = http.post("/v1/funnels", json=body)
    assert r.status_code == 200, r.text
    assert [s["contacts"] for s in r.json()["total"]["steps"]] == [6, 4, 2]
    dropped = http.post("/v1/funnels", params={"dropped_at": 2}, json=body).json()["contacts"]
    assert len(dropped) == 2


def test_bad_requests_name_the_problem(server):
    http = server.client()
    bad_yaml = http.put("/v1/journeys/x", content="version: 1\nkey: x\nname: X\nstages: [\n")
    assert bad_yaml.status_code == 422 and "not valid YAML" in bad_yaml.json()["message"]
    wrong = http.put("/v1/journeys/shop", content=FORWARD.replace("- key: buy", "- key: Buy!"))
    assert wrong.status_code == 422
    problem = wrong.json()["problems"][0]
    assert problem["field"] == "stages[2].key" and problem["line"] == 11
    mismatch = http.put("/v1/journeys/other", content=FORWARD)
    assert mismatch.status_code == 400 and mismatch.json()["field"] == "key"
    not_utf8 = http.put("/v1/journeys/shop", content=b"\xff\xfe")
    assert not_utf8.status_code == 400
    assert http.get("/v1/journeys/nope/stages").status_code == 404
    assert http.get("/v1/journeys/Not A Key/map").status_code in (400, 404)
    http.put("/v1/journeys/shop", content=FORWARD)
    persona = http.get("/v1/journeys/shop/map", params={"persona": "ghosts"})
    assert persona.status_code == 400 and persona.json()["field"] == "persona"
    period = http.get("/v1/journeys/shop/stages", params={"from": "2026-06-10", "to": "2026-06-01"})
    assert period.status_code == 400 and period.json()["field"] == "from"
    one_step = http.post("/v1/funnels", json={"steps": ["A"]})
    assert one_step.status_code == 400 and "steps" in one_step.json()["message"]
    breakdown = http.post("/v1/funnels", json={"steps": ["A", "B"], "breakdown": "colour"})
    assert breakdown.status_code == 400 and breakdown.json()["field"] == "breakdown"
    window = http.post("/v1/funnels", json={"steps": ["A", "B"], "window": "forever"})
    assert window.status_code == 400
    dim = http.get("/v1/journeys/shop/painpoints", params={"dimension": "colour"})
    assert dim.status_code == 200  # no funnels in this journey: nothing to break down
    assert server.client(server.write_key).get("/v1/journeys").status_code in (401, 403)


def test_paths_and_transitions_endpoints(server):
    from tests.test_paths import scenario as path_scenario

    report = load_messages(
        server.store, enumerate(path_scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    http = server.client()
    period = {"from": "2026-04-05T00:00:00Z", "to": "2026-04-07T00:00:00Z"}
    r = http.get(
        "/v1/paths", params={**period, "from_step": "Product Viewed", "url_rule": "^/p/[0-9]+$=>/p/:id"}
    )
    assert r.status_code == 200 and r.json()["mode"] == "from" and r.json()["contacts"] == 2
    t = http.get("/v1/transitions", params=period)
    assert t.status_code == 200 and any(row["source"] == "Product Viewed" for row in t.json())
    bad_rule = http.get("/v1/paths", params={**period, "url_rule": "no-arrow"})
    assert bad_rule.status_code == 400 and bad_rule.json()["field"] == "url_rule"
    bad_regex = http.get("/v1/paths", params={**period, "url_rule": "([=>x"})
    assert bad_regex.status_code == 400 and bad_regex.json()["field"] == "url_rules"
    assert http.get("/v1/paths", params={"max_steps": 99}).status_code == 400


def test_funnel_modes_exclusions_and_breakdowns_over_http(server):
    load(server)
    http = server.client()
    body = {"steps": ["Product Viewed", "Checkout Started", "Order Completed"], "window": "7d", **PERIOD}
    # F ordered before checking out: in any order F converts too (A G F; C is out of the window).
    any_order = http.post("/v1/funnels", json={**body, "order": "any"})
    assert any_order.status_code == 200, any_order.text
    assert [s["contacts"] for s in any_order.json()["total"]["steps"]] == [6, 4, 3]
    strict = http.post("/v1/funnels", json={**body, "order": "strict"}).json()
    # G viewed twice (a repeat, skipped), A identified between view and checkout (not a track event).
    assert [s["contacts"] for s in strict["total"]["steps"]] == [6, 3, 2]  # F's order came first
    excluded = http.post(
        "/v1/funnels", json={**body, "exclusions": [{"step": "Order Completed", "after": 1, "before": 2}]}
    ).json()
    steps = excluded["total"]["steps"]
    assert [s["contacts"] for s in steps] == [6, 3, 2] and steps[0]["excluded"] == 1  # F, not dropped
    http.put("/v1/journeys/api-shop", content=JOURNEY, headers={"content-type": "application/yaml"})
    personas = http.post("/v1/funnels", json={**body, "breakdown": "persona"})
    assert personas.status_code == 200, personas.text
    groups = {g["group"]: g["entered"] for g in personas.json()["breakdown"]["groups"]}
    assert groups == {"buyers": 4, "(none)": 2}  # A C F G bought (as of the period's end)
    assert personas.json()["breakdown"]["labels"]["buyers"]["it"] == "Acquirenti"
    first = http.post("/v1/funnels", json={**body, "breakdown": "first_campaign"}).json()
    assert {g["group"]: g["entered"] for g in first["breakdown"]["groups"]} == {"(none)": 6}


def test_funnel_bad_input_is_a_400_naming_the_field(server):
    http = server.client()
    body = {"steps": ["A", "B", "C"]}
    order = http.post("/v1/funnels", json={**body, "order": "sideways"})
    assert order.status_code == 400 and order.json()["field"] == "order"
    backwards = http.post(
        "/v1/funnels", json={**body, "exclusions": [{"step": "X", "after": 2, "before": 2}]}
    )
    assert backwards.status_code == 400 and backwards.json()["field"] == "exclusions"
    beyond = http.post("/v1/funnels", json={**body, "exclusions": [{"step": "X", "after": 1, "before": 7}]})
    assert beyond.status_code == 400 and "3-step" in beyond.json()["message"]
    empty = http.post("/v1/funnels", json={**body, "exclusions": [{"step": "event:"}]})
    assert empty.status_code == 400 and empty.json()["field"] == "exclusions"
    no_journey = http.post("/v1/funnels", json={**body, "breakdown": "persona"})
    assert no_journey.status_code == 400 and no_journey.json()["field"] == "journey"
    http.put("/v1/journeys/shop", content=FORWARD)
    no_personas = http.post("/v1/funnels", json={**body, "breakdown": "persona", "journey": "shop"})
    assert no_personas.status_code == 400 and "personas" in no_personas.json()["message"]
    unknown = http.post("/v1/funnels", json={**body, "breakdown": "persona", "journey": "nope"})
    assert unknown.status_code == 400 and unknown.json()["field"] == "journey"
