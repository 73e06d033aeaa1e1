"""The counting unit of a funnel (contacts, visits, attempts), on both engines, through the
function, the API, the dashboard and the CLI: the same numbers everywhere."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from percorso.analytics.funnel import (
    FunnelError,
    FunnelSpec,
    dropped_contacts,
    dropped_count,
    funnel,
    parse_step,
)
from percorso.channels import ChannelClassifier, load_rules
from percorso.cli import app
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store
from percorso.store.contacts import find_contact
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import signed_in

T = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
AS_OF = T + 30 * DAY  # every window closed


def scenario() -> list[dict[str, Any]]:
    """V = Product Viewed, C = Checkout Started, O = Order Completed; a visit ends after 30
    minutes without any event."""
    msgs: list[dict[str, Any]] = []

    def add(who: dict[str, str], kind: str, at: datetime, **fields: Any) -> None:
        msgs.append(
            {"type": kind, "messageId": f"u-{len(msgs)}", "timestamp": at.isoformat(), **who, **fields}
        )

    def track(user: str, event: str, at: datetime, channel: str = "web") -> None:
        add({"userId": user}, "track", at, event=event, context={"channel": channel})

    # P: a first visit with two views and nothing else; a day later, from an e-mail, buys.
    track("p", "Product Viewed", T)
    track("p", "Product Viewed", T + 5 * MINUTE)
    track("p", "Product Viewed", T + DAY, channel="email")
    track("p", "Checkout Started", T + DAY + 10 * MINUTE)
    track("p", "Order Completed", T + DAY + 20 * MINUTE)
    # Q: 45 minutes from checkout to order, but a page view between keeps it one visit.
    track("q", "Product Viewed", T + 2 * DAY)
    track("q", "Checkout Started", T + 2 * DAY + 5 * MINUTE)
    add({"userId": "q"}, "page", T + 2 * DAY + 25 * MINUTE, context={"page": {"path": "/cart"}})
    track("q", "Order Completed", T + 2 * DAY + 50 * MINUTE)
    # R: checks out, and orders two hours later: in another visit.
    track("r", "Product Viewed", T + 3 * DAY)
    track("r", "Checkout Started", T + 3 * DAY + 5 * MINUTE)
    track("r", "Order Completed", T + 3 * DAY + 2 * HOUR)
    # S: views anonymously, signs in, buys: one contact, one visit.
    add({"anonymousId": "anon-s"}, "track", T + 4 * DAY, event="Product Viewed", context={"channel": "web"})
    add(
        {"anonymousId": "anon-s", "userId": "s"},
        "identify",
        T + 4 * DAY + 2 * MINUTE,
        traits={"email": "s@example.it"},
    )
    track("s", "Checkout Started", T + 4 * DAY + 5 * MINUTE)
    track("s", "Order Completed", T + 4 * DAY + 8 * MINUTE)
    return msgs


@pytest.fixture
def shop(store: Store) -> Store:
    report = load_messages(
        store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    return store


def spec(**overrides: Any) -> FunnelSpec:
    base: dict[str, Any] = {
        "steps": [parse_step(s) for s in ("Product Viewed", "Checkout Started", "Order Completed")],
        "start": T - DAY,
        "end": T + 10 * DAY,
        "window_seconds": 7 * 86_400,
        "as_of": AS_OF,
    }
    return FunnelSpec(**{**base, **overrides})


def counts(result: dict[str, Any]) -> list[int]:
    return [s["contacts"] for s in result["total"]["steps"]]


# Worked by hand from the scenario:
# contacts  P Q R S enter; all four check out and order within 7 days          [4, 4, 4]
# sessions  P twice (T, T+1d), Q, R, S; R's order is in a later visit          [5, 4, 3]
# attempts  P three times (each view until the next), Q, R, S                  [6, 4, 4]
EXPECTED = {"contacts": [4, 4, 4], "sessions": [5, 4, 3], "attempts": [6, 4, 4]}


@pytest.mark.parametrize("order", ["ordered", "strict", "any"])
@pytest.mark.parametrize("unit", ["contacts", "sessions", "attempts"])
def test_each_unit_counts_what_it_says(shop: Store, unit: str, order: str):
    result = funnel(shop, spec(unit=unit, order=order))
    assert counts(result) == EXPECTED[unit]
    assert result["unit"] == unit
    assert result["total"]["people"] == 4  # the same four people, whatever is counted
    steps = result["total"]["steps"]
    assert all(s["in_progress"] == 0 for s in steps[:-1])
    assert [s["dropped"] for s in steps[:-1]] == [
        a - b for a, b in zip(EXPECTED[unit], EXPECTED[unit][1:], strict=False)
    ]
    assert sum(t["entered"] for t in result["trend"]) == EXPECTED[unit][0]


def test_a_shorter_session_gap_cuts_more_visits(shop: Store):
    # With a 20-minute gap Q's page view (20 min after checkout) is still in the visit, and the
    # order 25 minutes after the page view is not.
    assert counts(funnel(shop, spec(unit="sessions", session_gap=20 * 60))) == [5, 4, 2]


def test_dropped_lists_name_each_contact_once(shop: Store):
    p, r = find_contact(shop, "user_id", "p"), find_contact(shop, "user_id", "r")
    visits = spec(unit="sessions")
    assert [c["contact_id"] for c in dropped_contacts(shop, visits, 1)] == [p]
    assert [c["contact_id"] for c in dropped_contacts(shop, visits, 2)] == [r]
    attempts = spec(unit="attempts")
    assert funnel(shop, attempts)["total"]["steps"][0]["dropped"] == 2  # P's first two views
    assert [c["contact_id"] for c in dropped_contacts(shop, attempts, 1)] == [p]
    assert dropped_count(shop, attempts, 1) == 1
    first = dropped_contacts(shop, attempts, 1)[0]
    assert first["reached_at_epoch"] == T.timestamp()  # at the first attempt it dropped


def test_breakdown_by_the_entry_of_each_visit(shop: Store):
    result = funnel(shop, spec(unit="sessions", breakdown="channel"))
    groups = {g["group"]: [s["contacts"] for s in g["steps"]] for g in result["breakdown"]["groups"]}
    assert groups == {"email": [1, 1, 1], "web": [4, 3, 2]}
    # P is in both groups, and the total counts P once
    assert {g["group"]: g["people"] for g in result["breakdown"]["groups"]} == {"email": 1, "web": 4}
    assert result["total"]["people"] == 4
    assert counts(result) == EXPECTED["sessions"]


def test_a_unknown_unit_is_refused_naming_the_field(shop: Store):
    with pytest.raises(FunnelError) as raised:
        funnel(shop, spec(unit="visitors"))
    assert raised.value.field == "unit"
    with pytest.raises(FunnelError) as raised:
        funnel(shop, spec(unit="sessions", session_gap=0))
    assert raised.value.field == "session_gap"


def test_the_api_the_page_and_the_cli_show_the_same_visits(server: LiveServer, tmp_path):
    report = load_messages(
        server.store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    api = server.client()
    body = {
        "steps": ["Product Viewed", "Checkout Started", "Order Completed"],
        "from": (T - DAY).isoformat(),
        "to": (T + 10 * DAY).isoformat(),
        "window": "7d",
    }
    for unit, expected in EXPECTED.items():
        r = api.post("/v1/funnels", json={**body, "unit": unit})
        assert r.status_code == 200, r.text
        assert [s["contacts"] for s in r.json()["total"]["steps"]] == expected
        assert r.json()["unit"] == unit
    r = api.post("/v1/funnels", json={**body, "unit": "visitors"})
    assert r.status_code == 400 and "unit" in r.text
    r = api.post("/v1/funnels", json={**body, "unit": "sessions", "session_gap": "20m"})
    assert [s["contacts"] for s in r.json()["total"]["steps"]] == [5, 4, 2]

    add_user(server.store, "u@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("u@example.it", "a long enough secret"))
    query = "step=Product+Viewed&step=Checkout+Started&step=Order+Completed&window=7d&from=2026-05-31&to=2026-06-10"
    page = dashboard.get(f"/funnels?{query}&unit=sessions")
    assert page.status_code == 200
    assert 'data-metric="entered">5<' in page.text and 'data-metric="people">4<' in page.text
    assert 'data-unit="sessions">Visits<' in page.text
    twin = dashboard.get(f"/funnels.json?{query}&unit=sessions").json()
    assert [s["contacts"] for s in twin["result"]["total"]["steps"]] == EXPECTED["sessions"]
    dashboard.cookies.set("percorso_lang", "it")
    italian = dashboard.get(f"/funnels?{query}&unit=attempts")
    dashboard.cookies.delete("percorso_lang")
    assert (
        'data-unit="attempts">Tentativi<' in italian.text
        and "Ogni evento del passo 1 apre un tentativo" in italian.text
    )
    bad = dashboard.get(f"/funnels?{query}&unit=visitors")
    assert bad.status_code == 400 and "unit" in bad.text


def test_cli_counts_visits(tmp_path):
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    load_messages(store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits())
    store.close()
    runner = CliRunner()
    args = ["funnel", "-s", "Product Viewed", "-s", "Checkout Started", "-s", "Order Completed"]
    args += ["--from", "2026-05-31", "--to", "2026-06-10", "--window", "7d", "--data-dir", str(tmp_path)]
    for unit, expected in EXPECTED.items():
        result = runner.invoke(app, [*args, "--unit", unit, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert [s["contacts"] for s in json.loads(result.output)["total"]["steps"]] == expected
    table = runner.invoke(app, [*args, "--unit", "sessions"])
    assert table.exit_code == 0 and "sessions" in table.output and "visits (" in table.output
    bad = runner.invoke(app, [*args, "--unit", "visitors"])
    assert bad.exit_code == 2 and "unit" in bad.output and "Traceback" not in bad.output
