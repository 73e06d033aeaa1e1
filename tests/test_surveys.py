"""Surveys on both stores over real HTTP: definitions validated with the line and field of each
problem, answers from a visitor's browser checked question by question (a score out of range,
a forged token, an unknown survey are clear 4xx and store nothing), answers stored as touchpoints
on the visitor's contact, and NPS, CSAT and CES computed in the store with their intervals, checked
against values worked out by hand."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from percorso.analytics.feedback import nps_interval, wilson_interval
from percorso.feedback.definition import SurveyError, load_survey
from tests.conftest import LiveServer

NPS = """
key: nps-after-purchase
name: {en: "Recommend us?", it: "Ci consiglieresti?"}
stage: purchase
touchpoint: checkout
questions:
  - id: score
    kind: nps
    required: true
    text: {en: "How likely are you to recommend Casa Aurora to a friend?", it: "Quanto è probabile che consiglieresti Casa Aurora a un amico?"}
  - id: why
    kind: open
    text: {en: "What is the main reason for your score?", it: "Qual è il motivo principale del tuo voto?"}
  - id: channel
    kind: choice
    options: [email, social, friend]
    text: How did you hear of us?
target: {pages: ["/order/complete*"], sample: 50}
show: {every: 90d, delay: 5, stop_after: 1000}
"""

CSAT = """
key: delivery-csat
name: Delivery
questions:
  - {id: score, kind: csat, text: "How satisfied are you with the delivery?"}
