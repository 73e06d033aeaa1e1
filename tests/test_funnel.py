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


# -- order modes, exclusion steps, persona and first-touch breakdowns ---------------------------

MODES_AS_OF = T + 20 * DAY
MINUTE = timedelta(minutes=1)


def modes_scenario() -> list[dict[str, Any]]:
    """One contact per line; V = Product Viewed, B = Product Added, C = Order Completed (window 1d)."""
    n = [0]
    msgs: list[dict[str, Any]] = []

    def track(user: str, event: str, at: datetime, **extra: Any) -> None:
        msgs.append({**message(n, {"userId": user}, event, at), **extra})

    def page(user: str, at: datetime, path: str = "/", campaign: str | None = None) -> None:
        n[0] += 1
        context: dict[str, Any] = {"page": {"path": path}}
        if campaign:
            context["campaign"] = {"name": campaign, "source": "newsletter"}
        msgs.append(
            {
                "type": "page",
                "messageId": f"p-{n[0]}",
                "userId": user,
                "timestamp": at.isoformat(),
                "context": context,
            }
        )

    steps = {"V": "Product Viewed", "B": "Product Added", "C": "Order Completed"}
    plan = {  # minute offsets from the contact's start; "page" and "Search" are not steps
        "p": [("V", 0), ("page", 5), ("B", 10), ("page", 15), ("C", 20)],
        "q": [("V", 0), ("Search", 5), ("B", 10), ("C", 20)],  # strict: Search breaks the chain
        "r": [("V", 0), ("V", 2), ("B", 10), ("C", 20)],  # strict: the repeat is skipped
        "s": [("V", 0), ("C", 5), ("B", 10)],  # any order: converts; ordered: stops at B
        "t": [("C", 0), ("V", 5), ("B", 10)],  # the order before entry never counts
        "u": [("V", 0), ("Email Sent", 5), ("B", 10)],  # percorso's own email is not the contact's
        "w": [("V", 0), ("Coupon Applied", 5), ("B", 10), ("C", 20)],
        "x": [("V", 0), ("B", 10), ("Coupon Applied", 15), ("C", 20)],
        "y": [("V", 0)],
        "z": [("V", 0), ("B", 2 * 24 * 60)],  # B after the 1-day window
        "k": [("V", 0), ("Coupon Applied", 5)],
    }
    for i, (who, events) in enumerate(plan.items()):
        base = T + i * HOUR
        for what, minutes in events:
            at = base + minutes * MINUTE
            if what == "page":
                page(who, at)
            elif what == "Email Sent":
                track(
                    who,
                    "Email Sent",
                    at,
                    context={"library": {"name": "percorso-automation"}, "channel": "email"},
                )
            else:
                track(who, steps.get(what, what), at)
    # o: entered an hour before as_of, then searched: ordered says in progress, strict says dropped.
    track("o", "Product Viewed", MODES_AS_OF - HOUR)
    track("o", "Search", MODES_AS_OF - 30 * MINUTE)
    # First-touch campaigns (first event ever, after identity resolution) on contacts m1..m4.
    msgs.append(
        {
            "type": "page",
            "messageId": "m1-first",
            "anonymousId": "anon-m1",
            "timestamp": (T - 2 * DAY).isoformat(),
            "context": {"campaign": {"name": "spring"}},
        }
    )
    msgs.append(
        {
            "type": "identify",
            "messageId": "m1-id",
            "anonymousId": "anon-m1",
            "userId": "m1",
            "timestamp": (T - 2 * DAY + MINUTE).isoformat(),
        }
    )
    track("m1", "Product Viewed", T + 2 * DAY)
    page("m2", T + 2 * DAY, campaign="summer")
    track("m2", "Product Viewed", T + 2 * DAY + MINUTE)
    page("m3", T + 2 * DAY)
    track("m3", "Product Viewed", T + 2 * DAY + MINUTE, context={"campaign": {"name": "summer"}})
    page("m4", T - 30 * DAY, campaign="spring")  # long before the period: still the first touch
    track("m4", "Product Viewed", T + 2 * DAY)
    return msgs


