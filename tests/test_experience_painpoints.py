"""Pain points from what customers say and do on the site, on both stores: a stage whose NPS fell
against the period before, and an element whose clicks are mostly rage and dead clicks, found with
their evidence, placed in the stage they happened in on the journey map, and silent where nothing
changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from percorso.analytics.journeymap import journey_map
from percorso.analytics.painpoints import Settings, find_pain_points
from percorso.analytics.stages import save_journey, update
from percorso.journey.definition import load_journey
from percorso.store import Store
from tests.test_stages import Feed

JOURNEY = """\
version: 1
key: shop
name: Shop
stages:
  - key: aware
    name: {en: Aware, it: Scoperta}
    enter: {any: [{type: page}]}
  - key: buy
    name: {en: Buy, it: Acquisto}
    enter: {any: [{event: Order Completed}]}
"""

START = datetime(2026, 10, 1, tzinfo=UTC)
END = START + timedelta(days=14)
BEFORE = START - timedelta(days=14)


def answer(feed: Feed, who: dict[str, str], at: datetime, score: int) -> dict[str, Any]:
    return feed.msg(
        who, at, "Survey Answered", properties={"survey": "nps-site", "kind": "nps", "score": score}
    )


def click(
    feed: Feed, who: dict[str, str], at: datetime, selector: str, *, rage: bool = False, dead: bool = False
):
    return feed.msg(
        who,
        at,
        "Heatmap Click",
        properties={
            "selector": selector,
            "x": 10,
            "y": 10,
            "width": 1280,
            "rage": rage,
            "dead": dead,
            "band": "desktop",
        },
        context={"page": {"path": "/checkout" if selector == "#pay" else "/"}},
    )


def feed_shop(store: Store) -> None:
    feed = Feed(store)
    messages = []
    # Buyers answer in the stage "buy": 80 before (60 promoters, 10 passives, 10 detractors, NPS
    # 62.5), 80 now (20, 20, 40: NPS -25). Browsers answer in "aware" the same way both times.
    for period, scores in (
        (BEFORE, [10] * 60 + [8] * 10 + [3] * 10),
        (START, [9] * 20 + [7] * 20 + [2] * 40),
    ):
        for n, score in enumerate(scores):
            who = {"userId": f"buyer-{period.day}-{n}"}
            at = period + timedelta(hours=n)
            messages += [feed.msg(who, at), feed.msg(who, at + timedelta(minutes=1), "Order Completed")]
            messages.append(answer(feed, who, at + timedelta(minutes=5), score))
        for n, score in enumerate([10] * 40 + [8] * 20 + [5] * 20):
            who = {"userId": f"browser-{period.day}-{n}"}
            at = period + timedelta(hours=n, minutes=30)
            messages += [feed.msg(who, at), answer(feed, who, at + timedelta(minutes=5), score)]
    # Now: 40 buyers hammer a dead "Pay" button (3 rage clicks each, 1 ordinary); 60 browsers
    # click the menu 4 times each, a rare rage click among them.
    for n in range(40):
        who = {"userId": f"buyer-{START.day}-{n}"}
        at = START + timedelta(hours=n, minutes=10)
        messages += [
            click(feed, who, at + timedelta(seconds=k), "#pay", rage=True, dead=True) for k in range(3)
        ]
        messages.append(click(feed, who, at + timedelta(seconds=9), "#pay"))
    for n in range(60):
        who = {"userId": f"browser-{START.day}-{n}"}
        at = START + timedelta(hours=n, minutes=40)
        messages += [
            click(feed, who, at + timedelta(seconds=k), "#menu", rage=(n == 0 and k == 0)) for k in range(4)
        ]
    feed.send(*messages)


def test_score_drops_and_frustrated_clicks_are_found_and_placed(store: Store) -> None:
    journey = load_journey(JOURNEY)
    save_journey(store, journey, "test")
    feed_shop(store)
    update(store, journey)

    result = find_pain_points(store, journey, start=START, end=END, as_of=END, lang="it")
    kinds = {(p["kind"], p["step"]): p for p in result["pain_points"]}
    assert set(kinds) == {("score_drop", "Acquisto"), ("frustration", "#pay")}, list(kinds)

    drop = kinds["score_drop", "Acquisto"]
    assert drop["stage"] == "buy" and drop["funnel_name"] == "NPS"
    assert drop["evidence"] == {"nps_now": -25.0, "nps_before": 62.5, "answers_now": 80, "answers_before": 80}
    # var before = 0.875 - 0.390625 = 0.484375; now = 0.75 - 0.0625 = 0.6875;
    # z = 0.875 / sqrt((0.484375 + 0.6875) / 80) = 7.23
    assert drop["z"] == 7.23 and drop["p_value"] < 1e-9
    assert drop["contacts_affected"] == 70  # 80 answers x 0.875
    # each language names the stage in its own words
    assert drop["summaries"]["en"] == "NPS in Buy fell to -25 from 62 in the period before"
    assert drop["summary"] == "L'NPS in «Acquisto» è sceso a -25 da 62 nel periodo precedente"
    assert drop["link"].startswith("/surveys?from=")

    spot = kinds["frustration", "#pay"]
    assert (spot["funnel_name"], spot["stage"], spot["contacts_affected"]) == ("/checkout", "buy", 40)
    assert spot["evidence"] == {
        "clicks": 160,
        "rage_clicks": 120,
        "dead_clicks": 120,
        "frustrated_share": 0.75,
        "site_share": round(1 / 240, 4),
    }
    assert (
        spot["summaries"]["en"]
        == "75% of clicks on #pay (/checkout) are rage or dead clicks (rest of the site: 0%)"
    )
    assert spot["link"].startswith("/heatmaps?page=/checkout&from=")

    # The map shows both in the stage they happened in, with the same numbers.
    stages = {s["stage"]: s for s in journey_map(store, journey, start=START, end=END)["stages"]}
    assert [p["kind"] for p in stages["buy"]["pain_points"]] == ["score_drop", "frustration"]
    assert stages["aware"]["pain_points"] == []
    assert stages["buy"]["emotion"]["nps"] == -25.0 and stages["buy"]["emotion"]["nps_responses"] == 80


def test_thresholds_hold_for_the_new_detectors(store: Store) -> None:
    journey = load_journey(JOURNEY)
    save_journey(store, journey, "test")
    feed_shop(store)
    update(store, journey)
    # 40 frustrated people are too few when 50 are asked for; the NPS drop of 87.5 points is below
    # an asked effect of 0.9 (on the -1..+1 scale); and the period before it holds no answers.
    strict = Settings(min_contacts=50, min_effect=0.9)
    assert (
        find_pain_points(store, journey, start=START, end=END, as_of=END, settings=strict)["pain_points"]
        == []
    )
    earlier = find_pain_points(store, journey, start=BEFORE, end=START, as_of=START)["pain_points"]
    assert earlier == []


def test_the_map_page_shows_them_with_links_to_the_evidence(server) -> None:
    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    journey = load_journey(JOURNEY)
    save_journey(server.store, journey, "test")
    feed_shop(server.store)
    update(server.store, journey)
    add_user(server.store, "anna@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    try:
        dashboard.cookies.set("percorso_lang", "it")
        period = {"journey": "shop", "from": "2026-10-01", "to": "2026-10-14"}
        html = dashboard.get("/map", params=period).text
        assert 'data-pain="score_drop"' in html and "Calo del voto" in html
        assert 'data-pain="frustration"' in html and "Clic frustrati" in html
        assert '<a href="/heatmaps?page=/checkout&amp;from=' in html and "Vedi la heatmap" in html
        twin = dashboard.get("/map.json", params=period).json()
        buy = next(s for s in twin["map"]["stages"] if s["stage"] == "buy")
        assert {p["kind"] for p in buy["pain_points"]} == {"score_drop", "frustration"}
        heat = dashboard.get(
            "/heatmaps.json", params={"page": "/checkout", "from": "2026-10-01", "to": "2026-10-14"}
        )
        assert heat.json()["result"]["rage_clicks"] == 120
    finally:
        dashboard.close()


def test_the_emotion_lane_quotes_what_customers_said_in_each_stage(server) -> None:
    """Each stage's quotes are the newest comment of an unhappy, a neutral and a happy answer
    given while in that stage (as the curve counts them), long ones cut; a comment without a
    score, or only blanks, is not a quote. The page shows them under the curve, dated in Italian."""
    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    store = server.store
    journey = load_journey(JOURNEY)
    save_journey(store, journey, "test")
    feed = Feed(store)

    def said(who: str, at: datetime, score: int | None, comment: str, *, buys: bool) -> list[dict[str, Any]]:
        person = {"userId": who}
        out = [feed.msg(person, at)]
        if buys:
            out.append(feed.msg(person, at + timedelta(minutes=1), "Order Completed"))
        properties: dict[str, Any] = {"survey": "nps-site", "kind": "nps", "comment": comment}
        if score is not None:
            properties["score"] = score
        out.append(feed.msg(person, at + timedelta(minutes=5), "Survey Answered", properties=properties))
        return out

    day = timedelta(days=1)
    feed.send(
        *said("b1", START, 2, "Older complaint", buys=True),
        *said("b2", START + day, 3, "The parcel came a week late  and nobody told me", buys=True),
        *said("b3", START + 2 * day, 7, "Fine, a bit slow", buys=True),
        *said("b4", START + 3 * day, 10, "Lovely " + "lamp " * 80, buys=True),
        *said("b5", START + 4 * day, None, "No score given", buys=True),
        *said("b6", START + 5 * day, 9, "   ", buys=True),
        *said("a1", START + day, 4, "Could not find the sizes", buys=False),
    )
    update(store, journey)
    stages = {s["stage"]: s for s in journey_map(store, journey, start=START, end=END)["stages"]}
    buy = stages["buy"]["emotion"]["quotes"]
    assert [(q["tone"], q["metric"], q["score"]) for q in buy] == [
        ("low", "NPS", 3),
        ("mid", "NPS", 7),
        ("high", "NPS", 10),
    ]
    assert buy[0]["text"] == "The parcel came a week late and nobody told me"
    assert len(buy[2]["text"]) == 280 and buy[2]["text"].endswith("…")
    assert [q["text"] for q in stages["aware"]["emotion"]["quotes"]] == ["Could not find the sizes"]

    add_user(store, "anna@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    try:
        dashboard.cookies.set("percorso_lang", "it")
        html = dashboard.get(
            "/map", params={"journey": "shop", "from": "2026-10-01", "to": "2026-10-14"}
        ).text
        assert 'data-quote="low"' in html and "“The parcel came a week late and nobody told me”" in html
        assert "NPS 3 · 2 ott 2026" in html and "Cosa hanno detto i clienti in ogni fase" in html
    finally:
        dashboard.close()