"""


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        (NPS.replace("kind: open", "kind: opne"), 12, "questions[1].kind", "expected one of: nps, csat, ces"),
        (NPS.replace("kind: open", "kind: ces"), 12, "questions[1].kind", "one scored question"),
        (
            NPS.replace("options: [email, social, friend]", "options: [email]"),
            16,
            "questions[2].options",
            "two options",
        ),
        (NPS.replace("sample: 50", "sample: 150"), 18, "target.sample", "<= 100"),
        (NPS.replace('"/order/complete*"', "order/complete"), 18, "target.pages[0]", "start it with /"),
        (NPS.replace("id: why", "id: score"), 11, "questions[1].id", "already the id of questions[0]"),
        (NPS.replace("every: 90d", "every: 90 days"), 19, "show.every", "'90 days' is not a duration: write"),
        (
            NPS.replace("  - id: channel", "  - id: channel\n    colour: red"),
            15,
            "questions[2]",
            "unknown field `colour`",
        ),
    ],
)
def test_bad_definitions_name_line_and_field(text: str, line: int, field: str, says: str) -> None:
    with pytest.raises(SurveyError) as caught:
        load_survey(text, "nps.yaml")
    problem = caught.value.problems[0]
    assert (problem.line, problem.field) == (line, field), str(caught.value)
    assert says in problem.message, problem.message


def test_hand_worked_intervals() -> None:
    # 50 promoters, 30 passives, 20 detractors: NPS 30; p + d - (p - d)^2 = 0.7 - 0.09 = 0.61;
    # half width 1.959964 * sqrt(0.61 / 100) = 0.15308 -> 30 ± 15.3.
    assert nps_interval(100, 50, 20) == (14.7, 45.3)
    # Wilson, 40 of 50 (Agresti & Coull's example shape): centre (0.8 + z²/100) / (1 + z²/50).
    z = 1.959963984540054
    centre = (0.8 + z * z / 100) / (1 + z * z / 50)
    half = z * math.sqrt(0.8 * 0.2 / 50 + z * z / 10000) / (1 + z * z / 50)
    assert wilson_interval(50, 40) == (round(100 * (centre - half), 1), round(100 * (centre + half), 1))
    assert nps_interval(0, 0, 0) is None


def visitor(writer) -> dict[str, str]:
    answer = writer.post("/v1/visitors")
    assert answer.status_code == 201
    return dict(answer.json())


def test_answers_are_checked_stored_and_scored(server: LiveServer) -> None:
    with server.client() as api:
        bad = api.put("/v1/surveys/nps-after-purchase", content=NPS.replace("kind: open", "kind: opne"))
        assert bad.status_code == 422 and bad.json()["problems"][0]["line"] == 12
        assert api.put("/v1/surveys/nps-after-purchase", content=NPS).json()["version"] == 1
        assert api.put("/v1/surveys/nps-after-purchase", content=NPS).json()["changed"] is False
        assert api.put("/v1/surveys/delivery-csat", content=CSAT).status_code == 200
        assert [s["key"] for s in api.get("/v1/surveys").json()["surveys"]] == [
            "delivery-csat",
            "nps-after-purchase",
        ]
        definition = api.get("/v1/surveys/nps-after-purchase").json()["definition"]
        assert definition["questions"][0]["kind"] == "nps"

    scores = [10] * 5 + [9] * 3 + [8, 7] + [6, 5, 3, 0]  # 8 promoters, 2 passives, 4 detractors
    with server.client(server.write_key) as writer:
        people = [visitor(writer) for _ in scores]
        before = server.store.counts()["events"]
        refused = [
            ({"score": 11}, "answers.score", "from 0 to 10"),
            ({"score": 7.5}, "answers.score", "whole number"),
            ({"score": True}, "answers.score", "whole number"),
            ({"why": "no score"}, "answers.score", "is required"),
            ({"score": 9, "colour": "red"}, "answers.colour", "not a question"),
            ({"score": 9, "channel": "tv"}, "answers.channel", "not one of the options"),
            ({"score": 9, "why": "x" * 2001}, "answers.why", "2,000 characters"),
        ]
        for given, field, says in refused:
            r = writer.post(
                "/v1/surveys/nps-after-purchase/answers", json={"token": people[0]["token"], "answers": given}
            )
            assert r.status_code == 400 and r.json()["field"] == field and says in r.json()["message"], (
                given,
                r.text,
            )
        token = people[0]["token"]
        forged = token[:-1] + ("1" if token[-1] == "0" else "0")  # always a different signature
        r = writer.post(
            "/v1/surveys/nps-after-purchase/answers", json={"token": forged, "answers": {"score": 9}}
        )
        assert r.status_code == 403 and r.json()["field"] == "token"
        r = writer.post(
            "/v1/surveys/no-such/answers", json={"token": people[0]["token"], "answers": {"score": 9}}
        )
        assert r.status_code == 404
        assert server.store.counts()["events"] == before  # nothing stored for any of them

        for person, score in zip(people, scores, strict=True):
            given = {"score": score, "why": f"voto {score}", "channel": "friend"}
            r = writer.post(
                "/v1/surveys/nps-after-purchase/answers",
                json={"token": person["token"], "answers": given, "page": "/order/complete"},
            )
            assert r.status_code == 201 and r.json()["stored"] is True, r.text
        for person, score in zip(people[:4], [5, 4, 2, 4], strict=True):
            writer.post(
                "/v1/surveys/delivery-csat/answers",
                json={"token": person["token"], "answers": {"score": score}},
            )

    start = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    with server.client() as api:
        nps = api.get("/v1/surveys/nps-after-purchase/results", params={"from": start}).json()
        csat = api.get("/v1/surveys/delivery-csat/results", params={"from": start}).json()
        assert (
            api.get("/v1/surveys/nps-after-purchase/results", params={"from": start, "to": start}).status_code
            == 400
        )
        # The answer is a touchpoint of the visitor's contact, with its stage and touchpoint.
        contact = api.get("/v1/contacts/lookup", params={"anonymousId": people[0]["anonymousId"]}).json()
        [event] = [
            e
            for e in api.get(f"/v1/contacts/{contact['id']}/timeline").json()["events"]
            if e.get("event") == "Survey Answered" and e["properties"]["survey"] == "nps-after-purchase"
        ]
    assert nps["responses"] == 14
    score = nps["score"]
    assert (score["answers"], score["promoters"], score["passives"], score["detractors"]) == (14, 8, 2, 4)
    assert score["nps"] == round(100 * 4 / 14, 1) == 28.6
    assert score["ci95"] == list(nps_interval(14, 8, 4))
    assert len(nps["periods"]) in (1, 2) and sum(p["answers"] for p in nps["periods"]) == 14
    assert csat["score"]["csat"] == 75.0 and csat["score"]["satisfied"] == 3 and csat["score"]["mean"] == 3.75
    assert event["properties"]["score"] == 10 and event["properties"]["comment"] == "voto 10"
    assert event["properties"]["stage"] == "purchase" and event["properties"]["touchpoint"] == "checkout"
    assert event["channel"] == "survey" and event["context"]["page"]["path"] == "/order/complete"


def test_who_is_offered_a_survey(server: LiveServer) -> None:
    from percorso.automation.engine import bucket

    limited = CSAT.replace("key: delivery-csat", "key: limited") + "show: {stop_after: 2}\n"
    sampled = CSAT.replace("key: delivery-csat", "key: sampled") + "target: {sample: 20}\n"
    with server.client() as api:
        for key, text in (("limited", limited), ("sampled", sampled)):
            assert api.put(f"/v1/surveys/{key}", content=text).status_code == 200
    with server.client(server.write_key) as writer:
        people = [visitor(writer) for _ in range(30)]

        def offered(person: dict[str, str]) -> set[str]:
            r = writer.get("/v1/visitors/surveys", params={"token": person["token"]})
            assert r.status_code == 200, r.text
            return {s["key"] for s in r.json()["surveys"]}

        in_sample = {p["anonymousId"] for p in people if bucket("sampled", "sample", p["anonymousId"]) < 20}
        assert 0 < len(in_sample) < 30
        assert {p["anonymousId"] for p in people if "sampled" in offered(p)} == in_sample
        assert all("limited" in offered(p) for p in people)
        # Once a person answered (or was shown it), not again; after two answers, nobody.
        for person in people[:2]:
            r = writer.post(
                "/v1/surveys/limited/answers", json={"token": person["token"], "answers": {"score": 4}}
            )
            assert r.status_code == 201
        assert all("limited" not in offered(p) for p in people)
        assert writer.get("/v1/visitors/surveys", params={"token": "forged.token"}).status_code == 403


def test_the_survey_pages_show_the_same_numbers_as_the_api(server: LiveServer) -> None:
    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    with server.client() as api:
        assert api.put("/v1/surveys/nps-after-purchase", content=NPS).status_code == 200
    with server.client(server.write_key) as writer:
        for score, why in [
            (10, "Consegna rapida"),
            (9, "Bel prodotto"),
            (3, "Pacco arrivato rotto, 100%_vero"),
        ]:
            person = visitor(writer)
            answer = {"token": person["token"], "answers": {"score": score, "why": why}}
            assert writer.post("/v1/surveys/nps-after-purchase/answers", json=answer).status_code == 201
    with server.client() as api:
        expected = api.get(
            "/v1/surveys/nps-after-purchase/results", params={"from": "2000-01-01T00:00:00Z"}
        ).json()
    add_user(server.store, "anna@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    try:
        listing = dashboard.get("/surveys.json", params={"from": "2000-01-01"}).json()
        [row] = listing["surveys"]
        assert row["result"]["score"] == expected["score"]
        twin = dashboard.get("/surveys/nps-after-purchase.json", params={"from": "2000-01-01"}).json()
        assert twin["result"]["score"] == expected["score"] and twin["result"]["score"]["nps"] == 33.3
        assert next(c["comment"] for c in twin["comments"]).startswith("Pacco")
        dashboard.cookies.set("percorso_lang", "it")
        page = dashboard.get("/surveys/nps-after-purchase", params={"from": "2000-01-01"}).text
        assert 'data-nps="33.3"' in page and "Promotori (9–10)" in page and "Consegna rapida" in page
        # The comment search reads % and _ literally.
        found = dashboard.get(
            "/surveys/nps-after-purchase.json", params={"from": "2000-01-01", "q": "%_v"}
        ).json()
        assert [c["score"] for c in found["comments"]] == [3]
        assert (
            dashboard.get(
                "/surveys/nps-after-purchase.json", params={"from": "2000-01-01", "q": "%x"}
            ).json()["comments"]
            == []
        )
        assert dashboard.get("/surveys/missing").status_code == 404
        dashboard.cookies.set("percorso_lang", "en")
        en = dashboard.get("/surveys", params={"from": "2000-01-01"}).text
        assert 'data-survey="nps-after-purchase"' in en and "Surveys" in en
    finally:
        dashboard.close()


def test_answers_feed_the_journey_maps_emotion(server: LiveServer) -> None:
    from tests.test_stages import FORWARD

    with server.client() as api:
        assert api.put("/v1/surveys/nps-after-purchase", content=NPS).status_code == 200
    with server.client(server.write_key) as writer:
        for score in (10, 10, 9, 2):
            person = visitor(writer)
            page = {"anonymousId": person["anonymousId"], "properties": {"path": "/"}}
            assert writer.post("/v1/page", json=page).status_code == 200
            answer = {"token": person["token"], "answers": {"score": score}}
            assert writer.post("/v1/surveys/nps-after-purchase/answers", json=answer).status_code == 201
    with server.client() as api:
        assert (
            api.put(
                "/v1/journeys/shop", content=FORWARD, headers={"content-type": "application/yaml"}
            ).status_code
            == 200
        )
        period = {
            "from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
            "to": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        }
        aware = api.get("/v1/journeys/shop/map", params=period).json()["stages"][0]
    # 3 promoters, 1 detractor of 4: NPS 50, which the map shows on its -1..1 scale.
    assert aware["emotion"]["nps"] == 50.0 and aware["emotion"]["nps_responses"] == 4, aware["emotion"]
    assert aware["emotion"]["score"] == 0.5


EMAIL_NPS = """
key: nps-email
name: {en: "NPS by email", it: "NPS per email"}
trigger: {event: Order Completed}
steps:
  - id: ask
    email:
      category: transactional
      subject: "How did we do?"
      text: "0: {{ survey_url('nps-after-purchase', 0) }} 9: {{ survey_url('nps-after-purchase', 9) }} 10: {{ survey_url('nps-after-purchase', 10) }}"