@pytest.fixture
def modes(store: Store) -> Store:
    report = load_messages(
        store, enumerate(modes_scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    return store


def modes_spec(**overrides: Any) -> FunnelSpec:
    base: dict[str, Any] = {
        "steps": [parse_step(s) for s in ("Product Viewed", "Product Added", "Order Completed")],
        "start": T - DAY,
        "end": T + 20 * DAY,
        "window_seconds": 86_400,
        "as_of": MODES_AS_OF,
    }
    return FunnelSpec(**{**base, **overrides})


def shape(result: dict[str, Any]) -> list[tuple[int, int, int, int]]:
    """(contacts, in progress, excluded, dropped) per step; the last step has only contacts."""
    return [
        (s["contacts"], s.get("in_progress", 0), s.get("excluded", 0), s.get("dropped", 0))
        for s in result["total"]["steps"]
    ]


def test_ordered_strict_and_any_order(modes: Store):
    # entered: p q r s t u w x y z k o + m1..m4 (who only view) = 16
    ordered = funnel(modes, modes_spec())
    assert ordered["order"] == "ordered"
    # B after V in 1 day: p q r s t u w x; C after B: p q r w x. Open: o; dropped at 1: y z k m1..m4
    assert shape(ordered) == [(16, 1, 0, 7), (8, 0, 0, 3), (5, 0, 0, 0)]

    strict = funnel(modes, modes_spec(order="strict"))
    # p (pages do not count), r (repeat skipped), t, u (email not the contact's), x reach B;
    # q (Search), s (C first), w (Coupon), z (B too late), k, o broke the chain after V.
    # p and r reach C; x's Coupon comes before C. o dropped although its window is open.
    assert shape(strict) == [(16, 0, 0, 11), (5, 0, 0, 3), (2, 0, 0, 0)]
    broken = {r["contact_id"] for r in dropped_contacts(modes, modes_spec(order="strict"), step=1)}
    assert broken == {find_contact(modes, "user_id", u) for u in "qswzkoy"} | {
        find_contact(modes, "user_id", f"m{i}") for i in range(1, 5)
    }

    any_order = funnel(modes, modes_spec(order="any"))
    # s converts (C then B); t's order came before entering and does not count.
    assert shape(any_order) == [(16, 1, 0, 7), (8, 0, 0, 2), (6, 0, 0, 0)]
    s_group = any_order["total"]["steps"]
    assert s_group[2]["median_seconds_from_previous"] == 600.0  # p q r w x: 10 min; s: 0


def test_exclusion_steps(modes: Store):
    from percorso.analytics.funnel import parse_exclusion

    first = funnel(modes, modes_spec(exclusions=(parse_exclusion("1-2:Coupon Applied"),)))
    # w and k did Coupon Applied between V and B: counted at step 1, excluded after it. x did it
    # after B, outside the 1-2 range.
    assert shape(first) == [(16, 1, 2, 6), (7, 0, 0, 3), (4, 0, 0, 0)]
    assert first["exclusions"] == [{"step": "Coupon Applied", "after": 1, "before": 2}]

    whole = funnel(modes, modes_spec(exclusions=(parse_exclusion("Coupon Applied"),)))
    # ...and over the whole funnel x is excluded after step 2 (Coupon between B and C).
    assert shape(whole) == [(16, 1, 2, 6), (7, 0, 1, 3), (3, 0, 0, 0)]
    dropped = {
        r["contact_id"]
        for r in dropped_contacts(modes, modes_spec(exclusions=(parse_exclusion("Coupon Applied"),)), step=2)
    }
    assert dropped == {find_contact(modes, "user_id", u) for u in "stu"}

    any_order = funnel(modes, modes_spec(order="any", exclusions=(parse_exclusion("2-3:Coupon Applied"),)))
    assert shape(any_order) == [(16, 1, 0, 7), (8, 0, 1, 2), (5, 0, 0, 0)]  # x excluded

    with pytest.raises(FunnelError, match="exclusions"):
        funnel(modes, modes_spec(exclusions=(parse_exclusion("3-3:Coupon Applied"),)))
    with pytest.raises(FunnelError, match="exclusions"):
        funnel(modes, modes_spec(exclusions=(parse_exclusion("2-4:Coupon Applied"),)))
    with pytest.raises(FunnelError, match="order"):
        funnel(modes, modes_spec(order="sideways"))


def test_first_touch_campaign_breakdown(modes: Store):
    two_steps = [parse_step("Product Viewed"), parse_step("Product Added")]
    result = funnel(modes, modes_spec(steps=two_steps, breakdown="first_campaign"))
    groups = {g["group"]: g["entered"] for g in result["breakdown"]["groups"]}
    # m1's first touch was anonymous (resolved through identify), m4's a month before the period.
    assert groups == {"spring": 2, "summer": 1, "(none)": 13}
    by_entry = funnel(modes, modes_spec(steps=two_steps, breakdown="campaign"))["breakdown"]["groups"]
    assert {g["group"]: g["entered"] for g in by_entry} == {"summer": 1, "(none)": 15}  # m3's view
    top = funnel(modes, modes_spec(steps=two_steps, breakdown="first_campaign", top=2))["breakdown"]
    assert {g["group"]: g["entered"] for g in top["groups"]} == {"(none)": 13, "spring": 2, "(other)": 1}


PERSONAS = """
version: 1
key: shop
name: Shop
stages:
  - {key: look, name: Look, enter: {any: [{event: Product Viewed}]}}
  - {key: buy, name: {en: Buy, it: Compra}, enter: {any: [{event: Order Completed}]}}
personas:
  - key: gold
    name: {en: Gold members, it: Soci oro}
    when: {traits: {tier: gold}}
  - key: buyers
    name: {en: Buyers, it: Acquirenti}
    when:
      behaviour:
        - {did: {event: Order Completed}, at_least: 1}
"""


def test_persona_breakdown(loaded: Store):
    from percorso.journey import load_journey

    journey = load_journey(PERSONAS)
    result = funnel(loaded, spec(breakdown="persona", journey=journey))
    groups = {g["group"]: (g["entered"], g["converted"]) for g in result["breakdown"]["groups"]}
    # A is gold (and a buyer: the first persona wins); C F G bought; B and D did not.
    assert groups == {"gold": (1, 1), "buyers": (3, 1), "(none)": (2, 0)}
    assert result["breakdown"]["labels"]["gold"] == {"en": "Gold members", "it": "Soci oro"}
    assert sum(g["entered"] for g in result["breakdown"]["groups"]) == result["total"]["entered"] == 6
    with pytest.raises(FunnelError, match="persona"):
        funnel(loaded, spec(breakdown="persona"))


def test_cli_order_exclusions_and_persona(tmp_path):
    from percorso.analytics.stages import save_journey
    from percorso.journey import load_journey
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    load_messages(store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits())
    store.close()
    runner = CliRunner()
    args = ["funnel", "-s", "Product Viewed", "-s", "Checkout Started", "-s", "Order Completed"]
    args += ["--from", "2026-05-31", "--to", "2026-06-26", "--window", "7d", "--data-dir", str(tmp_path)]
    any_order = runner.invoke(app, [*args, "--order", "any", "--format", "json"])
    assert any_order.exit_code == 0, any_order.output
    assert [s["contacts"] for s in json.loads(any_order.output)["total"]["steps"]] == [6, 4, 3]
    excluded = runner.invoke(app, [*args, "-x", "1-2:Order Completed", "--format", "csv"])
    assert excluded.exit_code == 0 and "excluded" in excluded.output.splitlines()[0]
    table = runner.invoke(app, [*args, "--order", "strict"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "strict" in table.output
    bad_order = runner.invoke(app, [*args, "--order", "sideways"])
    assert bad_order.exit_code == 2 and "order" in bad_order.output and "Traceback" not in bad_order.output
    bad_range = runner.invoke(app, [*args, "-x", "2-9:Order Completed"])
    assert bad_range.exit_code == 2 and "exclusions" in bad_range.output
    no_journey = runner.invoke(app, [*args, "--breakdown", "persona"])
    assert no_journey.exit_code == 2 and "journey" in no_journey.output
    store = DuckDBStore(tmp_path / "percorso.duckdb")
    save_journey(store, load_journey(PERSONAS), "test")
    store.close()
    personas = runner.invoke(app, [*args, "--breakdown", "persona", "--format", "json"])
    assert personas.exit_code == 0, personas.output
    groups = {g["group"]: g["entered"] for g in json.loads(personas.output)["breakdown"]["groups"]}
    assert groups == {"gold": 1, "buyers": 3, "(none)": 2}
