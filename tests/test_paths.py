"""Paths and transitions on both engines: sessions, repeats, identity resolution, modes, top N."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from percorso.analytics.funnel import parse_step
from percorso.analytics.paths import END, OTHER, PathError, PathSpec, paths, transitions
from percorso.channels import ChannelClassifier, load_rules
from percorso.cli import app
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store

T = datetime(2026, 4, 6, 10, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def scenario() -> list[dict[str, Any]]:
    n = [0]

    def msg(
        who: dict[str, str], at: datetime, event: str | None = None, path: str | None = None, **extra: Any
    ):
        n[0] += 1
        m: dict[str, Any] = {"messageId": f"p-{n[0]}", "timestamp": at.isoformat(), **who, **extra}
        if path is not None:
            m.update(type="page", name="Page", context={"page": {"path": path}})
        elif event is not None:
            m.update(type="track", event=event)
        return m

    v1, u1, v2 = {"anonymousId": "v1"}, {"userId": "u1"}, {"anonymousId": "v2"}
    return [
        msg(v1, T, path="/"),
        msg(v1, T + M, path="/p/1?ref=newsletter"),
        msg(v1, T + 2 * M, "Product Viewed"),
        msg(v1, T + 3 * M, "Product Viewed"),  # a repeat
        {
            "type": "identify",
            "messageId": "p-id",
            "anonymousId": "v1",
            "userId": "u1",
            "timestamp": (T + 4 * M).isoformat(),
        },
        msg(u1, T + 5 * M, "Product Added"),  # as the known user: the same contact
        msg(u1, T + 6 * M, "Checkout Started"),
        msg(u1, T + 120 * M, path="/"),  # two hours later: a new session
        msg(v2, T, path="/"),
        msg(v2, T + M, "Product Viewed"),
        msg(v2, T + 2 * M, path="/#top"),
    ]


@pytest.fixture
def loaded(store: Store) -> Store:
    report = load_messages(
        store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    return store


def spec(**kw: Any) -> PathSpec:
    return PathSpec(start=T - timedelta(days=1), end=T + timedelta(days=1), **kw)


def links(result: dict[str, Any]) -> set[tuple[str, str, int, int]]:
    return {
        (link["source"], link["target"], link["transitions"], link["contacts"]) for link in result["links"]
    }


def test_from_session_start(loaded):
    result = paths(loaded, spec(max_steps=4, url_rules=[("^/p/[0-9]+$", "/p/:id")]))
    assert (result["sessions"], result["contacts"]) == (3, 2)
    assert links(result) == {
        ("1:page:/", "2:page:/p/:id", 1, 1),
        ("2:page:/p/:id", "3:Product Viewed", 1, 1),
        ("3:Product Viewed", "4:Product Added", 1, 1),  # identified mid-path: still one path
        ("1:page:/", "2:(end)", 1, 1),  # the second session of u1
        ("1:page:/", "2:Product Viewed", 1, 1),
        ("2:Product Viewed", "3:page:/", 1, 1),  # the fragment is cleaned away
        ("3:page:/", "4:(end)", 1, 1),
    }
    assert {n["id"] for n in result["nodes"]} >= {"1:page:/", "4:Product Added", "4:(end)"}


def test_from_to_between_and_repeats(loaded):
    start = paths(loaded, spec(from_step=parse_step("Product Viewed").condition))
    assert links(start) == {
        ("1:Product Viewed", "2:Product Added", 1, 1),
        ("2:Product Added", "3:Checkout Started", 1, 1),
        ("3:Checkout Started", "4:(end)", 1, 1),
        ("1:Product Viewed", "2:page:/", 1, 1),
        ("2:page:/", "3:(end)", 1, 1),
    }
    raw = paths(loaded, spec(from_step=parse_step("Product Viewed").condition, collapse_repeats=False))
    assert ("1:Product Viewed", "2:Product Viewed", 1, 1) in links(raw)
    to = paths(loaded, spec(to_step=parse_step("Checkout Started").condition, max_steps=3))
    assert links(to) == {
        ("-2:Product Viewed", "-1:Product Added", 1, 1),
        ("-1:Product Added", "0:Checkout Started", 1, 1),
    }
    between = paths(
        loaded,
        spec(from_step=parse_step("type:page").condition, to_step=parse_step("Product Added").condition),
    )
    assert between["contacts"] == 1 and ("3:Product Viewed", "4:Product Added", 1, 1) in links(between)
    assert all(not link["target"].endswith("(end)") for link in between["links"])


def test_top_edges_fold_the_quiet_nodes_of_each_step_into_other(loaded):
    whole = paths(loaded, spec(max_steps=4))
    for top in (5, 7, 9):  # 5: everything in (other) but (end), one link less than 6 needs
        result = paths(loaded, spec(max_steps=4, top_edges=top))
        assert len(result["links"]) <= top
        assert sum(link["transitions"] for link in result["links"]) == 7  # nothing lost
        # A node that is shown keeps every transition in and out of it.
        for node in result["nodes"]:
            if node["label"] in (OTHER, END):
                continue
            for side in ("source", "target"):
                shown = sum(link["transitions"] for link in result["links"] if link[side] == node["id"])
                assert shown == sum(
                    link["transitions"] for link in whole["links"] if link[side] == node["id"]
                )
    assert {n["label"] for n in paths(loaded, spec(max_steps=4, top_edges=5))["nodes"]} == {OTHER, END}


def test_a_page_step_is_a_visit_to_the_page_not_an_event_sent_from_it(store):
    sent_from_page = {
        "type": "track",
        "event": "Registration Confirmed",
        "context": {"page": {"path": "/registrati/ok"}},
    }
    visit = {"type": "page", "name": "Register", "context": {"page": {"path": "/registrati"}}}
    messages = [
        {**visit, "anonymousId": "a", "messageId": "v", "timestamp": T.isoformat()},
        {**sent_from_page, "anonymousId": "a", "messageId": "t", "timestamp": (T + M).isoformat()},
        {**sent_from_page, "anonymousId": "b", "messageId": "u", "timestamp": T.isoformat()},
    ]
    load_messages(store, enumerate(messages), classifier=ChannelClassifier(load_rules()), limits=Limits())
    visits = paths(store, spec(from_step=parse_step("page:/registrati*").condition))
    assert visits["sessions"] == 1 and links(visits) == {
        ("1:page:/registrati", "2:Registration Confirmed", 1, 1),
        ("2:Registration Confirmed", "3:(end)", 1, 1),
    }
    anywhere = paths(store, spec(from_step=parse_step("type:* & page:/registrati*").condition))
    assert anywhere["sessions"] == 2


def test_sessions_split_at_the_gap(loaded):
    longer = paths(loaded, spec(max_steps=10, session_gap_seconds=3 * 3600))
    assert longer["sessions"] == 2  # u1's two visits are now one session
    assert ("5:Checkout Started", "6:page:/", 1, 1) in links(longer)


def test_transitions(loaded):
    rows = {
        (r["source"], r["target"]): r
        for r in transitions(loaded, T - timedelta(days=1), T + timedelta(days=1))
    }
    pv_pa, pv_page = rows[("Product Viewed", "Product Added")], rows[("Product Viewed", "page:/")]
    assert (pv_pa["transitions"], pv_pa["probability"], pv_page["probability"]) == (1, 0.5, 0.5)
    assert pv_pa["median_seconds"] == 180.0  # from the first Product Viewed (repeat collapsed) to the add
    assert rows[("page:/", "page:/p/1")]["contacts"] == 1


def test_bad_specs(loaded):
    with pytest.raises(PathError, match="max_steps"):
        paths(loaded, spec(max_steps=1))
    with pytest.raises(PathError, match="url_rules"):
        paths(loaded, spec(url_rules=[("([", "x")]))
    with pytest.raises(PathError, match="end"):
        paths(loaded, PathSpec(start=T, end=T - timedelta(days=1)))


def test_cli(tmp_path):
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    load_messages(store, enumerate(scenario()), classifier=ChannelClassifier(load_rules()), limits=Limits())
    store.close()
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path), "--from", "2026-04-05", "--to", "2026-04-07"]
    result = runner.invoke(app, ["paths", *data, "--from-step", "Product Viewed", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mode"] == "from"
    table = runner.invoke(app, ["transitions", *data], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "Product Added" in table.output
    bad = runner.invoke(app, ["paths", *data, "--max-steps", "50"])
    assert bad.exit_code == 2 and "max_steps" in bad.output
    rule = runner.invoke(app, ["paths", *data, "--url-rule", "no-arrow"])
    assert rule.exit_code == 2 and "--url-rule" in rule.output