"""


def test_a_score_in_one_click_from_an_email_then_a_comment(server: LiveServer) -> None:
    import re

    import httpx
    from aiosmtpd.controller import Controller

    from percorso.automation.actions.email import SmtpSettings
    from percorso.automation.definition import load_automation
    from percorso.automation.engine import Engine, EngineSettings
    from percorso.automation.stats import automation_stats
    from percorso.automation.store import save_automation
    from tests.conftest import free_port
    from tests.test_automation import Inbox

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with server.client() as api:
            assert api.put("/v1/surveys/nps-after-purchase", content=NPS).status_code == 200
        save_automation(server.store, load_automation(EMAIL_NPS), "test")
        with server.client(server.write_key) as writer:
            writer.post("/v1/identify", json={"userId": "ugo", "traits": {"email": "ugo@example.it"}})
            writer.post("/v1/track", json={"userId": "ugo", "event": "Order Completed"})
        smtp = SmtpSettings(host="127.0.0.1", port=controller.port, sender="shop@example.it")
        Engine(server.store, smtp=smtp, settings=EngineSettings(base_url=server.url)).run_until_idle()
    finally:
        controller.stop()
    stats = automation_stats(server.store, "nps-email")
    assert len(inbox.messages) == 1, (stats["totals"], stats["failures"], stats["steps"])
    [message] = inbox.messages
    body = message.get_body(("plain",)).get_content()
    link = {int(s): url for s, url in re.findall(r"(\d+): (\S+)", body)}
    assert set(link) == {0, 9, 10} and link[9].startswith(f"{server.url}/s/")

    with httpx.Client(timeout=10) as reader:
        page = reader.get(link[9], headers={"Accept-Language": "it-IT"})
        assert page.status_code == 200 and "Grazie!" in page.text and "La tua risposta: 9" in page.text
        assert reader.get(link[10]).status_code == 200  # a second click of the same email changes nothing
        comment = reader.post(link[9].split("?")[0], data={"score": "9", "comment": "Consegna puntuale"})
        assert comment.status_code == 200
        token = link[9].split("/s/")[1].split("?")[0]
        assert reader.get(f"{server.url}/s/{token}", params={"score": "11"}).status_code == 400
        tampered = token[:-2] + ("11" if token.endswith("00") else "00")  # never the token itself
        assert reader.get(f"{server.url}/s/{tampered}", params={"score": "9"}).status_code == 404
        assert reader.get(f"{server.url}/s/{token}x", params={"score": "9"}).status_code == 404
    with server.client() as api:
        result = api.get("/v1/surveys/nps-after-purchase/results").json()
        contact = api.get("/v1/contacts/lookup", params={"userId": "ugo"}).json()["id"]
        timeline = api.get(f"/v1/contacts/{contact}/timeline").json()["events"]
    assert result["responses"] == 1 and result["score"]["promoters"] == 1
    answered = [e for e in timeline if e.get("event") == "Survey Answered"]
    assert (
        len(answered) == 1
        and answered[0]["properties"]["via"] == "email"
        and answered[0]["channel"] == "email"
    )
    from percorso.analytics.feedback import survey_comments
    from percorso.feedback.store import get_survey

    survey, _, _ = get_survey(server.store, "nps-after-purchase")
    start = datetime.now(UTC) - timedelta(days=1)
    comments = survey_comments(server.store, survey, start, datetime.now(UTC) + timedelta(hours=1))
    assert [(c["score"], c["comment"]) for c in comments] == [(9, "Consegna puntuale")]


AUDIENCE_JOURNEY = """\
version: 1
key: shop
name: Shop
stages:
  - key: aware
    name: {en: Aware, it: Consapevole}
    enter: {any: [{type: page}]}
  - key: buy
    name: {en: Buy, it: Acquisto}
    enter: {any: [{event: Order Completed}]}
