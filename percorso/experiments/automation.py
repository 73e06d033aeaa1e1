"""An automation's split step read as an A/B test: each branch an arm, the automation's goal the
metric, the first branch (or the one named ``control``) the control.

An enrolment belongs to the arm its split sent it down (the engine records the branch in the
enrolment's ``variant``: ``treatment/<branch>`` after a holdout, ``<branch>`` without one) and
converts when it reached the automation's goal. The assignment is per enrolment, by a hash of
the automation, the enrolment and the step, so it is sticky and the same on every worker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from percorso.analytics.painpoints import condition_label
from percorso.automation.definition import Automation, Step
from percorso.automation.stats import goal_groups, uplift
from percorso.automation.store import get_automation
from percorso.experiments.stats import (
    ALPHA,
    SRM_ALPHA,
    Arm,
    compare,
    minimum_detectable_effect,
    needed_per_arm,
    probability_best,
    sample_ratio_p,
)
from percorso.journey.definition import display
from percorso.store import Store

#: the rise the run-time estimate plans for: a tenth more conversions than the control
PLANNED_RISE = 0.10


class ExperimentError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def split_step(automation: Automation, step_id: str | None = None) -> Step:
    splits = [s for s in automation.steps if s.split]
    if not splits:
        raise ExperimentError(
            "step", f"{automation.key} has no split step: add one with a branch per variant to test them"
        )
    if step_id is None:
        return splits[0]
    for step in splits:
        if step.id == step_id:
            return step
    raise ExperimentError(
        "step", f"{step_id!r} is not a split step of {automation.key} ({', '.join(s.id for s in splits)})"
    )


def automation_experiment(
    store: Store, key: str, step_id: str | None = None, *, now: datetime | None = None
) -> dict[str, Any]:
    """The split's arms, their conversion to the goal, each arm against the control with its
    interval, the sample-ratio check, the chance each arm is best, what the sample can detect,
    how long to go, and a verdict in English and Italian."""
    automation, version, status = get_automation(store, key)
    if automation.goal is None:
        raise ExperimentError(
            "goal", f"{key} has no goal: add `goal:` (the event that counts as success) to measure it"
        )
    step = split_step(automation, step_id)
    assert step.split is not None
    with store.session() as s:
        rows = s.rows(
            "SELECT variant, count(*), sum(CASE WHEN goal_at IS NOT NULL THEN 1 ELSE 0 END), min(entered_at), "
            "max(entered_at) FROM enrollments WHERE automation_key = ? AND variant IS NOT NULL GROUP BY variant",
            [key],
        )
        groups = goal_groups(s, key)  # the holdout's uplift, as the automation's stats give it
    names = [b.name for b in step.split]
    exposed = dict.fromkeys(names, 0)
    converted = dict.fromkeys(names, 0)
    first: datetime | None = None
    last: datetime | None = None
    for variant, n, x, since, until in rows:
        parts = str(variant).split("/")
        branch = next((name for name in names if name in parts), None)
        if branch is None:
            continue
        exposed[branch] += int(n)
        converted[branch] += int(x or 0)
        first = since if first is None or since < first else first
        last = until if last is None or until > last else last
    control_name = "control" if "control" in names else names[0]
    arms = [Arm(name, converted[name], exposed[name]) for name in names]
    control = next(a for a in arms if a.name == control_name)
    best = probability_best(arms) if any(a.exposed for a in arms) else [1.0 / len(arms)] * len(arms)
    comparisons = []
    for arm in arms:
        if arm.name == control_name:
            continue
        c = compare(control, arm)
        comparisons.append(
            {
                "arm": arm.name,
                "difference": round(c.difference, 4) if c else None,
                "difference_interval": [round(v, 4) for v in c.difference_interval] if c else None,
                "relative": round(c.ratio - 1, 4) if c and c.ratio is not None else None,
                "relative_interval": [round(v - 1, 4) for v in c.ratio_interval]
                if c and c.ratio_interval
                else None,
                "p_value": float(f"{c.p_value:.4g}") if c else None,
                # several arms against one control: Bonferroni keeps the family's error at 5%
                "significant": bool(c and c.p_value < ALPHA / max(1, len(arms) - 1)),
            }
        )
    srm = sample_ratio_p([a.exposed for a in arms], [b.percent for b in step.split])
    base = control.rate
    per_arm = min(a.exposed for a in arms)
    mde = minimum_detectable_effect(base, per_arm) if base is not None else None
    needed = needed_per_arm(base, min(1.0, base * (1 + PLANNED_RISE))) if base else None
    days = max(1.0, (last - first).total_seconds() / 86_400) if first and last else None
    per_day = sum(a.exposed for a in arms) / days / len(arms) if days else None
    days_left = (
        max(0, round((needed - per_arm) / per_day))
        if needed is not None and per_day and per_day > 0
        else None
    )
    result: dict[str, Any] = {
        "automation": key,
        "name": display(automation.name),
        "version": version,
        "status": status,
        "step": step.id,
        "goal": condition_label(automation.goal, "goal"),
        "control": control_name,
        "arms": [
            {
                "name": a.name,
                "percent": b.percent,
                "exposed": a.exposed,
                "converted": a.converted,
                "rate": round(a.rate, 4) if a.rate is not None else None,
                "probability_best": round(p, 4),
            }
            for a, b, p in zip(arms, step.split, best, strict=True)
        ],
        "comparisons": comparisons,
        "sample_ratio": {
            "p_value": float(f"{srm:.4g}") if srm is not None else None,
            "mismatch": bool(srm is not None and srm < SRM_ALPHA),
        },
        "minimum_detectable_effect": round(mde, 4) if mde is not None else None,
        "planned_rise": PLANNED_RISE,
        "needed_per_arm": needed,
        "days_left": days_left,
        "holdout": uplift(groups),
        "method": "fixed-horizon: two-sided score test and Newcombe interval for the difference, log-adjusted "
        "interval for the ratio, Bonferroni over the arms; chi-square sample-ratio check; Beta posteriors "
        "for the chance to be best. Read the result once each arm has needed_per_arm people.",
    }
    result["verdict"] = verdict(result)
    return result


def _pct(value: float, lang: str, signed: bool = False) -> str:
    text = f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}"
    return (text.replace(".", ",") if lang == "it" else text) + "%"


def _points(value: float, lang: str) -> str:
    text = f"{value * 100:+.1f}"
    return text.replace(".", ",") if lang == "it" else text


def verdict(result: dict[str, Any]) -> dict[str, str]:
    """The result in a sentence, in English and Italian."""
    out = {}
    arms = {a["name"]: a for a in result["arms"]}
    control = arms[result["control"]]
    for lang in ("en", "it"):
        if result["sample_ratio"]["mismatch"]:
            sizes = ", ".join(f"{a['name']} {a['exposed']}" for a in result["arms"])
            out[lang] = (
                f"The arms' sizes ({sizes}) do not match the split asked for (p = {result['sample_ratio']['p_value']}): "
                "fix the assignment before reading the result."
                if lang == "en"
                else f"Le dimensioni dei gruppi ({sizes}) non corrispondono alla suddivisione richiesta "
                f"(p = {result['sample_ratio']['p_value']}): correggi l'assegnazione prima di leggere il risultato."
            )
            continue
        if not any(a["exposed"] for a in result["arms"]):
            out[lang] = (
                "No one has gone through the split yet."
                if lang == "en"
                else "Nessuno è ancora passato dalla suddivisione."
            )
            continue
        if not control["exposed"] or not any(c["difference"] is not None for c in result["comparisons"]):
            sizes = ", ".join(f"{a['name']} {a['exposed']}" for a in result["arms"])
            out[lang] = (
                f"Too early to compare: an arm is still empty ({sizes})."
                if lang == "en"
                else f"Troppo presto per confrontare: un gruppo è ancora vuoto ({sizes})."
            )
            continue
        chosen = min(
            (c for c in result["comparisons"] if c["p_value"] is not None), key=lambda c: c["p_value"]
        )
        arm = arms[chosen["arm"]]
        low, high = chosen["difference_interval"]
        rates = (
            f"{arm['name']} {_pct(arm['rate'], lang)} against {control['name']} {_pct(control['rate'], lang)}"
            if lang == "en"
            else f"{arm['name']} {_pct(arm['rate'], lang)} contro {control['name']} {_pct(control['rate'], lang)}"
        )
        interval = (
            f"{_points(low, lang)} to {_points(high, lang)}"
            if lang == "en"
            else f"da {_points(low, lang)} a {_points(high, lang)}"
        )
        if chosen["significant"]:
            better = chosen["difference"] > 0
            chance = f"{arm['probability_best'] * 100:.0f}%"
            if lang == "en":
                out[lang] = (
                    f"{arm['name']} converts {'better' if better else 'worse'} than {control['name']} to "
                    f"{result['goal']}: {rates}, {_points(chosen['difference'], lang)} points (95% interval "
                    f"{interval}); {chance} likely to be the best arm."
                )
            else:
                out[lang] = (
                    f"{arm['name']} converte {'meglio' if better else 'peggio'} di {control['name']} verso "
                    f"{result['goal']}: {rates}, {_points(chosen['difference'], lang)} punti (intervallo al 95% "
                    f"{interval}); {chance} di probabilità che sia il gruppo migliore."
                )
            continue
        more = result["needed_per_arm"]
        if lang == "en":
            out[lang] = (
                f"No clear difference yet: {rates}; the difference's 95% interval, {interval} points, includes zero."
                + (
                    f" To see a rise of a tenth over {control['name']}, each arm needs about {more:,} people"
                    + (
                        f" (about {result['days_left']} more days at this pace)."
                        if result["days_left"]
                        else "."
                    )
                    if more
                    else ""
                )
            )
        else:
            out[lang] = (
                f"Nessuna differenza chiara per ora: {rates}; l'intervallo al 95% della differenza, {interval} "
                "punti, comprende lo zero."
                + (
                    f" Per vedere un aumento di un decimo rispetto a {control['name']} servono circa "
                    f"{more:,} persone per gruppo".replace(",", ".")
                    + (
                        f" (circa {result['days_left']} giorni in più a questo ritmo)."
                        if result["days_left"]
                        else "."
                    )
                    if more
                    else ""
                )
            )
    return out
