"""Retention cohorts on both engines: first seen and first purchase, identity resolution, calendar
periods, periods not begun yet, the CLI and the REST endpoint."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from percorso.analytics.funnel import parse_step
from percorso.analytics.retention import RetentionError, RetentionSpec, bucket, period_start, retention
from percorso.channels import ChannelClassifier, load_rules
from percorso.cli import app
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store

T = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
MONDAY = datetime(2026, 6, 1, tzinfo=UTC)
AS_OF = T + 16 * DAY  # in week 2
ORDER = parse_step("Order Completed")


def scenario() -> list[dict[str, Any]]:
    n = [0]

    def event(who: dict[str, str], kind: str, at: datetime, **extra: Any) -> dict[str, Any]:
        n[0] += 1
        return {"type": kind, "messageId": f"r-{n[0]}", "timestamp": at.isoformat(), **who, **extra}

    def track(user: str, name: str, at: datetime, **extra: Any) -> dict[str, Any]:
        return event({"userId": user}, "track", at, event=name, **extra)

    def page(user: str, at: datetime) -> dict[str, Any]:
        return event({"userId": user}, "page", at)

    automation = {"context": {"library": {"name": "percorso-automation"}, "channel": "email"}}
    return [
        # a: first seen anonymously in week 0, identifies the next day (that call is a return too),
        # buys in week 1, browses in week 2 — one contact throughout.
        event({"anonymousId": "anon-a"}, "page", T),
        event({"anonymousId": "anon-a", "userId": "a"}, "identify", T + DAY),
        track("a", "Order Completed", T + 8 * DAY),
        track("a", "Product Viewed", T + 15 * DAY),
        # b: week 0, buys the same week and again in week 3 (after as_of: not begun for the report).
        page("b", T + 2 * DAY),
        track("b", "Order Completed", T + 2 * DAY + timedelta(hours=1)),
        track("b", "Order Completed", T + 22 * DAY),
        # c: week 1, buys that week, browses in week 2.
        page("c", T + 9 * DAY),
        track("c", "Order Completed", T + 10 * DAY),
        page("c", T + 16 * DAY),
        # d: first seen the week before the range; first purchase in week 0, another in week 2.
        page("d", T - 7 * DAY),
        track("d", "Order Completed", T + 3 * DAY),
        track("d", "Order Completed", T + 17 * DAY),
        # e: seen once.
        page("e", T + DAY),
        # f: percorso e-mails them in week 1 (not a return); they come back in week 3.
        page("f", T + 3 * DAY),
        track("f", "Email Sent", T + 9 * DAY, **automation),
        page("f", T + 25 * DAY),
    ]


@pytest.fixture
def loaded(store: Store) -> Store:
    report = load_messages(
        store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    return store


def spec(**overrides: Any) -> RetentionSpec:
    base: dict[str, Any] = {
        "start": MONDAY,
        "end": MONDAY + 14 * DAY,
        "period": "week",
        "periods": 3,
        "as_of": AS_OF,
    }
    return RetentionSpec(**{**base, **overrides})


def test_first_seen_weekly(loaded: Store):
    result = retention(loaded, spec())
    cohorts = {c["cohort"]: (c["contacts"], c["returned"]) for c in result["cohorts"]}
    # week 0: a b e f (d was first seen before). a returns in weeks 0, 1, 2; b in week 0 (week 3
    # has not begun); f's e-mail is percorso's doing. Week 1: c, back in week 1 and week 2.
    assert cohorts == {
        "2026-06-01": (4, [2, 1, 1, None]),
        "2026-06-08": (1, [1, 1, None, None]),
    }
    assert result["cohorts"][0]["retention"] == [0.5, 0.25, 0.25, None]
    average = [(a["contacts"], a["returned"], a["retention"]) for a in result["average"]]
    assert average == [(5, 3, 0.6), (5, 2, 0.4), (4, 1, 0.25), (0, 0, None)]


def test_first_purchase_cohorts(loaded: Store):
    result = retention(loaded, spec(start_event=ORDER, return_event=ORDER))
    cohorts = {c["cohort"]: (c["contacts"], c["returned"]) for c in result["cohorts"]}
    # first orders: b and d in week 0 (d was first seen earlier: first purchase is what counts),
    # a and c in week 1. Only d orders again before as_of (week 2).
    assert cohorts == {
        "2026-06-01": (2, [0, 0, 1, None]),
        "2026-06-08": (2, [0, 0, None, None]),
    }
    assert result["start_event"] == result["return_event"] == "Order Completed"


def test_months_and_days(loaded: Store):
    months = retention(loaded, spec(period="month", periods=1, end=MONDAY + 5 * DAY, as_of=T + 60 * DAY))
    # June: a b c e f (d is May's); back in June: a b c f; nobody in July.
    assert [(c["cohort"], c["contacts"], c["returned"]) for c in months["cohorts"]] == [
        ("2026-06-01", 5, [4, 0])
    ]
    days = retention(loaded, spec(period="day", periods=2, end=MONDAY + 2 * DAY, as_of=AS_OF))
    # June 1: a (identify on June 2); June 2: e (nothing after).
    assert [(c["cohort"], c["contacts"], c["returned"]) for c in days["cohorts"]] == [
        ("2026-06-01", 1, [0, 1, 0]),
        ("2026-06-02", 1, [0, 0, 0]),
    ]


def test_calendar_buckets_round_trip():
    for period in ("day", "week", "month"):
        for moment in (T, T - 400 * DAY, datetime(2024, 2, 29, 23, 59, tzinfo=UTC)):
            index = bucket(moment, period)
            assert period_start(index, period) <= moment < period_start(index + 1, period)
    assert period_start(bucket(T + 3 * DAY, "week"), "week") == datetime(2026, 6, 1, tzinfo=UTC)


def test_bad_specs_name_the_field(loaded: Store):
    with pytest.raises(RetentionError, match="period"):
        retention(loaded, spec(period="year"))
    with pytest.raises(RetentionError, match="periods"):
        retention(loaded, spec(periods=0))
    with pytest.raises(RetentionError, match="end"):
        retention(loaded, spec(end=T - DAY))
    with pytest.raises(RetentionError, match="cohorts"):
        retention(loaded, spec(period="day", start=T - 800 * DAY))


def test_cli(tmp_path):
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    load_messages(store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits())
    store.close()
    runner = CliRunner()
    args = ["retention", "--data-dir", str(tmp_path), "--from", "2026-06-01", "--to", "2026-06-15"]
    result = runner.invoke(app, [*args, "--periods", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # as_of is now (after every event): b's week-3 order is outside the 2 periods shown.
    assert [(c["contacts"], c["returned"]) for c in data["cohorts"]] == [(4, [2, 1, 1]), (1, [1, 1, 0])]
    table = runner.invoke(app, [*args, "--start-event", "Order Completed"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "average" in table.output and "2026-06-01" in table.output
    csv = runner.invoke(app, [*args, "--periods", "1", "--format", "csv"])
    assert csv.exit_code == 0
    assert csv.output.splitlines()[0] == "cohort,contacts,period,returned,retention"
    assert "2026-06-01,4,0,2,0.5" in csv.output
    bad = runner.invoke(app, [*args, "--period", "year"])
    assert bad.exit_code == 2 and "period" in bad.output and "Traceback" not in bad.output
    backwards = runner.invoke(
        app, ["retention", "--data-dir", str(tmp_path), "--from", "2026-06-15", "--to", "2026-06-01"]
    )
    assert backwards.exit_code == 2 and "end" in backwards.output


def test_rest(server):
    report = load_messages(
        server.store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    http = server.client()
    period = {"from": "2026-06-01T00:00:00Z", "to": "2026-06-15T00:00:00Z", "periods": 2}
    r = http.get(
        "/v1/retention",
        params={**period, "start_event": "Order Completed", "return_event": "Order Completed"},
    )
    assert r.status_code == 200, r.text
    assert [(c["contacts"], c["returned"]) for c in r.json()["cohorts"]] == [(2, [0, 0, 1]), (2, [0, 0, 0])]
    assert http.get("/v1/retention", params={**period, "period": "year"}).status_code == 400
    periods = http.get("/v1/retention", params={**period, "periods": 0})
    assert periods.status_code == 400 and periods.json()["field"] == "periods"
    empty = http.get("/v1/retention", params={**period, "start_event": ""})
    assert empty.status_code == 400 and empty.json()["field"] == "start_event"
    backwards = http.get(
        "/v1/retention", params={"from": "2026-06-15T00:00:00Z", "to": "2026-06-01T00:00:00Z"}
    )
    assert backwards.status_code == 400 and backwards.json()["field"] == "from"
    many = http.get(
        "/v1/retention",
        params={"from": "2020-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z", "period": "day"},
    )
    assert many.status_code == 400 and "cohorts" in many.json()["message"]