touchpoints:
  - {key: delivery, name: Delivery, lane: Logistics, match: [{event: Parcel Delivered}]}
  - {key: support, name: Support, lane: Service, match: [{event: Ticket Opened}]}
personas:
  - {key: buyers, name: Buyers, when: {behaviour: [{did: {event: Order Completed}}]}}
  - {key: browsers, name: Browsers, when: {behaviour: [{did: {event: Order Completed}, at_least: 0, at_most: 0}]}}
"""


def test_audience_by_stage_persona_and_segment(server: LiveServer) -> None:
    from percorso.analytics.stages import get_journey, update

    for_buyers = (
        CSAT.replace("key: delivery-csat", "key: for-buyers") + "target: {journey: shop, stages: [buy]}\n"
    )
    by_persona = CSAT.replace("key: delivery-csat", "key: by-persona") + (
        "target: {journey: shop, personas: [buyers]}\n"
    )
    by_segment = CSAT.replace("key: delivery-csat", "key: by-segment") + "target: {segments: [lapsed]}\n"
    with server.client() as api:
        # Names the store does not hold are refused with the field, before anything is saved.
        no_journey = api.put("/v1/surveys/for-buyers", content=for_buyers)
        assert no_journey.status_code == 422, no_journey.text
        assert no_journey.json()["problems"][0]["field"] == "target.journey"
        assert "no journey 'shop' is stored" in no_journey.json()["message"]
        put = api.put(
            "/v1/journeys/shop", content=AUDIENCE_JOURNEY, headers={"content-type": "application/yaml"}
        )
        assert put.status_code == 200, put.text
        typo = api.put("/v1/surveys/for-buyers", content=for_buyers.replace("[buy]", "[byu]"))
        assert typo.status_code == 422
        problem = typo.json()["problems"][0]
        assert (problem["field"], problem["suggestion"]) == ("target.stages[0]", "buy"), problem
        assert "'byu' is not a stage of journey shop (aware, buy)" in problem["message"]
        persona_typo = api.put("/v1/surveys/by-persona", content=by_persona.replace("[buyers]", "[buyer]"))
        assert persona_typo.json()["problems"][0]["field"] == "target.personas[0]"
        unsaved = api.put("/v1/surveys/by-segment", content=by_segment)
        assert unsaved.status_code == 422 and "'lapsed' is not a saved segment" in unsaved.text
        loose = api.put("/v1/surveys/for-buyers", content=for_buyers.replace("journey: shop, ", ""))
        assert loose.status_code == 422 and "name it in target.journey" in loose.text
        assert api.get("/v1/surveys").json()["surveys"] == []

    with server.client(server.write_key) as writer:
        buyer, browser, stranger = visitor(writer), visitor(writer), visitor(writer)
        for person in (buyer, browser):
            page = {"anonymousId": person["anonymousId"], "properties": {"path": "/"}}
            assert writer.post("/v1/page", json=page).status_code == 200
        order = {"anonymousId": buyer["anonymousId"], "event": "Order Completed"}
        assert writer.post("/v1/track", json=order).status_code == 200
    update(server.store, get_journey(server.store, "shop"))
    with server.store.writing() as s:
        s.execute(
            "INSERT INTO segments (segment_key, name, source, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
            ["lapsed", "Lapsed", "{}", "test", datetime.now(UTC)],
        )
        s.execute(
            "INSERT INTO segment_members (segment_key, contact_id) SELECT 'lapsed', contact_id FROM identities "
            "WHERE kind = 'anonymous_id' AND value = ?",
            [browser["anonymousId"]],
        )
    with server.client() as api:
        for key, text in (("for-buyers", for_buyers), ("by-persona", by_persona), ("by-segment", by_segment)):
            assert api.put(f"/v1/surveys/{key}", content=text).status_code == 200, key
    with server.client(server.write_key) as writer:

        def offered(person: dict[str, str]) -> set[str]:
            r = writer.get("/v1/visitors/surveys", params={"token": person["token"]})
            assert r.status_code == 200, r.text
            return {s["key"] for s in r.json()["surveys"]}

        assert offered(buyer) == {"for-buyers", "by-persona"}
        assert offered(browser) == {"by-segment"}
        assert offered(stranger) == set()  # no events yet: in no stage, persona or segment


def test_results_by_stage_persona_touchpoint_page_and_channel(server: LiveServer) -> None:
    from percorso.analytics.stages import get_journey, update

    with server.client() as api:
        assert api.put("/v1/surveys/nps-after-purchase", content=NPS).status_code == 200
        none = api.get("/v1/surveys/nps-after-purchase/results", params={"by": "stage"})
        assert none.status_code == 400 and none.json()["field"] == "journey", none.text
        put = api.put(
            "/v1/journeys/shop", content=AUDIENCE_JOURNEY, headers={"content-type": "application/yaml"}
        )
        assert put.status_code == 200
    # Two buyers who got their parcel (10 and 9), one who opened a ticket (2), one browser (6).
    people = [
        ("buyer", "Parcel Delivered", 10),
        ("buyer", "Parcel Delivered", 9),
        ("buyer", "Ticket Opened", 2),
    ]
    people.append(("browser", "Ticket Opened", 6))
    with server.client(server.write_key) as writer:
        for kind, touch, score in people:
            person = visitor(writer)
            anonymous = person["anonymousId"]
            assert (
                writer.post(
                    "/v1/page", json={"anonymousId": anonymous, "properties": {"path": "/"}}
                ).status_code
                == 200
            )
            if kind == "buyer":
                order = {"anonymousId": anonymous, "event": "Order Completed"}
                assert writer.post("/v1/track", json=order).status_code == 200
            assert (
                writer.post("/v1/track", json={"anonymousId": anonymous, "event": touch}).status_code == 200
            )
            answer = {"token": person["token"], "answers": {"score": score}, "page": f"/thanks/{kind}"}
            assert writer.post("/v1/surveys/nps-after-purchase/answers", json=answer).status_code == 201
    update(server.store, get_journey(server.store, "shop"))
    period = {
        "from": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "to": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    with server.client() as api:

        def breakdown(by: str) -> dict[str | None, tuple[int, float]]:
            r = api.get("/v1/surveys/nps-after-purchase/results", params={**period, "by": by})
            assert r.status_code == 200, r.text
            return {g["group"]: (g["answers"], g["nps"]) for g in r.json()["breakdown"]}

        # Buyers: 10, 9, 2 -> 2 promoters, 1 detractor of 3 = 33.3; the browser's 6 is a detractor.
        assert breakdown("stage") == {"buy": (3, 33.3), "aware": (1, -100.0)}
        assert breakdown("persona") == {"buyers": (3, 33.3), "browsers": (1, -100.0)}
        assert breakdown("touchpoint") == {"delivery": (2, 100.0), "support": (2, -100.0)}
        assert breakdown("page") == {"/thanks/buyer": (3, 33.3), "/thanks/browser": (1, -100.0)}
        assert breakdown("channel") == {"survey": (4, 0.0)}
        # One number everywhere: the map's emotion per stage counts the same answers.
        stages = {
            st["stage"]: st["emotion"]
            for st in api.get("/v1/journeys/shop/map", params=period).json()["stages"]
        }
        assert (stages["buy"]["nps_responses"], stages["buy"]["nps"]) == (3, 33.3)
        assert (stages["aware"]["nps_responses"], stages["aware"]["nps"]) == (1, -100.0)
        assert api.get("/v1/surveys/nps-after-purchase/results", params={"by": "mood"}).status_code == 400
        api_touchpoints = api.get(
            "/v1/surveys/nps-after-purchase/results", params={**period, "by": "touchpoint"}
        ).json()["breakdown"]

    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    add_user(server.store, "anna@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    try:
        days = {"from": period["from"][:10], "to": period["to"][:10]}
        twin = dashboard.get("/surveys/nps-after-purchase.json", params={**days, "by": "touchpoint"}).json()
        assert twin["breakdown"] == api_touchpoints and twin["breakdowns"][0] == "stage"
        dashboard.cookies.set("percorso_lang", "it")
        html = dashboard.get("/surveys/nps-after-purchase", params=days).text
        assert "Fase al momento della risposta" in html
        assert 'data-group="buy" data-score="33.3"' in html and "Acquisto" in html
        bad = dashboard.get("/surveys/nps-after-purchase", params={**days, "by": "mood"})
        assert bad.status_code == 400 and "by is one of stage, persona" in bad.text
    finally:
        dashboard.close()


def test_comment_themes_in_english_and_italian(server: LiveServer) -> None:
    from percorso.feedback.themes import themes, words

    # Function words go, negations stay in phrases, Italian elisions split, a word counts once per comment.
    assert words("L'ordine non è mai arrivato") == ["ordine", "non", "è", "mai", "arrivato"]
    found = themes(
        [
            ("Pacco rotto, pacco rotto!", 2),
            ("Il pacco è arrivato rotto", 4),
            ("The parcel never arrived", 0),
            ("Parcel never arrived, again", 1),
            ("Great parcel", None),
        ]
    )
    words_found = {w["theme"]: (w["comments"], w["mean_score"]) for w in found["words"]}
    assert words_found["pacco"] == (2, 3.0) and words_found["rotto"] == (2, 3.0)
    assert words_found["parcel"] == (3, 0.5) and "the" not in words_found and "never" not in words_found
    phrases = {p["theme"]: p["comments"] for p in found["phrases"]}
    assert phrases == {"never arrived": 2}  # "parcel never" ends on a negation: not a theme

    with server.client() as api:
        assert api.put("/v1/surveys/nps-after-purchase", content=NPS).status_code == 200
    comments = [(2, "Consegna lenta e pacco rotto"), (3, "consegna lenta, di nuovo"), (10, "Prodotto ottimo")]
    comments.append((9, "prodotto ottimo, consegna veloce"))
    with server.client(server.write_key) as writer:
        for score, why in comments:
            person = visitor(writer)
            answer = {"token": person["token"], "answers": {"score": score, "why": why}}
            assert writer.post("/v1/surveys/nps-after-purchase/answers", json=answer).status_code == 201
    with server.client() as api:
        r = api.get("/v1/surveys/nps-after-purchase/comments", params={"q": "lenta"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert sorted(c["score"] for c in body["comments"]) == [2, 3]  # the search narrows the list …
        assert body["themes"]["comments_read"] == 4  # … not the themes, read from every comment
        by_theme = {p["theme"]: (p["comments"], p["mean_score"]) for p in body["themes"]["phrases"]}
        assert by_theme == {"consegna lenta": (2, 2.5), "prodotto ottimo": (2, 9.5)}
        assert {w["theme"]: w["comments"] for w in body["themes"]["words"]}["consegna"] == 3
        assert api.get("/v1/surveys/nope/comments").status_code == 404
        assert api.get("/v1/surveys/nps-after-purchase/comments", params={"limit": 0}).status_code == 400

    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    add_user(server.store, "anna@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    try:
        dashboard.cookies.set("percorso_lang", "it")
        html = dashboard.get("/surveys/nps-after-purchase").text
        assert 'data-theme="consegna lenta" data-comments="2"' in html and "Temi" in html
        twin = dashboard.get("/surveys/nps-after-purchase.json").json()
        assert twin["themes"] == body["themes"]
    finally:
        dashboard.close()


def test_a_recurring_survey_is_offered_again_after_its_period(server: LiveServer) -> None:
    monthly = CSAT.replace("key: delivery-csat", "key: monthly") + "show: {every: 30d}\n"
    weekly = CSAT.replace("key: delivery-csat", "key: weekly") + "show: {every: 7d}\n"
    once = CSAT.replace("key: delivery-csat", "key: once")
    with server.client() as api:
        for key, text in (("monthly", monthly), ("weekly", weekly), ("once", once)):
            assert api.put(f"/v1/surveys/{key}", content=text).status_code == 200
    with server.client(server.write_key) as writer:
        person = visitor(writer)

        def offered() -> set[str]:
            r = writer.get("/v1/visitors/surveys", params={"token": person["token"]})
            assert r.status_code == 200, r.text
            return {s["key"] for s in r.json()["surveys"]}

        assert offered() == {"monthly", "weekly", "once"}
        # All three answered ten days ago (as the widget records them, with the visitor's id).
        ten_days_ago = (datetime.now(UTC) - timedelta(days=10)).isoformat()
        for key in ("monthly", "weekly", "once"):
            answered = {
                "anonymousId": person["anonymousId"],
                "event": "Survey Answered",
                "timestamp": ten_days_ago,
                "properties": {"survey": key, "kind": "csat", "score": 4},
            }
            assert writer.post("/v1/track", json=answered).status_code == 200
        # A week has passed, a month has not; without `every`, never again.
        assert offered() == {"weekly"}
        shown = {
            "anonymousId": person["anonymousId"],
            "event": "Survey Shown",
            "properties": {"survey": "weekly"},
        }
        assert writer.post("/v1/track", json=shown).status_code == 200
        assert offered() == set()  # shown just now: the week starts again


def test_answers_stored_before_the_typed_copy_are_copied_by_the_migration(server: LiveServer) -> None:
    """Migration 14 copies the answers stored before it into survey_answers: the results are the
    same after the upgrade as for answers sent after it, imported answers (a score given as text,
    none at all) included; a retried answer is copied once; an erased contact's answers leave."""
    from percorso.store.contacts import erase_contact

    with server.client() as api:
        assert api.put("/v1/surveys/nps-after-purchase", content=NPS).status_code == 200
    answers = [
        {"anonymousId": f"old-{i}", "score": score}
        for i, score in enumerate([10, 9, 9, 7, 3, 0, "8", None])  # "8" and no score: responses, not scores
    ]
    with server.client(server.write_key) as writer:
        for a in answers:
            props = {"survey": "nps-after-purchase", "kind": "nps"}
            if a["score"] is not None:
                props["score"] = a["score"]
            message = {"event": "Survey Answered", "anonymousId": a["anonymousId"], "messageId": f"m-{a['anonymousId']}", "properties": props}  # fmt: skip
            assert writer.post("/v1/track", json=message).status_code == 200
            assert writer.post("/v1/track", json=message).status_code == 200  # a retry stores nothing
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(days=1)).isoformat(), "to": (now + timedelta(days=1)).isoformat()}
    with server.client() as api:
        before = api.get("/v1/surveys/nps-after-purchase/results", params=window).json()
    assert before["responses"] == 8
    assert (before["score"]["answers"], before["score"]["promoters"], before["score"]["detractors"]) == (
        6,
        3,
        2,
    )
    store = server.store
    with store.session() as s:  # as a store was before migration 14
        s.execute("DROP TABLE survey_answers")
        s.execute("DELETE FROM schema_migrations WHERE version = 14")
    store.migrate()
    with server.client() as api:
        after = api.get("/v1/surveys/nps-after-purchase/results", params=window).json()
        assert after == before
        contact = api.get("/v1/contacts/lookup", params={"anonymousId": "old-0"}).json()["id"]
    erase_contact(store, contact)
    with store.session() as s:
        assert s.rows("SELECT count(*) FROM survey_answers")[0][0] == 7
    with server.client() as api:
        erased = api.get("/v1/surveys/nps-after-purchase/results", params=window).json()
    assert (erased["responses"], erased["score"]["promoters"]) == (7, 2)


