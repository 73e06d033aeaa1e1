"""Experiments: the statistics against published worked examples and exact formulas, and an
automation's split read as an A/B test on both engines, through the function, the API, the
dashboard and the CLI."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats
from scipy.special import betaln
from typer.testing import CliRunner

from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine, ManualClock
from percorso.automation.store import save_automation
from percorso.experiments.automation import ExperimentError, automation_experiment
from percorso.experiments.stats import (
    Arm,
    compare,
    minimum_detectable_effect,
    needed_per_arm,
    probability_best,
    sample_ratio_p,
)
from percorso.store import Store
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_automation import MORNING, contact_of, send
from tests.test_dashboard import signed_in


def test_difference_interval_is_newcombes_worked_example():
    # Newcombe (1998), Statistics in Medicine 17:873-890, table II example (a): 56/70 against
    # 48/80, method 10 (score interval, no continuity correction): 0.0524 to 0.3339.
    c = compare(Arm("a", 48, 80), Arm("b", 56, 70))
    assert c is not None
    assert c.difference == pytest.approx(0.2)
    assert c.difference_interval == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert c.ratio == pytest.approx(0.8 / 0.6)
    # Miettinen and Nurminen's score test: under equal rates the restricted estimate is the pooled
    # p, and the variance carries their N / (N - 1) factor; two-sided
    pooled = (56 + 48) / 150
    z = 0.2 / math.sqrt(pooled * (1 - pooled) * (1 / 70 + 1 / 80) * 150 / 149)
    assert c.p_value == pytest.approx(2 * stats.norm.sf(z), rel=1e-3)
    assert compare(Arm("a", 0, 10), Arm("b", 0, 12)).p_value == 1.0  # type: ignore[union-attr]
    assert compare(Arm("a", 0, 0), Arm("b", 3, 10)) is None


def test_sample_ratio_mismatch_by_hand():
    # 50,000 and 50,500 for a 50/50 split: chi2 = 2 x 250^2 / 50,250 = 2.4876, 1 degree of freedom
    chi2 = 2 * 250**2 / 50_250
    assert sample_ratio_p([50_000, 50_500], [50, 50]) == pytest.approx(stats.chi2.sf(chi2, 1), rel=1e-9)
    assert sample_ratio_p([50_000, 50_500], [50, 50]) == pytest.approx(0.1147, abs=1e-4)
    assert sample_ratio_p([50_000, 52_000], [50, 50]) < 0.001  # a broken assignment
    assert sample_ratio_p([30, 70], [30, 70]) == pytest.approx(1.0)
    assert sample_ratio_p([10], [100]) is None


def test_probability_to_be_best_is_evan_millers_closed_form():
    # Evan Miller, "Formulas for Bayesian A/B testing": with A ~ Beta(aA, bA), B ~ Beta(aB, bB),
    # P(B > A) = sum_{i=0}^{aB-1} B(aA+i, bA+bB) / ((bB+i) B(1+i, bB) B(aA, bA)).
    a, b = Arm("a", 40, 1000), Arm("b", 55, 1000)
    aA, bA, aB, bB = 41, 961, 56, 946
    exact = sum(
        math.exp(betaln(aA + i, bA + bB) - math.log(bB + i) - betaln(1 + i, bB) - betaln(aA, bA))
        for i in range(aB)
    )
    p_a, p_b = probability_best([a, b])
    assert p_b == pytest.approx(exact, abs=1e-6) and p_a + p_b == pytest.approx(1.0)
    assert exact == pytest.approx(0.9419, abs=1e-4)
    # three arms: against a million draws from the posteriors
    three = probability_best([a, b, Arm("c", 40, 1000)])
    draws = np.random.default_rng(7).beta([41, 56, 41], [961, 946, 961], size=(1_000_000, 3))
    counted = np.bincount(draws.argmax(axis=1), minlength=3) / 1_000_000
    assert three == pytest.approx(list(counted), abs=0.002)
    assert sum(three) == pytest.approx(1.0) and three[0] == pytest.approx(three[2], abs=1e-3)


def test_power_and_minimum_detectable_effect_by_hand():
    # 10% to 12%, 5% two-sided, 80% power: n = 2 ((z_0.975 + z_0.8) / h)^2 per arm, h Cohen's
    # 2 asin(sqrt(0.12)) - 2 asin(sqrt(0.10))
    h = 2 * math.asin(math.sqrt(0.12)) - 2 * math.asin(math.sqrt(0.10))
    n = 2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / h) ** 2
    assert needed_per_arm(0.10, 0.12) == math.ceil(n) == 3835
    # what that sample detects is the rise it was planned for
    assert minimum_detectable_effect(0.10, math.ceil(n)) == pytest.approx(0.02, abs=1e-4)
    assert needed_per_arm(0.10, 0.10) is None and minimum_detectable_effect(0.0, 100) is None


AB = """
key: subject-test
name: {en: Subject line test, it: Test dell'oggetto}
trigger: {event: Registration Submitted}
goal: {event: Registration Confirmed}
steps:
  - id: subject
    split:
      - {name: one-click, percent: 50, next: a}
      - {name: first-name, percent: 50, next: b}
  - {id: a, tag: one-click, next: later}
  - {id: b, tag: first-name, next: later}
  - {id: later, wait: 7d}
"""


def _run_test(store: Store, classifier: Any) -> dict[str, dict[str, int]]:
    """200 people register; the split sends each down an arm; of the first-name arm 6 in 10
    confirm, of the one-click arm 3 in 10 (by their position in the arm). Returns each arm's
    people and confirmations, as the engine assigned them."""
    clock = ManualClock(MORNING)
    save_automation(store, load_automation(AB), "test")
    engine = Engine(store, clock=clock)
    for n in range(200):
        send(store, classifier, f"p{n}", event="Registration Submitted", at=MORNING)
    engine.run_until_idle()
    with store.session() as s:
        assigned = s.rows("SELECT contact_id, variant FROM enrollments WHERE automation_key = 'subject-test'")
    arm_of = {int(c): str(v) for c, v in assigned}
    counts: dict[str, dict[str, int]] = {"one-click": {"n": 0, "x": 0}, "first-name": {"n": 0, "x": 0}}
    for n in range(200):
        arm = arm_of[contact_of(store, f"p{n}")]
        counts[arm]["n"] += 1
        if counts[arm]["n"] % 10 < (6 if arm == "first-name" else 3):
            counts[arm]["x"] += 1
            send(store, classifier, f"p{n}", event="Registration Confirmed", at=MORNING)
    clock.advance(minutes=5)
    engine.run_until_idle()
    return counts


def test_an_automation_split_read_as_an_ab_test(store: Store, classifier: Any):
    counts = _run_test(store, classifier)
    result = automation_experiment(store, "subject-test")
    arms = {a["name"]: a for a in result["arms"]}
    assert result["control"] == "one-click" and result["goal"] == "Registration Confirmed"
    for name, c in counts.items():
        assert (arms[name]["exposed"], arms[name]["converted"]) == (c["n"], c["x"])
    assert counts["one-click"]["n"] + counts["first-name"]["n"] == 200
    # the same numbers from the library directly
    expected = compare(
        Arm("one-click", counts["one-click"]["x"], counts["one-click"]["n"]),
        Arm("first-name", counts["first-name"]["x"], counts["first-name"]["n"]),
    )
    assert expected is not None
    [c] = result["comparisons"]
    assert c["arm"] == "first-name" and c["difference"] == round(expected.difference, 4)
    assert c["difference_interval"] == [round(v, 4) for v in expected.difference_interval]
    assert c["significant"] and c["difference_interval"][0] > 0
    assert result["sample_ratio"]["p_value"] == pytest.approx(
        sample_ratio_p([counts["one-click"]["n"], counts["first-name"]["n"]], [50, 50]), rel=1e-3
    )
    assert not result["sample_ratio"]["mismatch"]
    assert arms["first-name"]["probability_best"] > 0.99
    assert result["verdict"]["en"].startswith(
        "first-name converts better than one-click to Registration Confirmed"
    )
    assert "95% interval" in result["verdict"]["en"]
    assert result["verdict"]["it"].startswith("first-name converte meglio di one-click")
    with pytest.raises(ExperimentError) as raised:
        automation_experiment(store, "subject-test", "a")
    assert raised.value.field == "step"


def test_the_api_the_page_and_the_cli_read_the_same_test(server: LiveServer, classifier: Any, tmp_path):
    counts = _run_test(server.store, classifier)
    r = server.client().get("/v1/automations/subject-test/experiment")
    assert r.status_code == 200, r.text
    api = r.json()
    assert {a["name"]: a["exposed"] for a in api["arms"]} == {k: v["n"] for k, v in counts.items()}
    assert (
        server.client().get("/v1/automations/subject-test/experiment", params={"step": "a"}).status_code
        == 400
    )
    assert server.client().get("/v1/automations/nothing-here/experiment").status_code == 404
    add_user(server.store, "u@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("u@example.it", "a long enough secret"))
    page = dashboard.get("/automations/subject-test")
    assert page.status_code == 200 and 'id="experiment"' in page.text
    assert api["verdict"]["en"] in page.text.replace("&#39;", "'")
    twin = dashboard.get("/automations/subject-test.json").json()
    assert twin["experiment"]["arms"] == api["arms"]


def test_cli_experiment(tmp_path, classifier: Any):
    from percorso.cli import app
    from percorso.store.duckdb import DuckDBStore

    store = DuckDBStore(tmp_path / "percorso.duckdb")
    store.migrate()
    _run_test(store, classifier)
    store.close()
    runner = CliRunner()
    result = runner.invoke(
        app, ["automation", "experiment", "subject-test", "--data-dir", str(tmp_path), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["control"] == "one-click"
    table = runner.invoke(
        app, ["automation", "experiment", "subject-test", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0 and "first-name converts better" in table.output
    bad = runner.invoke(
        app, ["automation", "experiment", "subject-test", "--step", "a", "--data-dir", str(tmp_path)]
    )
    assert bad.exit_code == 2 and "split step" in bad.output and "Traceback" not in bad.output


def test_the_experiments_page_lists_each_test_with_its_verdict(server: LiveServer, classifier: Any):
    _run_test(server.store, classifier)
    add_user(server.store, "u@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("u@example.it", "a long enough secret"))
    twin = dashboard.get("/experiments.json").json()
    [row] = twin["experiments"]
    assert (row["automation"], row["step"], row["leader"]) == ("subject-test", "subject", "first-name")
    assert row["people"] == 200 and row["verdict"].startswith("first-name converts better")
    page = dashboard.get("/experiments")
    assert page.status_code == 200 and 'data-experiment="subject-test/subject"' in page.text
    dashboard.cookies.set("percorso_lang", "it")
    assert "first-name converte meglio" in dashboard.get("/experiments").text


def test_verdicts_before_there_is_anything_to_compare():
    from percorso.experiments.automation import verdict

    result: dict[str, Any] = {
        "sample_ratio": {"mismatch": False, "p_value": None},
        "arms": [
            {"name": "email", "exposed": 2, "converted": 0, "rate": 0.0, "probability_best": 0.5},
            {"name": "onsite", "exposed": 0, "converted": 0, "rate": None, "probability_best": 0.5},
        ],
        "control": "email",
        "comparisons": [{"arm": "onsite", "difference": None, "difference_interval": None, "p_value": None}],
        "needed_per_arm": None,
        "days_left": None,
        "goal": "Membership Confirmed",
    }
    assert verdict(result)["en"] == "Too early to compare: an arm is still empty (email 2, onsite 0)."
    result["arms"][0]["exposed"] = 0
    assert verdict(result) == {
        "en": "No one has gone through the split yet.",
        "it": "Nessuno è ancora passato dalla suddivisione.",
    }
    result["sample_ratio"] = {"mismatch": True, "p_value": 0.0001}
    assert verdict(result)["en"].startswith("The arms' sizes (email 0, onsite 0) do not match the split")
