"""The stage engine on both engines: forward and loop journeys, counted entry criteria, merges,
incremental updates equal to a rebuild, and the stage overview."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from percorso.analytics.stages import (
    StageError,
    contact_stages,
    get_journey,
    rebuild,
    save_journey,
    stage_overview,
    stuck_contacts,
    update,
)
from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.journey import load_journey, template_text
from percorso.store import Store
from percorso.store.contacts import erase_contact, find_contact

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)

FORWARD = """\
version: 1
key: shop
name: Shop
stages:
  - key: aware
    name: Aware
    enter: {any: [{type: page}]}
  - key: consider
    name: Consider
    enter: {any: [{event: Product Viewed}]}
  - key: buy
    name: Buy
    enter: {any: [{event: Order Completed}]}
  - key: loyal
    name: Loyal
    enter: {any: [{event: Order Completed}], at_least: 2, within: 30d}
"""

LOOP = FORWARD.replace("key: shop", "key: loop").replace("# ", "") + "progression: loop\n"


class Feed:
    def __init__(self, store: Store):
        self.store = store
        self.n = 0

    def send(self, *messages: dict[str, Any]) -> None:
        report = load_messages(
            self.store, enumerate(messages), classifier=ChannelClassifier(load_rules()), limits=Limits()
        )
        assert report.rejected == []

    def msg(
        self, who: dict[str, str], at: datetime, event: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        self.n += 1
        base: dict[str, Any] = {"messageId": f"s-{self.n}", "timestamp": at.isoformat(), **who}
        if event is None:
            base.update(type="page", name="Home", context={"page": {"path": "/"}})
        else:
            base.update(type="track", event=event)
        return {**base, **extra}


def history(store: Store, journey, who: tuple[str, str]) -> list[tuple[str, datetime]]:
    cid = find_contact(store, *who)
    return [(e["stage"], e["entered_at"].astimezone(UTC)) for e in contact_stages(store, journey, cid)]


def table(store: Store, key: str) -> list[tuple[Any, ...]]:
    with store.session() as s:
        return s.rows(
            "SELECT contact_id, seq, stage, stage_index, entered_at, left_at, message_id, channel "
            "FROM stage_entries WHERE journey_key = ? ORDER BY contact_id, seq",
            [key],
        )


def test_forward_history_merges_and_incremental_equals_rebuild(store: Store):
    journey = load_journey(FORWARD)
    save_journey(store, journey, "test")
    feed = Feed(store)
    anon, user = {"anonymousId": "v1"}, {"userId": "u1"}
    feed.send(
        feed.msg(anon, T),  # aware
        feed.msg(anon, T + H, "Product Viewed"),  # consider
        feed.msg({"userId": "u2"}, T, "Order Completed"),  # u2 skips straight to buy
        feed.msg({"userId": "u2"}, T + 2 * H),  # a page after buying: no step back
        feed.msg({"userId": "u3"}, T, "Order Completed"),
        feed.msg({"userId": "u3"}, T + 40 * D, "Order Completed"),  # 40 days apart: not loyal
    )
    first = update(store, journey)
    assert first.mode == "rebuild"
    assert history(store, journey, ("anonymous_id", "v1")) == [("aware", T), ("consider", T + H)]
    assert history(store, journey, ("user_id", "u2")) == [("buy", T)]
    assert [s for s, _ in history(store, journey, ("user_id", "u3"))] == ["buy"]
    # The visitor identifies and buys twice within 30 days: one contact, loyal.
    feed.send(
        feed.msg({**anon, **user}, T + D, None, type="identify", traits={"email": "v1@example.it"}),
        feed.msg(user, T + 2 * D, "Order Completed"),
        feed.msg(user, T + 9 * D, "Order Completed"),
        feed.msg({"userId": "u4"}, T + 3 * D),
    )
    second = update(store, journey)
    assert second.mode == "incremental"
    assert history(store, journey, ("email", "v1@example.it")) == [
        ("aware", T),
        ("consider", T + H),
        ("buy", T + 2 * D),
        ("loyal", T + 9 * D),
    ]
    incremental = table(store, "shop")
    rebuild(store, journey)
    assert table(store, "shop") == incremental
    # left_at is the next entry's time; the current stage has none.
    rows = [r for r in incremental if r[0] == find_contact(store, "user_id", "u1")]
    assert rows[0][5].astimezone(UTC) == T + H and rows[-1][5] is None
    # Erasure removes the contact's stage history too.
    erase_contact(store, find_contact(store, "user_id", "u1"))
    assert all(r[0] != rows[0][0] for r in table(store, "shop"))


def test_loop_progression_shows_each_lap(store: Store):
    journey = load_journey(LOOP)
    feed = Feed(store)
    who = {"userId": "l1"}
    feed.send(
        feed.msg(who, T),
        feed.msg(who, T + H, "Product Viewed"),
        feed.msg(who, T + 2 * H, "Product Viewed"),  # repeat: collapses
        feed.msg(who, T + 3 * H, "Order Completed"),
        feed.msg(who, T + 5 * D),  # back to the start of the loop
        feed.msg(who, T + 6 * D, "Order Completed"),  # second order in 30 days: loyal (highest match)
    )
    save_journey(store, journey, "test")
    rebuild(store, journey)
    assert [s for s, _ in history(store, journey, ("user_id", "l1"))] == [
        "aware",
        "consider",
        "buy",
        "aware",
        "loyal",
    ]


def test_overview_counts_conversion_time_and_stuck(store: Store):
    journey = load_journey(FORWARD)
    save_journey(store, journey, "test")
    feed = Feed(store)
    now = T + 60 * D
    feed.send(
        *(feed.msg({"userId": f"a{i}"}, T + i * H) for i in range(4)),  # four aware, two move on
        feed.msg({"userId": "a0"}, T + 2 * D, "Product Viewed"),
        feed.msg({"userId": "a1"}, T + 4 * D, "Product Viewed"),
        feed.msg({"userId": "a1"}, T + 5 * D, "Order Completed"),
        feed.msg({"userId": "a3"}, now - 2 * D),  # active again, but still aware since T + 3h: stuck
        feed.msg({"userId": "a4"}, now - 2 * D),  # a recent arrival: not stuck
    )
    rebuild(store, journey)
    overview = stage_overview(store, journey, since=T - D, until=now, stuck_after=timedelta(days=30))
    by = {s["stage"]: s for s in overview["stages"]}
    assert by["aware"]["current_contacts"] == 3 and by["aware"]["entered_in_period"] == 5
    assert by["aware"]["moved_on"] == 2 and by["aware"]["conversion_to_next"] == 0.4
    assert by["aware"]["stuck"] == 2  # a2 and a3
    # a0 spent 2 days in aware (T → T+2d), a1 4d - 1h (T+1h → T+4d): the median of the two.
    assert by["aware"]["median_seconds_in_stage"] == pytest.approx(
        ((2 * D) + (4 * D - H)).total_seconds() / 2
    )
    assert by["consider"]["current_contacts"] == 1 and by["buy"]["current_contacts"] == 1
    assert by["loyal"]["moved_on"] is None
    stuck = stuck_contacts(store, journey, "aware", timedelta(days=30), as_of=now)
    assert [r["contact_id"] for r in stuck] == [find_contact(store, "user_id", u) for u in ("a2", "a3")]
    assert overview["over_time"][-1]["contacts"]["buy"] == 1


def test_stored_journeys_and_errors(store: Store):
    with pytest.raises(StageError, match="no journey"):
        get_journey(store)
    save_journey(store, load_journey(FORWARD), "a.yaml")
    assert get_journey(store).key == "shop"
    save_journey(store, load_journey(template_text("five-stages")), "template")
    with pytest.raises(StageError, match="several journeys"):
        get_journey(store)
    assert get_journey(store, "customer-journey").stages[0].key == "awareness"
    assert (
        rebuild(store, load_journey(template_text("b2b"))).subject == "account"
    )  # tests/test_account_journeys.py
    with pytest.raises(StageError, match="not a stage"):
        stuck_contacts(store, load_journey(FORWARD), "nirvana", timedelta(days=1))
    # A changed definition triggers a rebuild instead of an incremental update.
    journey = load_journey(FORWARD)
    assert update(store, journey).mode == "rebuild"
    assert update(store, journey).mode == "incremental"
    assert update(store, load_journey(FORWARD.replace("within: 30d", "within: 60d"))).mode == "rebuild"


def test_cli_apply_stages_update_rebuild_stuck(tmp_path):
    from typer.testing import CliRunner

    from percorso.cli import app
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    feed = Feed(store)
    feed.send(feed.msg({"userId": "c1"}, T), feed.msg({"userId": "c1"}, T + H, "Product Viewed"))
    store.close()
    runner = CliRunner()
    path = tmp_path / "journey.yaml"
    path.write_text(FORWARD)
    data = ["--data-dir", str(tmp_path)]
    applied = runner.invoke(app, ["journey", "apply", str(path), *data])
    assert (
        applied.exit_code == 0
        and "stored journey 'shop'" in applied.output
        and "1 contacts" in applied.output
    )
    overview = runner.invoke(
        app, ["stages", *data, "--from", "2026-03-01", "--to", "2026-03-09", "--format", "json"]
    )
    assert overview.exit_code == 0, overview.output
    stages = {s["stage"]: s for s in __import__("json").loads(overview.output)["stages"]}
    assert stages["consider"]["current_contacts"] == 1 and stages["aware"]["conversion_to_next"] == 1.0
    assert "incremental" in runner.invoke(app, ["stages", *data, "update"]).output
    assert "rebuild" in runner.invoke(app, ["stages", *data, "rebuild"]).output
    stuck = runner.invoke(
        app, ["stages", *data, "--stuck-after", "1d", "--format", "json", "stuck", "consider"]
    )
    assert stuck.exit_code == 0 and len(__import__("json").loads(stuck.output)) == 1
    wrong = runner.invoke(app, ["stages", *data, "stuck", "heaven"])
    assert wrong.exit_code == 2 and "not a stage" in wrong.output
    path.write_text(FORWARD.replace("enter: {any: [{event: Product Viewed}]}", "enter: {any: []}"))
    invalid = runner.invoke(app, ["journey", "apply", str(path), *data])
    assert invalid.exit_code == 2 and "stages[1].enter.any" in invalid.output


def test_worker_keeps_stages_current_as_events_arrive(store: Store):
    import time

    from percorso.analytics.worker import StageWorker

    journey = load_journey(FORWARD)
    save_journey(store, journey, "test")
    feed = Feed(store)
    worker = StageWorker(store, interval=0.1)
    worker.start()
    try:
        feed.send(feed.msg({"userId": "w1"}, T))
        deadline = time.monotonic() + 20
        while not table(store, "shop") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r[2] for r in table(store, "shop")] == ["aware"]
        feed.send(feed.msg({"userId": "w1"}, T + H, "Product Viewed"))
        while len(table(store, "shop")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r[2] for r in table(store, "shop")] == ["aware", "consider"]
    finally:
        worker.stop()
    assert not worker.is_alive() and worker.runs >= 2