def test_a_survey_created_edited_and_paused_from_the_dashboard(server: LiveServer) -> None:
    """An editor, in Italian, starts a CSAT survey from its template on the dashboard, is told
    what is wrong (line and field) until it is right, saves it; the visitor is offered it; a
    comment-only edit keeps the version and the comment; a real edit is a new version; paused,
    it is offered to nobody and an answer already on its way is kept; resumed, offered again.
    The API sees the same survey and status; a viewer reads the document but cannot change it."""
    import html
    import re

    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    add_user(server.store, "eva@example.it", "a long enough secret", role="editor")
    add_user(server.store, "vito@example.it", "another long secret", role="viewer")
    editor = signed_in(server, ("eva@example.it", "a long enough secret"))
    viewer = signed_in(server, ("vito@example.it", "another long secret"))
    editor.cookies.set("percorso_lang", "it")

    def csrf(client: Any, path: str = "/surveys") -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
        assert found
        return found.group(1)

    def textarea(page: str) -> str:
        found = re.search(r"<textarea[^>]*>\n(.*?)</textarea>", page, re.S)
        assert found, page[:500]
        return html.unescape(found.group(1))

    try:
        listing = editor.get("/surveys").text
        assert 'id="new-survey" href="/surveys/new"' in listing and "Nuovo sondaggio" in listing
        form = editor.get("/surveys/new", params={"template": "csat"})
        assert form.status_code == 200
        template = textarea(form.text)
        assert "key: csat" in template and "kind: csat" in template
        assert "# la chiave del sondaggio" in template  # the comments in the reader's language
        assert editor.get("/surveys/new", params={"template": "poll"}).status_code == 400

        # Wrong, then wrong again, then right.
        text = template.replace("key: csat", "key: consegna").replace('pages: ["/*"]', 'pages: ["/ordine/*"]')
        broken = text.replace("kind: csat", "kind: cast")
        r = editor.post("/surveys/new", data={"definition": broken, "csrf_token": csrf(editor)})
        assert r.status_code == 422 and 'data-field="questions[0].kind"' in r.text
        line = 1 + broken.splitlines().index("    kind: cast")
        assert f'data-line="{line}"' in r.text and textarea(r.text) == broken  # the text kept as typed
        taken = text.replace("key: consegna", "key: new")
        r = editor.post("/surveys/new", data={"definition": taken, "csrf_token": csrf(editor)})
        assert r.status_code == 422 and "&#39;new&#39; is kept for" in r.text
        r = editor.post(
            "/surveys/new", data={"definition": text.replace("\n", "\r\n"), "csrf_token": csrf(editor)}
        )
        assert r.status_code == 303 and r.headers["location"] == "/surveys/consegna?created=1"
        page = editor.get("/surveys/consegna?created=1").text
        assert 'data-notice="created"' in page and textarea(page) == text
        again = editor.post("/surveys/new", data={"definition": text, "csrf_token": csrf(editor)})
        assert again.status_code == 422 and "there is already a survey &#39;consegna&#39;" in again.text

        with server.client() as api:
            stored = api.get("/v1/surveys/consegna").json()
            assert (stored["version"], stored["status"]) == (1, "active")
            assert stored["definition"]["target"]["pages"] == ["/ordine/*"]
        with server.client(server.write_key) as writer:
            person = visitor(writer)

            def offered() -> set[str]:
                return {
                    s["key"]
                    for s in writer.get("/v1/visitors/surveys", params={"token": person["token"]}).json()[
                        "surveys"
                    ]
                }

            assert offered() == {"consegna"}

            # A comment only: the same version, the comment kept; a real change: version 2.
            commented = "# chiesto dopo la consegna\n" + text
            r = editor.post(
                "/surveys/consegna/definition", data={"definition": commented, "csrf_token": csrf(editor)}
            )
            assert r.headers["location"] == "/surveys/consegna?unchanged=1#definition"
            assert textarea(viewer.get("/surveys/consegna").text) == commented
            changed = commented.replace("delay: 3", "delay: 10")
            r = editor.post(
                "/surveys/consegna/definition", data={"definition": changed, "csrf_token": csrf(editor)}
            )
            assert r.headers["location"] == "/surveys/consegna?saved=2#definition"
            other_key = changed.replace("key: consegna", "key: altro")
            r = editor.post(
                "/surveys/consegna/definition", data={"definition": other_key, "csrf_token": csrf(editor)}
            )
            assert r.status_code == 422 and 'data-field="key"' in r.text

            # Paused: offered to nobody; an answer from a survey already open is still kept.
            r = editor.post("/surveys/consegna/pause", data={"csrf_token": csrf(editor)})
            assert r.status_code == 303
            assert 'data-status="paused"' in viewer.get("/surveys/consegna").text
            assert offered() == set()
            with server.client() as api:
                assert api.get("/v1/surveys/consegna").json()["status"] == "paused"
            answered = writer.post(
                "/v1/surveys/consegna/answers", json={"token": person["token"], "answers": {"score": 2}}
            )
            assert answered.status_code == 201 and answered.json()["stored"] is True
            with server.client() as api:
                assert api.post("/v1/surveys/consegna/resume").json()["status"] == "active"
            assert offered() == set()  # answered now: once per person
            newcomer = visitor(writer)
            listed = writer.get("/v1/visitors/surveys", params={"token": newcomer["token"]}).json()["surveys"]
            assert [s["key"] for s in listed] == ["consegna"]

        # A viewer reads the document, cannot change it, nor pause it, nor create one.
        page = viewer.get("/surveys/consegna").text
        assert (
            'id="definition-form"' not in page
            and 'id="status-form"' not in page
            and "# chiesto dopo la consegna" in page
        )
        assert 'id="new-survey"' not in viewer.get("/surveys").text
        assert viewer.get("/surveys/new").status_code == 403
        token = csrf(viewer)
        assert (
            viewer.post(
                "/surveys/consegna/definition", data={"definition": text, "csrf_token": token}
            ).status_code
            == 403
        )
        assert viewer.post("/surveys/consegna/pause", data={"csrf_token": token}).status_code == 403
        assert editor.post("/surveys/nessuno/pause", data={"csrf_token": csrf(editor)}).status_code == 404
    finally:
        editor.close()
        viewer.close()
