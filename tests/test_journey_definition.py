"""Journey documents: templates, precise validation errors, suggestions, schema, CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from percorso.cli import app
from percorso.journey import (
    TEMPLATES,
    JourneyError,
    json_schema,
    load_journey,
    template_text,
    unknown_event_names,
)
from percorso.journey.definition import display, journey_node

GOOD = """\
version: 1
key: shop
name: Shop
stages:
  - key: browse
    name: {en: Browse, it: Navigare}
    enter:
      any:
        - page: "/p/*"
  - key: buy
    name: Buy
    enter:
      any:
        - event: Order Completed
"""


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_templates_load_with_english_and_italian_names(name):
    journey = load_journey(template_text(name), name)
    assert len(journey.stages) >= 5
    for stage in journey.stages:
        assert display(stage.name, "en") and display(stage.name, "it") != display(stage.name, "en")


def test_template_shapes():
    assert [s.key for s in load_journey(template_text("five-stages")).stages] == [
        "awareness",
        "consideration",
        "decision",
        "purchase",
        "retention",
    ]
    assert load_journey(template_text("loyalty-loop")).progression == "loop"
    assert load_journey(template_text("b2b")).subject == "account"
    five_e = [display(s.name) for s in load_journey(template_text("five-e")).stages]
    assert five_e == ["Entice", "Enter", "Engage", "Exit", "Extend"]


def problems_of(text: str) -> list:
    with pytest.raises(JourneyError) as info:
        load_journey(text, "j.yaml")
    return info.value.problems


def test_misspelt_field_names_its_line_and_path():
    [problem] = problems_of(
        GOOD.replace("        - event: Order Completed", "        - evnt: Order Completed")
    )
    assert (problem.line, problem.field) == (14, "stages[1].enter.any[0]")
    assert "unknown field" in problem.message and "evnt" in problem.message
    assert str(problem).startswith("j.yaml:14: error: stages[1].enter.any[0]")


def test_wrong_types_and_values():
    [problem] = problems_of(GOOD.replace("  - key: buy", "  - key: Buy Now"))
    assert problem.field == "stages[1].key" and problem.line == 10
    [problem] = problems_of(GOOD + "progression: sideways\n")
    assert problem.field == "progression" and "forward" in problem.message
    [problem] = problems_of(GOOD.replace("version: 1", "version: '1'"))
    assert problem.field == "version" and problem.line == 1


def test_semantic_problems_are_all_reported():
    text = GOOD.replace("  - key: buy", "  - key: browse").replace(
        '        - page: "/p/*"', '        - page: "/p/*"\n      at_least: 3'
    )
    problems = problems_of(text)
    messages = {p.field: p.message for p in problems}
    assert "already the key of stages[0]" in messages["stages[1].key"]
    assert "within" in messages["stages[0].enter.within"]
    assert all(p.line for p in problems)


def test_invalid_yaml_and_non_mapping():
    [problem] = problems_of("version: 1\nstages: [\n")
    assert "not valid YAML" in problem.message and problem.line is not None
    [problem] = problems_of("- just\n- a list\n")
    assert "mapping" in problem.message


def test_unknown_event_names_get_a_suggestion():
    text = GOOD.replace("event: Order Completed", "event: Order Complete")
    journey = load_journey(text)
    [warning] = unknown_event_names(
        journey, ["Order Completed", "Product Viewed"], journey_node(text), "j.yaml"
    )
    assert warning.severity == "warning" and warning.suggestion == "Order Completed" and warning.line == 14
    assert unknown_event_names(load_journey(GOOD), ["Order Completed"]) == []


def test_json_schema_describes_the_document():
    schema = json_schema()
    journey = schema["$defs"]["Journey"]
    assert set(journey["required"]) == {"version", "key", "name", "stages"}
    assert "loop" in json.dumps(journey["properties"]["progression"])


def test_cli_init_validate_schema(tmp_path):
    runner = CliRunner()
    target = tmp_path / "journey.yaml"
    result = runner.invoke(app, ["init", "--template", "loyalty-loop", "--output", str(target)])
    assert result.exit_code == 0 and target.read_text() == template_text("loyalty-loop")
    again = runner.invoke(app, ["init", "--output", str(target)])
    assert again.exit_code == 2 and "--force" in again.output
    unknown = runner.invoke(app, ["init", "--template", "seven-stages", "--output", str(tmp_path / "x.yaml")])
    assert unknown.exit_code == 2 and "five-stages" in unknown.output
    valid = runner.invoke(app, ["journey", "validate", str(target)])
    assert valid.exit_code == 0 and "is valid" in valid.output
    target.write_text(GOOD.replace("name: Buy", "nam: Buy"))
    invalid = runner.invoke(app, ["journey", "validate", str(target)])
    assert invalid.exit_code == 2 and ":11: error: stages[1]" in invalid.output
    schema = runner.invoke(app, ["journey", "schema"])
    assert schema.exit_code == 0 and json.loads(schema.output)["title"] == "percorso journey"


def test_the_currency_is_an_iso_code() -> None:
    from percorso.journey import load_journey, template_text
    from percorso.journey.definition import JourneyError

    text = template_text("five-stages")
    assert load_journey(text).currency == "EUR"
    assert load_journey(text.replace("version: 1\n", "version: 1\ncurrency: CHF\n", 1)).currency == "CHF"
    with pytest.raises(JourneyError) as caught:
        load_journey(text.replace("version: 1\n", "version: 1\ncurrency: EUX\n", 1), "shop.yaml")
    problem = caught.value.problems[0]
    assert (
        problem.field == "currency"
        and problem.line == 5
        and "not an ISO 4217 currency code" in problem.message
    )


def test_a_funnel_kpi_names_a_funnel_of_the_journey() -> None:
    from percorso.journey import load_journey, template_text
    from percorso.journey.definition import JourneyError

    text = template_text("five-stages").replace(
        "metric: funnel, funnel: checkout", "metric: funnel, funnel: chekout"
    )
    with pytest.raises(JourneyError) as caught:
        load_journey(text, "shop.yaml")
    problem = caught.value.problems[0]
    assert problem.field == "stages[2].kpis[1].funnel" and "checkout, registration" in problem.message


def test_events_are_named_as_people_say_them():
    from percorso.journey.names import action_name

    journey = load_journey(
        GOOD
        + "events:\n"
        + "  Registration Submitted: {en: Signed up, it: Si è registrato}\n"
        + '  "page: Home": Viewed the home page\n'
        + "  Order Completed: {en: Bought, it: Ha comprato}\n"
    )
    # the journey's own names first, in each language, in any case style of the event
    assert action_name(journey, "Registration Submitted", "it") == "Si è registrato"
    assert action_name(journey, "registration_submitted", "en") == "Signed up"
    assert action_name(journey, "page: Home", "it") == "Viewed the home page"  # a plain string is both
    assert action_name(journey, "Order Completed", "en") == "Bought"
    # then the common names
    assert action_name(journey, "Product Viewed", "it") == "Ha visto un prodotto"
    assert action_name(None, "order-completed", "en") == "Placed an order"
    assert action_name(None, "OrderCompleted", "it") == "Ha fatto un ordine"
    assert action_name(None, "Email Link Clicked", "en") == "Clicked a link in an e-mail"
    # and nothing for what neither names: the page keeps the event as it was sent
    assert action_name(journey, "Referral Sent", "en") is None
    assert action_name(None, "page: Home", "en") is None
    [problem] = problems_of(GOOD + "events:\n  Order Completed: {en: Bought, fr: Acheté}\n")
    assert problem.field.startswith("events") and "fr" in problem.message
    [problem] = problems_of(GOOD + "events:\n  '': Nothing\n")
    assert problem.field.startswith("events")
