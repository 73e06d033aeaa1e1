"""Funnels declared in a journey document with an order and exclusion steps: validation with the
line and field, pain-point detection that does not count excluded contacts as drop-off, and the
dashboard's builder, which starts from them without losing what their text form cannot say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from percorso.analytics.painpoints import _closed, journey_funnels
from percorso.analytics.stages import save_journey
from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.journey import JourneyError, load_journey
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import signed_in

SHOP = """\
version: 1
key: shop
name: Shop
stages:
  - {key: browse, name: Browse, enter: {any: [{type: page}]}}
  - {key: buy, name: Buy, enter: {any: [{event: Order Completed}]}}
funnels:
  - key: pay
    name: {en: Payment, it: Pagamento}
    window: 1d
    order: strict
    steps:
      - event: Checkout Started
      - event: [Payment Info Entered, Express Pay Started]
      - event: Order Completed
    exclude:
      - {event: Payment Failed, after: 2}
"""
T = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
M = timedelta(minutes=1)


def test_order_and_exclusions_load_and_reach_the_funnel_spec():
    journey = load_journey(SHOP, "shop.yaml")
    [f] = journey_funnels(journey)
    assert f.order == "strict" and f.window_seconds == 86_400
    [x] = f.exclusions
    assert (x.step.label, x.after, x.last(3)) == ("Payment Failed", 2, 3)
    assert f.steps[1].condition.event == ["Payment Info Entered", "Express Pay Started"]


@pytest.mark.parametrize(
    ("exclusion", "field", "words"),
    [
        ("{event: Payment Failed, after: 2, before: 2}", "funnels[0].exclude[0].before", "not a range"),
        ("{event: Payment Failed, after: 3}", "funnels[0].exclude[0].after", "not a range of this 3-step"),
        ("{after: 1}", "funnels[0].exclude[0]", "would match every event"),
        ("{event: Payment Failed, befor: 2}", "funnels[0].exclude[0]", "unknown field"),
    ],
)
def test_bad_exclusions_name_their_line_and_field(exclusion: str, field: str, words: str):
    with pytest.raises(JourneyError) as info:
        load_journey(SHOP.replace("{event: Payment Failed, after: 2}", exclusion), "shop.yaml")
    [problem] = info.value.problems
    assert problem.field == field and words in problem.message
    assert problem.line == 17  # the exclusion's own line


def test_excluded_contacts_are_not_drop_off():
    step = {"contacts": 100, "in_progress": 10, "excluded": 30}
    groups = [{"steps": [step, {"contacts": 40}]}]
    # 100 reached step 1: 10 are still inside the window, 30 left through an exclusion step;
    # of the other 60, 40 moved on: 20 dropped, not 50
    assert _closed(groups, 1) == (60, 40)


def _send(site: LiveServer, messages: list[dict[str, Any]]) -> None:
    report = load_messages(
        site.store, enumerate(messages), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []


def test_the_builder_starts_from_the_journey_funnel(server: LiveServer):
    save_journey(server.store, load_journey(SHOP), "shop.yaml")
    add_user(server.store, "ada@example.it", "a long enough secret", role="viewer")
    messages: list[dict[str, Any]] = []
    n = 0
    for who, events in {
        "card": ["Checkout Started", "Payment Info Entered", "Order Completed"],
        "express": ["Checkout Started", "Express Pay Started", "Order Completed"],
        "failed": ["Checkout Started", "Payment Info Entered", "Payment Failed"],
        "wandered": ["Checkout Started", "Product Viewed", "Payment Info Entered"],  # strict: dropped
    }.items():
        for i, event in enumerate(events):
            n += 1
            messages.append(
                {
                    "type": "track",
                    "messageId": f"f-{n}",
                    "userId": who,
                    "event": event,
                    "timestamp": (T + i * M).isoformat(),
                }
            )
    _send(server, messages)
    client = signed_in(server, ("ada@example.it", "a long enough secret"))
    twin = client.get("/funnels.json").json()  # no funnel named: the first journey funnel
    form, total = twin["form"], twin["result"]["total"]
    assert (form["funnel"], form["journey"], form["order"]) == ("pay", "shop", "strict")
    assert form["exclude"] == ["2-3:Payment Failed"]
    # the journey's list of payment events counts express pay too, which the text form cannot say
    assert [s["contacts"] for s in total["steps"]] == [4, 3, 2]
    assert total["steps"][1]["excluded"] == 1 and total["steps"][0]["dropped"] == 1
    # once the steps are edited, the builder's text is what counts
    edited = client.get("/funnels.json?step=Checkout Started&step=Payment Info Entered&order=ordered").json()
    assert [s["contacts"] for s in edited["result"]["total"]["steps"]] == [4, 3]
