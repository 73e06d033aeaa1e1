"""Funnels on both engines: exact counts, identity resolution mid-funnel, windows, breakdowns."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from percorso.analytics.funnel import FunnelError, FunnelSpec, dropped_contacts, funnel, parse_step
from percorso.channels import ChannelClassifier, load_rules
from percorso.cli import app
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store
from percorso.store.contacts import find_contact

T = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def message(
    n: list[int], who: dict[str, str], event: str, at: datetime, channel: str = "web", **props: Any
) -> dict[str, Any]:
    n[0] += 1
    return {
        "type": "track",
        "messageId": f"f-{n[0]}",
        "event": event,
        "timestamp": at.isoformat(),
        "properties": props,
        "context": {"channel": channel},
        **who,
    }


def scenario() -> list[dict[str, Any]]:
    n = [0]
    a_anon, a_user = {"anonymousId": "anon-a"}, {"userId": "user-a"}
    msgs = [
        # A: views anonymously, identifies, then checks out and orders as a known user: one contact.
        message(n, a_anon, "Product Viewed", T, source="ad"),
        {
            "type": "identify",
            "messageId": "f-id-a",
            "anonymousId": "anon-a",
            "userId": "user-a",
            "traits": {"email": "a@example.it", "tier": "gold"},
            "timestamp": (T + 10 * 60 * timedelta(seconds=1)).isoformat(),
        },
        message(n, a_user, "Checkout Started", T + HOUR),
        message(n, a_user, "Order Completed", T + 2 * HOUR),
        # B: checks out, never orders (window closed long ago): dropped at step 2.
        message(n, {"userId": "user-b"}, "Product Viewed", T + 2 * DAY, source="ad"),
        message(n, {"userId": "user-b"}, "Checkout Started", T + 2 * DAY + 2 * HOUR),
        # C: checks out ten days later, outside the 7-day window: dropped at step 1.
        message(n, {"userId": "user-c"}, "Product Viewed", T + 2 * DAY, source="search"),
        message(n, {"userId": "user-c"}, "Checkout Started", T + 12 * DAY),
        message(n, {"userId": "user-c"}, "Order Completed", T + 12 * DAY + HOUR),
        # D: viewed yesterday (relative to as_of): still inside the window, in progress.
        message(n, {"userId": "user-d"}, "Product Viewed", T + 24 * DAY, source="ad"),
        # E: orders without viewing: never enters.
        message(n, {"userId": "user-e"}, "Order Completed", T + DAY),
        # F: the order comes before the checkout, so it does not count: dropped at step 2.
        message(n, {"userId": "user-f"}, "Product Viewed", T + 3 * DAY, source="ad"),
        message(n, {"userId": "user-f"}, "Order Completed", T + 3 * DAY + HOUR),
        message(n, {"userId": "user-f"}, "Checkout Started", T + 3 * DAY + 3 * HOUR),
        # G: arrives from an e-mail and converts.
        message(n, {"userId": "user-g"}, "Product Viewed", T + DAY, channel="email", source="newsletter"),
        message(
            n,
            {"userId": "user-g"},
            "Product Viewed",
            T + DAY + 60 * timedelta(seconds=1),
            source="newsletter",
        ),
        message(n, {"userId": "user-g"}, "Checkout Started", T + DAY + 30 * 60 * timedelta(seconds=1)),
        message(n, {"userId": "user-g"}, "Order Completed", T + DAY + 90 * 60 * timedelta(seconds=1)),
        # Outside the period: ignored.
        message(n, {"userId": "user-h"}, "Product Viewed", T - 5 * DAY),
    ]
    return msgs


@pytest.fixture
def loaded(store: Store) -> Store:
    report = load_messages(
        store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    return store


def spec(**overrides: Any) -> FunnelSpec:
    base: dict[str, Any] = {
        "steps": [
            parse_step("Product Viewed"),
            parse_step("Checkout Started"),
            parse_step("Order Completed"),
        ],
        "start": T - DAY,
        "end": T + 25 * DAY,
        "window_seconds": 7 * 86_400,
        "as_of": T + 25 * DAY,
    }
    return FunnelSpec(**{**base, **overrides})


def test_counts_drop_off_in_progress_and_times(loaded: Store):
    result = funnel(loaded, spec())
    steps = result["total"]["steps"]
    assert [s["contacts"] for s in steps] == [6, 4, 2]  # A B C D F G | A B F G | A G
    assert (steps[0]["in_progress"], steps[0]["dropped"]) == (1, 1)  # D still has time; C is out
    assert (steps[1]["in_progress"], steps[1]["dropped"]) == (0, 2)  # B and F
    assert steps[1]["conversion_from_previous"] == pytest.approx(4 / 6, abs=1e-4)
    assert steps[2]["conversion_from_first"] == pytest.approx(2 / 6, abs=1e-4)
    # view→checkout: A 1h, B 2h, F 3h, G 30m → median 1.5h; checkout→order: A 1h, G 1h.
    assert steps[1]["median_seconds_from_previous"] == 5400.0
    assert steps[2]["median_seconds_from_previous"] == 3600.0
    assert sum(b["contacts"] for b in result["time_to_convert"]) == 2
    assert result["time_to_convert"][1] == {"bucket": "1-6h", "contacts": 2}
    assert sum(t["entered"] for t in result["trend"]) == 6
    assert result["trend"][0]["period_start"] == "2026-06-01"  # a Monday


def test_identify_mid_funnel_counts_once(loaded: Store):
    dropped = dropped_contacts(loaded, spec(), step=1)
    a = find_contact(loaded, "user_id", "user-a")
    assert a not in {row["contact_id"] for row in dropped}
    assert {row["contact_id"] for row in dropped} == {find_contact(loaded, "user_id", "user-c")}
    at_two = dropped_contacts(loaded, spec(), step=2)
    assert {row["contact_id"] for row in at_two} == {
        find_contact(loaded, "user_id", "user-b"),
        find_contact(loaded, "user_id", "user-f"),
    }


def test_breakdowns(loaded: Store):
    by_channel = funnel(loaded, spec(breakdown="channel"))["breakdown"]["groups"]
    summary = {g["group"]: (g["entered"], g["converted"]) for g in by_channel}
    assert summary == {"web": (5, 1), "email": (1, 1)}
    top_one = funnel(loaded, spec(breakdown="channel", top=1))["breakdown"]["groups"]
    assert {g["group"]: g["entered"] for g in top_one} == {"web": 5, "(other)": 1}
    by_source = funnel(loaded, spec(breakdown="property:source"))["breakdown"]["groups"]
    assert {g["group"]: g["entered"] for g in by_source} == {"ad": 4, "search": 1, "newsletter": 1}
    by_tier = funnel(loaded, spec(breakdown="trait:tier"))["breakdown"]["groups"]
    assert {g["group"]: g["converted"] for g in by_tier} == {"(none)": 1, "gold": 1}


def test_step_patterns_and_a_longer_window(loaded: Store):
    globbed = spec(
        steps=[parse_step("event:Product *"), parse_step("Checkout*"), parse_step("Order Completed")]
    )
    assert [s["contacts"] for s in funnel(loaded, globbed)["total"]["steps"]] == [6, 4, 2]
    wide = funnel(loaded, spec(window_seconds=14 * 86_400))["total"]["steps"]
    assert [s["contacts"] for s in wide] == [6, 5, 3]  # C now converts
    by_prop = spec(steps=[parse_step("Product Viewed & property.source:ad"), parse_step("Order Completed")])
    assert [s["contacts"] for s in funnel(loaded, by_prop)["total"]["steps"]] == [4, 2]  # A and F


def test_bad_specs_name_the_field(loaded: Store):
    with pytest.raises(FunnelError, match="steps"):
        funnel(loaded, spec(steps=[parse_step("Product Viewed")]))
    with pytest.raises(FunnelError, match="breakdown"):
        funnel(loaded, spec(breakdown="colour"))
    with pytest.raises(FunnelError, match="end"):
        funnel(loaded, spec(end=T - 2 * DAY))
    with pytest.raises(FunnelError, match="step"):
        dropped_contacts(loaded, spec(), step=3)


def test_cli_funnel_json_and_errors(tmp_path):
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    load_messages(store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits())
    store.close()
    runner = CliRunner()
    args = [
        "funnel",
        "-s",
        "Product Viewed",
        "-s",
        "Checkout Started",
        "-s",
        "Order Completed",
        "--from",
        "2026-05-31",
        "--to",
        "2026-06-26",
        "--window",
        "7d",
        "--data-dir",
        str(tmp_path),
    ]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [s["contacts"] for s in data["total"]["steps"]] == [6, 4, 2]
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "Product" in table.output and "66.7%" in table.output
    bad = runner.invoke(app, [*args, "--breakdown", "colour"])
    assert bad.exit_code == 2 and "breakdown" in bad.output and "Traceback" not in bad.output
    bad_window = runner.invoke(app, [*args[:-2], "--window", "fortnight"])
    assert bad_window.exit_code == 2 and "--window" in bad_window.output
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    wrong_dir = runner.invoke(app, [*args[:-1], str(not_a_dir / "sub")])
    assert wrong_dir.exit_code == 1 and "data directory" in wrong_dir.output
    assert "Traceback" not in wrong_dir.output
