"""Attribution on both engines, every model checked against numbers worked out by hand here."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from percorso.analytics.attribution import (
    CONVERSION,
    NULL,
    START,
    AttributionError,
    AttributionSpec,
    Path,
    attribution,
    coalition_worth,
    conversion_probability,
    shapley,
)
from percorso.analytics.funnel import parse_step
from percorso.channels import ChannelClassifier, load_rules
from percorso.cli import app
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import signed_in

T = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
DAY, MINUTE = timedelta(days=1), timedelta(minutes=1)


def shop() -> list[dict[str, Any]]:
    """Visits days apart, each opened by one event whose channel is the touch:

    A  email (day 1, anonymous), search (day 3, signed in): orders 5 minutes into the search visit, 100
    B  search (day 2): orders in it, 50
    C  email (day 1), social (day 2): no order
    D  social (day 4): orders in it, 30
    E  search (day 5): no order
    """
    msgs: list[dict[str, Any]] = []

    def add(
        who: dict[str, str], at: datetime, channel: str, event: str = "Page Viewed", **props: Any
    ) -> None:
        msgs.append(
            {
                "type": "track",
                "messageId": f"a-{len(msgs)}",
                "event": event,
                "timestamp": at.isoformat(),
                "context": {"channel": channel},
                "properties": props,
                **who,
            }
        )

    add({"anonymousId": "anon-a"}, T + DAY, "email")
    msgs.append(
        {
            "type": "identify",
            "messageId": "a-identify",
            "anonymousId": "anon-a",
            "userId": "a",
            "timestamp": (T + DAY + MINUTE).isoformat(),
        }
    )
    add({"userId": "a"}, T + 3 * DAY, "search")
    add({"userId": "a"}, T + 3 * DAY + 5 * MINUTE, "web", "Order Completed", revenue=100)
    add({"userId": "b"}, T + 2 * DAY, "search")
    add({"userId": "b"}, T + 2 * DAY + 5 * MINUTE, "web", "Order Completed", revenue=50)
    add({"userId": "c"}, T + DAY, "email")
    add({"userId": "c"}, T + 2 * DAY, "social")
    add({"userId": "d"}, T + 4 * DAY, "social")
    add({"userId": "d"}, T + 4 * DAY + 5 * MINUTE, "web", "Order Completed", revenue=30)
    add({"userId": "e"}, T + 5 * DAY, "search")
    return msgs


@pytest.fixture
def loaded(store: Store) -> Store:
    report = load_messages(
        store, enumerate(shop()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    return store


def spec(**overrides: Any) -> AttributionSpec:
    base: dict[str, Any] = {
        "conversion": parse_step("Order Completed").condition,
        "start": T,
        "end": T + 10 * DAY,
    }
    return AttributionSpec(**{**base, **overrides})


def credit(result: dict[str, Any], model: str, of: str = "conversions") -> dict[str, float]:
    return {row["value"]: row[of][model] for row in result["values"]}


def test_every_model_against_the_hand_worked_shop(loaded: Store):
    result = attribution(loaded, spec())
    assert result["conversions"] == 3 and result["revenue"] == 180.0
    assert result["paths_not_converting"] == 2  # C's email → social, E's search
    assert result["touches_per_conversion"] == pytest.approx(4 / 3, abs=0.01)
    assert credit(result, "first_touch") == {"search": 1.0, "email": 1.0, "social": 1.0}
    assert credit(result, "last_touch") == {"search": 2.0, "email": 0.0, "social": 1.0}
    assert credit(result, "linear") == {"search": 1.5, "email": 0.5, "social": 1.0}
    assert credit(result, "position_based") == {"search": 1.5, "email": 0.5, "social": 1.0}
    # time decay, half-life 7 days: A's email is 2 days and 5 minutes old at the order, its
    # search visit 5 minutes
    old, new = 2.0 ** (-(2 * 86_400 + 300) / (7 * 86_400)), 2.0 ** (-300 / (7 * 86_400))
    decay = credit(result, "time_decay")
    assert decay["email"] == pytest.approx(old / (old + new), abs=1e-4)
    assert decay["search"] == pytest.approx(1 + new / (old + new), abs=1e-4)
    # Markov, worked by hand. Transitions, converting and not:
    #   start → email 2, search 2, social 1; email → search 1, social 1;
    #   search → conversion 2, null 1; social → conversion 1, null 1.
    # P(conversion) from search 2/3, social 1/2, email 1/2·2/3 + 1/2·1/2 = 7/12,
    # start 2/5·7/12 + 2/5·2/3 + 1/5·1/2 = 36/60.
    # Without email: 2/5·2/3 + 1/5·1/2 = 22/60, removal effect 1 - 22/36 = 7/18;
    # without search: email 1/4, start 2/5·1/4 + 1/5·1/2 = 12/60, effect 2/3;
    # without social: email 1/3, start 2/5·1/3 + 2/5·2/3 = 24/60, effect 1/3.
    # Shares of 3 conversions: 7/25, 12/25 and 6/25 of 3.
    effects = {row["value"]: row["removal_effect"] for row in result["values"]}
    assert effects == {"email": round(7 / 18, 4), "search": round(2 / 3, 4), "social": round(1 / 3, 4)}
    assert credit(result, "markov") == {"email": 0.84, "search": 1.44, "social": 0.72}
    assert credit(result, "markov", "revenue") == {"email": 50.4, "search": 86.4, "social": 43.2}
    # Shapley: coalitions worth the orders whose channels all belong to them
    # ({email, search}: 1, {search}: 1, {social}: 1):
    # email  1/2 (v({e,s}) - v({s})) + 1/2 (v({e,s,so}) - v({s,so})) ... = 1/2;
    # search 1 (alone) + 1/2 (with email) = 3/2; social 1.
    assert credit(result, "shapley") == {"email": 0.5, "search": 1.5, "social": 1.0}
    assert credit(result, "shapley", "revenue") == {"email": 50.0, "search": 100.0, "social": 30.0}
    for model in result["models"]:  # every model hands out every conversion, no more
        assert sum(credit(result, model).values()) == pytest.approx(3, abs=1e-3)


def test_markov_and_shapley_worked_apart():
    # A chain with one channel that always converts and one that never does.
    transitions = {(START, "a"): 1.0, (START, "b"): 1.0, ("a", CONVERSION): 1.0, ("b", NULL): 1.0}
    assert conversion_probability(transitions) == pytest.approx(0.5)
    assert conversion_probability(transitions, removed="a") == 0.0
    # Shapley of the glove game: a left glove (L) and two right ones (R1, R2); a pair is worth 1.
    worth = {frozenset(): 0.0}
    players = ["L", "R1", "R2"]

    def v(s: frozenset[str]) -> float:
        return 1.0 if "L" in s and ({"R1", "R2"} & s) else 0.0

    values = shapley(players, v)
    assert values == pytest.approx({"L": 2 / 3, "R1": 1 / 6, "R2": 1 / 6})
    assert worth  # the empty coalition is worth nothing
    paths = [Path(((0.0, "x"),)), Path(((1.0, "x"), (0.0, "y")))]
    game = coalition_worth(paths)
    assert (game(frozenset({"x"})), game(frozenset({"y"})), game(frozenset({"x", "y"}))) == (1.0, 0.0, 2.0)


def test_a_second_order_starts_a_new_path(store: Store):
    """F finds the shop by search and orders; a day later comes back from an e-mail and orders
    again: the second order's path is the e-mail visit only; G orders twice in one visit: the
    second order keeps that visit."""
    msgs: list[dict[str, Any]] = []
    for n, (who, at, channel, event) in enumerate(
        [
            ("f", T, "search", "Page Viewed"),
            ("f", T + MINUTE, "web", "Order Completed"),
            ("f", T + DAY, "email", "Page Viewed"),
            ("f", T + DAY + MINUTE, "web", "Order Completed"),
            ("g", T, "social", "Page Viewed"),
            ("g", T + MINUTE, "web", "Order Completed"),
            ("g", T + 2 * MINUTE, "web", "Order Completed"),
        ]
    ):
        msgs.append(
            {
                "type": "track",
                "messageId": f"f-{n}",
                "userId": who,
                "event": event,
                "timestamp": at.isoformat(),
                "context": {"channel": channel},
            }
        )
    load_messages(store, enumerate(msgs), classifier=ChannelClassifier(load_rules()), limits=Limits())
    result = attribution(store, spec(start=T - DAY))
    assert result["conversions"] == 4
    assert credit(result, "first_touch") == {"search": 1.0, "email": 1.0, "social": 2.0}
    assert result["revenue"] is None and result["values"][0]["revenue"] is None


def test_by_campaign_and_bad_specs(loaded: Store):
    result = attribution(loaded, spec(by="campaign"))
    assert [row["value"] for row in result["values"]] == ["(none)"]
    assert credit(result, "linear") == {"(none)": 3.0}
    with pytest.raises(AttributionError) as raised:
        attribution(loaded, spec(by="colour"))
    assert raised.value.field == "by"
    with pytest.raises(AttributionError) as raised:
        attribution(loaded, spec(lookback_seconds=0))
    assert raised.value.field == "lookback"
    # a lookback of one day leaves A's e-mail visit (two days before the order) out
    short = attribution(loaded, spec(lookback_seconds=86_400))
    assert credit(short, "first_touch") == {"search": 2.0, "email": 0.0, "social": 1.0}


def test_the_api_and_the_page_give_the_same_credit(server: LiveServer) -> None:
    report = load_messages(
        server.store, enumerate(shop()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    query = {"from": T.isoformat(), "to": (T + 10 * DAY).isoformat(), "conversion": "Order Completed"}
    r = server.client().get("/v1/attribution", params=query)
    assert r.status_code == 200, r.text
    api = r.json()
    assert api["conversion"] == "Order Completed" and api["conversions"] == 3
    assert credit(api, "markov") == {"email": 0.84, "search": 1.44, "social": 0.72}
    for bad, field in (
        ({"by": "colour"}, "by"),
        ({"lookback": "forever"}, "lookback"),
        ({"conversion": ""}, "conversion"),
    ):
        r = server.client().get("/v1/attribution", params={**query, **bad})
        assert r.status_code in (400, 422) and field in r.text, (bad, r.text)
    r = server.client().get(
        "/v1/attribution", params={**query, "from": "0001-01-02T00:00:00Z", "lookback": "9999w"}
    )
    assert r.status_code == 400 and "lookback" in r.text
    add_user(server.store, "u@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("u@example.it", "a long enough secret"))
    page = dashboard.get(
        "/attribution", params={"from": "2026-06-01", "to": "2026-06-10", "measure": "revenue"}
    )
    assert page.status_code == 200
    assert 'data-metric="conversions">3<' in page.text
    twin = dashboard.get("/attribution.json", params={"from": "2026-06-01", "to": "2026-06-10"}).json()
    assert twin["result"]["values"] == api["values"]
    bad = dashboard.get("/attribution", params={"by": "colour"})
    assert bad.status_code == 400 and "by" in bad.text


def test_cli_attribution(tmp_path):
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    load_messages(store, enumerate(shop()), classifier=ChannelClassifier(load_rules()), limits=Limits())
    store.close()
    runner = CliRunner()
    args = ["attribution", "--from", "2026-06-01", "--to", "2026-06-10", "--data-dir", str(tmp_path)]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert credit(json.loads(result.output), "shapley") == {"email": 0.5, "search": 1.5, "social": 1.0}
    table = runner.invoke(app, [*args, "--revenue"])
    assert table.exit_code == 0 and "markov" in table.output and "86.4" in table.output
    bad = runner.invoke(app, [*args, "--by", "colour"])
    assert bad.exit_code == 2 and "by" in bad.output and "Traceback" not in bad.output


def test_the_page_follows_the_maps_people_filters(server: LiveServer) -> None:
    """channel=email keeps the people who came by e-mail (A and C): A's order is the only one,
    credited over A's own path; a saved segment that does not exist is refused by name."""
    from percorso.analytics.stages import save_journey
    from percorso.journey import load_journey, template_text

    load_messages(
        server.store, enumerate(shop()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    save_journey(server.store, load_journey(template_text("five-stages")), "test")
    add_user(server.store, "u@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("u@example.it", "a long enough secret"))
    period = {"from": "2026-06-01", "to": "2026-06-10"}
    result = dashboard.get("/attribution.json", params={**period, "channel": "email"}).json()["result"]
    assert result["conversions"] == 1 and result["paths_not_converting"] == 1  # C's e-mail → social
    assert credit(result, "linear") == {"email": 0.5, "search": 0.5, "social": 0.0}
    assert dashboard.get("/attribution.json", params=period).json()["result"]["conversions"] == 3
    missing = dashboard.get("/attribution", params={**period, "segment": "nobody-saved-this"})
    assert missing.status_code == 400 and "nobody-saved-this" in missing.text
