"""Pain points, found automatically: where customers are lost or struggle, with evidence.

For every funnel of a journey (checkout, registration, …) and every step in it, seven detectors
look for a place that is significantly worse than its own baseline:

``dropoff``        a segment (platform=ios, …) drops off at a step far more than everyone else;
``dip``            a step's conversion fell during a run of days, counted in visits
                   (:mod:`percorso.analytics.incidents`);
``loop``           customers go back and forth between two steps;
``support``        a step is followed by support contacts (channels support, call-center) far more
                   often than the other steps of the funnel;
``errors``         the same for error events (``*Failed*``, ``*Error*``);
``slow``           a segment takes far longer than everyone else between two steps, within the visit;
``later``          a segment takes the next step far more often only in a later visit.

Beside the funnels, :mod:`percorso.analytics.experience` finds stages whose NPS or CSAT dropped
(``score_drop``) and clicked elements full of rage and dead clicks (``frustration``).

The counting (funnel reach, per-week and per-segment counts, trouble and loop counts) runs as SQL
inside the store; only the small aggregated tables reach Python, where a two-proportion z-test
gives each finding a significance. A finding is reported when ``z >= min_z`` (default 4, a
one-sided p below 0.00004 — strict, because many places are tested) **and** the effect is large
enough to matter (``min_effect``, default 5 percentage points; 1.5x for times).

Each finding carries a one-sentence ``summary`` in the asked language and ``summaries`` in every
language (English and Italian, :mod:`percorso.analytics.summaries`), so a page can switch
language without asking again.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from scipy.stats import norm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep

from percorso.analytics.experience import frustration_spots, score_drops
from percorso.analytics.funnel import Exclusion, FunnelSpec, Step, funnel_in, shared_reach, within_entry
from percorso.analytics.incidents import (
    DAY,
    VISIT_GAP,
    Scan,
    Series,
    candidate_dimensions,
    daily_series,
    day_of,
    find_incidents,
    run_counts,
)
from percorso.analytics.significance import TESTS, Settings, p_value, tested_z
from percorso.analytics.sql import EPOCH, RESOLVED_EVENTS, Sql, condition_sql
from percorso.analytics.summaries import segment_label, segment_labels, summaries
from percorso.journey.definition import Condition, Journey, display, duration_seconds
from percorso.store import Store
from percorso.store.base import Session

# Trouble after a step, unless the journey names its own (``signals``): any case, any separator —
# "Payment Failed", payment_error, "Errore di pagamento", checkout-fallito; contact with support
# by channel (support, call-center, helpdesk, chat …) or by event (a ticket, "Support …").
SUPPORT = (
    "(lower(e.channel) LIKE 'support%' OR lower(e.channel) LIKE '%call%' OR lower(e.channel) LIKE '%help%' "
    "OR lower(e.channel) LIKE '%chat%' OR lower(e.channel) LIKE 'assistenza%' "
    "OR lower(e.event) LIKE '%ticket%' OR lower(e.event) LIKE 'support%' OR lower(e.event) LIKE 'assistenza%')"
)
ERRORS = "(lower(e.event) LIKE '%fail%' OR lower(e.event) LIKE '%error%' OR lower(e.event) LIKE '%fallit%')"
TROUBLE = {"support": SUPPORT, "errors": ERRORS}
TROUBLE_HORIZON = 48 * 3600  # trouble counts up to 48 h after a step (or until the next step)
#: what a funnel's unit counts, as the findings' evidence names it
NOUNS = {"contacts": "contacts", "sessions": "visits", "attempts": "attempts"}
LOOP_HORIZON = 3600  # going back to the previous step within an hour of reaching the next


@dataclass(frozen=True)
class FunnelDef:
    key: str
    name: str
    steps: list[Step]
    window_seconds: int
    order: str = "ordered"
    exclusions: tuple[Exclusion, ...] = ()
    unit: str = "contacts"  # contacts | sessions | attempts (percorso.analytics.funnel)
    session_gap: int = 30 * 60


def journey_funnels(journey: Journey, lang: str = "en") -> list[FunnelDef]:
    out = []
    for f in journey.funnels:
        labels = f.labels or [condition_label(c) for c in f.steps]
        out.append(
            FunnelDef(
                f.key,
                display(f.name, lang),
                [Step(lb, c) for lb, c in zip(labels, f.steps, strict=True)],
                duration_seconds(f.window),
                f.order,
                tuple(Exclusion(Step(condition_label(x), x), x.after, x.before) for x in f.exclude),
                f.unit,
                duration_seconds(f.session_gap),
            )
        )
    return out


def condition_label(condition: Condition, fallback: str = "step") -> str:
    """A condition as a short label: the event (or page, name, type, channel) it matches."""
    for name in ("event", "page", "name", "type", "channel"):
        value = getattr(condition, name)
        if value is not None:
            return value if isinstance(value, str) else " | ".join(value)
    return fallback


def find_pain_points(
    store: Store,
    journey: Journey,
    *,
    start: datetime,
    end: datetime,
    as_of: datetime | None = None,
    settings: Settings = Settings(),
    lang: str = "en",
    contacts: Sql | None = None,
) -> dict[str, Any]:
    """Every funnel of ``journey`` through every detector, ranked by :func:`impact`; with
    ``contacts`` (a SELECT of contact ids: a persona, a channel, a saved segment), over their
    events, answers and clicks only."""
    as_of = as_of or datetime.now(UTC)
    tested = [0]
    token = TESTS.set(tested)
    try:
        found = _find(store, journey, start, end, as_of, settings, contacts, tested)
    finally:
        TESTS.reset(token)
    return in_language(found, journey, lang)


def in_language(found: dict[str, Any], journey: Journey, lang: str) -> dict[str, Any]:
    """A :func:`find_pain_points` result with its names and summaries in ``lang``, as a new
    dict (``found`` is left as it is: one result serves every language of a page)."""
    funnels = {f.key: display(f.name, lang) for f in journey.funnels}
    stages = {st.key: display(st.name, lang) for st in journey.stages}
    pains = []
    for finding in found["pain_points"]:
        named = {**finding, "summary": finding["summaries"].get(lang, finding["summaries"]["en"])}
        if finding.get("segment"):
            named["segment_label"] = segment_label(finding["segment"], lang)
        if finding.get("funnel") in funnels:
            named["funnel_name"] = funnels[finding["funnel"]]
        elif finding["kind"] == "score_drop" and finding.get("stage") in stages:
            named["step"] = stages[finding["stage"]]
        pains.append(named)
    notes = [{**n, "summary": n["summaries"].get(lang, n["summaries"]["en"])} for n in found["notes"]]
    return {**found, "notes": notes, "pain_points": pains}


def _find(
    store: Store,
    journey: Journey,
    start: datetime,
    end: datetime,
    as_of: datetime,
    settings: Settings,
    contacts: Sql | None,
    tested: list[int],
) -> dict[str, Any]:
    from percorso.analytics.customer import order_events

    findings: list[dict[str, Any]] = []
    dimensions: dict[str, list[str]] = {}
    notes: list[dict[str, Any]] = []  # what the data allows (same-second steps starving a funnel)
    funnels = journey_funnels(journey)
    orders = order_events(journey)
    if funnels:
        # One session: the temporary tables live on its connection.
        with store.session() as s:
            s.tune_for_analytics()
            longest = max(f.window_seconds for f in funnels)
            with _trouble_events(
                s, journey, start, end + timedelta(seconds=longest + TROUBLE_HORIZON), contacts
            ) as trouble:
                for f in funnels:
                    spec = FunnelSpec(
                        steps=f.steps,
                        start=start,
                        end=end,
                        window_seconds=f.window_seconds,
                        order=f.order,
                        exclusions=f.exclusions,
                        as_of=as_of,
                        journey=journey,  # for the `persona` dimension
                        contacts=contacts,
                        unit=f.unit,
                        session_gap=f.session_gap,
                    )
                    found, dimensions[f.key] = _detect(s, trouble, f, spec, settings, orders, notes)
                    findings += found
    with store.session() as s:
        s.tune_for_analytics()
        findings += score_drops(s, journey, start, end, settings, contacts=contacts)
        findings += frustration_spots(s, journey, start, end, settings, contacts)
    # Money at stake where the journey has orders with a revenue: orders lost times the period's
    # average order value, in the journey's currency.
    with store.session() as s:
        aov = average_order_value(s, orders, start, end)
    for finding in findings:
        if "orders_lost" in finding:
            finding["value_at_stake"] = round(finding["orders_lost"] * aov[0], 2) if aov else None
            finding["currency"] = journey.currency
            finding["average_order_value"] = round(aov[0], 2) if aov else None
    findings = _false_discoveries_out(findings, tested[0], settings.fdr)
    findings.sort(key=impact)
    for rank, finding in enumerate(findings, 1):
        finding["rank"] = rank
    return {
        "journey": journey.key,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "thresholds": {
            "min_z": settings.min_z,
            "min_effect": settings.min_effect,
            "min_slow_ratio": settings.min_slow_ratio,
            "min_contacts": settings.min_contacts,
            "fdr": settings.fdr,
            "cells_tested": tested[0],
        },
        "funnels": [f.key for f in journey_funnels(journey)],
        # the segments compared in each funnel: the asked dimensions, or those found in the data
        "dimensions": dimensions,
        "notes": notes,
        "pain_points": findings,
    }


def impact(finding: dict[str, Any]) -> tuple[float, float, float, float]:
    """The ranking key, biggest impact first: money at stake, then completed funnels lost (a
    drop-off or an incident), then contacts affected (the findings that lose no step: slowness,
    loops, errors, support, scores, clicks), then the strength of the evidence."""
    return (
        -(finding.get("value_at_stake") or 0.0),
        -(finding.get("conversions_lost") or 0.0),
        -finding["contacts_affected"],
        -finding["z"],
    )


def _finding(kind: str, f: FunnelDef, k: int, **fields: Any) -> dict[str, Any]:
    to = f.steps[k].label if k < len(f.steps) else None
    step = f"{f.steps[k - 1].label} → {to}" if to and kind not in TROUBLE else f.steps[k - 1].label
    z = round(fields.pop("z"), 2)
    p = fields.pop("p", None)
    texts = summaries(kind, fields.pop("facts"))
    segment = fields.get("segment")
    return {
        # the same problem found again (another period, another language) has the same key
        "key": "|".join([kind, f.key, str(k), json.dumps(segment, sort_keys=True) if segment else ""]),
        "kind": kind,
        "funnel": f.key,
        "funnel_name": f.name,
        "step": step,
        "step_index": k,
        "segment": fields.get("segment"),
        "segment_label": segment_label(fields.pop("segment", None)),
        "when": fields.pop("when", None),
        "contacts_affected": round(fields.pop("affected")),
        "counted_in": fields.pop("counted_in", NOUNS[f.unit]),  # what contacts_affected counts
        "z": z,
        "p_value": float(f"{p if p is not None else p_value(z):.3g}"),
        **fields,
        "summary": texts["en"],
        "summaries": texts,
    }


def trouble_sql(s: Session, journey: Journey) -> tuple[Sql, Sql]:
    """The predicates of support contacts and of errors: the journey's ``signals``, or the defaults."""
    signals = journey.signals
    out = []
    for kind, default in (("support", SUPPORT), ("errors", ERRORS)):
        conditions = getattr(signals, kind) if signals is not None else None
        if not conditions:
            out.append(Sql(default))
            continue
        parts = [condition_sql(s, c) for c in conditions]
        out.append(
            Sql("(" + " OR ".join(f"({p.text})" for p in parts) + ")", [x for p in parts for x in p.params])
        )
    return out[0], out[1]


@contextmanager
def _trouble_events(
    s: Session, journey: Journey, start: datetime, end: datetime, contacts: Sql | None = None
) -> Iterator[str]:
    """Support contacts and error events of the period (and the horizon after it), read once
    for every funnel into a temporary table; yields its name."""
    name = f"percorso_trouble_{uuid.uuid4().hex[:12]}"
    support, errors = trouble_sql(s, journey)
    only = f" AND i.contact_id IN ({contacts.text})" if contacts is not None else ""
    s.execute(
        f"CREATE TEMPORARY TABLE {name} AS SELECT i.contact_id AS cid, {EPOCH} AS ts, "
        f"CASE WHEN {support.text} THEN 1 ELSE 0 END AS support, CASE WHEN {errors.text} THEN 1 ELSE 0 END AS errors, "
        f"e.event, e.channel FROM {RESOLVED_EVENTS} WHERE e.timestamp >= ? AND e.timestamp < ? "
        f"AND ({support.text} OR {errors.text}){only}",
        [
            *support.params,
            *errors.params,
            start,
            end,
            *support.params,
            *errors.params,
            *(contacts.params if contacts else []),
        ],
    )
    yield name
    s.execute(f"DROP TABLE {name}")


def _detect(
    s: Session,
    trouble: str,
    f: FunnelDef,
    spec: FunnelSpec,
    cfg: Settings,
    orders: Sequence[str] = (),
    notes: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every detector on one funnel, and the dimensions its segments were compared over. The
    funnel's events and reach are computed once per segment dimension (into temporary tables)
    and every detector counts over them."""
    findings: list[dict[str, Any]] = []
    completion: list[float | None] = []
    dims = funnel_dimensions(s, f, spec, cfg)
    # The funnel's events are read once for every dimension, and its reach computed per dimension.
    backs = f"percorso_backs_{uuid.uuid4().hex[:12]}"
    going_back: list[Series] = []  # per day, how many went back to a browsing step
    with shared_reach(s, spec, dims or (None,)) as reach:
        try:
            for i, dim in enumerate(dims or (None,)):
                with reach.base(i) as base:
                    if i == 0:  # these do not depend on the segments
                        _back_table(s, base, f, spec, backs)
                        findings += _trouble_and_loops(s, base, trouble, f, spec, cfg, backs)
                        completion = _completion(s, base, spec)
                        going_back += _back_series(s, base, backs, f, spec, None, cfg)
                    if dim is not None:
                        findings += _dropoff_and_slow(s, base, f, spec, dim, cfg)
                        findings += _browsing_loops(s, base, backs, f, dim, cfg, spec.journey)
                        going_back += _back_series(s, base, backs, f, spec, dim, cfg)
        finally:
            s.execute(f"DROP TABLE IF EXISTS {backs}")
    dated_loops = _dated_loops(f, spec, going_back, cfg)
    # A segment's loop that a dated rise of the same segment explains is that rise, seen again
    # over the whole period: reported once, with its dates.
    rises = {(p["step_index"], json.dumps(p["segment"], sort_keys=True)) for p in dated_loops}
    findings = [
        p
        for p in findings
        if not (p["kind"] == "loop" and (p["step_index"], json.dumps(p["segment"], sort_keys=True)) in rises)
    ]
    dips = _dips(s, f, spec, [d for d in dims if d not in ("persona", "first_campaign")], cfg, notes)
    # A segment's drop at a step that a dated incident of the same segment explains is that
    # incident, seen again over the whole period: reported once, with its dates.
    dated = {(p["step_index"], json.dumps(p["segment"], sort_keys=True)) for p in dips}
    findings = [
        p
        for p in findings
        if not (
            p["kind"] == "dropoff" and (p["step_index"], json.dumps(p["segment"], sort_keys=True)) in dated
        )
    ]
    findings = _one_dimension_each(findings) + dips + dated_loops
    # A segment that comes back later at a step where it also drops, had an incident or is slow
    # within the visit is one problem: reported once, as that, with the share who came back later.
    lost = {
        (p["step_index"], json.dumps(p["segment"], sort_keys=True)): p
        for p in sorted(findings, key=lambda p: p["kind"] == "slow")  # a drop before slowness
        if p["kind"] in (*LOST_STEPS, "slow") and p["segment"]
    }
    kept = []
    for p in findings:
        same = lost.get((p["step_index"], json.dumps(p["segment"], sort_keys=True)))
        if p["kind"] == "later" and same is not None:
            same["evidence"]["segment_share_later"] = p["evidence"]["segment_share_later"]
            same["evidence"]["baseline_share_later"] = p["evidence"]["baseline_share_later"]
        else:
            kept.append(p)
    findings = kept
    # A contact lost at a step is a completed funnel lost as often as those past the step
    # completed it; in a funnel that ends in an order, an order lost.
    order = _ends_in_an_order(f, orders)
    for finding in findings:
        k = finding["step_index"]
        if finding["kind"] in LOST_STEPS and completion and k < len(completion) and completion[k] is not None:
            finding["conversions_lost"] = round(finding["contacts_affected"] * completion[k], 1)
            if order:
                finding["orders_lost"] = finding["conversions_lost"]
    return findings, list(dims)


#: The findings whose contacts_affected are contacts who did not take a step they would have.
LOST_STEPS = ("dropoff", "dip")


def _ends_in_an_order(f: FunnelDef, orders: Sequence[str]) -> bool:
    event = f.steps[-1].condition.event
    names = [event] if isinstance(event, str) else list(event or [])
    return bool(names) and all(name in orders for name in names)


def _completion(s: Session, base: Sql, spec: FunnelSpec) -> list[float | None]:
    """For each step index k (1-based transitions k → k+1), the share of those who reached step
    k+1 that went on to the funnel's last step: what a contact lost at that transition was worth
    in completed funnels."""
    total = funnel_in(s, replace(spec, breakdown=None), base, trend=False, distribution=False)["total"]
    steps = [int(st["contacts"]) for st in total["steps"]]
    if not steps:
        return []
    last = steps[-1]
    return [None, *((last / reached) if reached else None for reached in steps[1:])]


def average_order_value(
    s: Session, orders: Sequence[str], start: datetime, end: datetime
) -> tuple[float, int] | None:
    """The mean ``revenue`` of the orders in ``[start, end)`` that carry one, and how many did."""
    number, number_params = s.json_number("e.properties", "revenue")
    marks = ", ".join("?" for _ in orders)
    count, total = s.rows(
        f"SELECT count(v), sum(v) FROM (SELECT {number} AS v FROM events e WHERE e.type = 'track' "
        f"AND e.event IN ({marks}) AND e.timestamp >= ? AND e.timestamp < ?) o",
        [*number_params, *orders, start, end],
    )[0]
    return (float(total) / int(count), int(count)) if count else None


def _dropoff_and_slow(
    s: Session, base: Sql, f: FunnelDef, spec: FunnelSpec, dim: str, cfg: Settings
) -> list[dict[str, Any]]:
    findings = []
    n = len(f.steps)
    result = funnel_in(s, replace(spec, breakdown=dim, top=20), base, trend=False, distribution=False)
    groups = [
        g for g in (result["breakdown"] or {}).get("groups", []) if g["group"] not in ("(other)", "(none)")
    ]
    all_groups = (result["breakdown"] or {}).get("groups", [])
    for k in range(1, n):
        totals = _closed(all_groups, k)
        for g in groups:
            reached, moved = _closed([g], k)
            found = _against_rest(
                "dropoff", f, k, {dim: g["group"]}, (reached - moved, reached),
                (totals[0] - totals[1], totals[0]), cfg, ("segment_dropoff", "baseline_dropoff"),
            )  # fmt: skip
            findings += [found] if found else []
    findings += _slow(s, base, f, dim, cfg)
    return findings


def _against_rest(
    kind: str,
    f: FunnelDef,
    k: int,
    segment: dict[str, Any],
    counted: tuple[int, int],
    total: tuple[int, int],
    cfg: Settings,
    names: tuple[str, str],
) -> dict[str, Any] | None:
    """A segment's share at step ``k`` (``counted``: how many of how many: dropped, came back
    later, went back) against the rest of the contacts (``total`` less the segment's), as a
    finding of ``kind`` when the z-test and the effect pass; ``names`` are the evidence's names
    for the two shares."""
    x, n = counted
    rest_x, rest_n = total[0] - x, total[1] - n
    if n < cfg.min_contacts or rest_n < cfg.min_contacts:
        return None
    share, baseline = x / n, rest_x / rest_n
    z = tested_z(x, n, rest_x, rest_n)
    if z < cfg.min_z or share - baseline < cfg.min_effect:
        return None
    return _finding(
        kind,
        f,
        k,
        z=z,
        segment=segment,
        affected=n * (share - baseline),
        evidence={
            names[0]: round(share, 4),
            names[1]: round(baseline, 4),
            f"segment_{NOUNS[f.unit]}": n,
            f"baseline_{NOUNS[f.unit]}": rest_n,
        },
        facts={
            "segment": segment_labels(segment),
            "step": f.steps[k - 1].label,
            "next": f.steps[k].label,
            "rate": share,
            "share": share,
            "baseline": baseline,
        },
    )


def _closed(groups: list[dict[str, Any]], k: int) -> tuple[int, int]:
    """(contacts who reached step k and whose window closed, of those who reached step k+1);
    contacts an exclusion step took out are in neither."""
    reached = moved = 0
    for g in groups:
        step = g["steps"][k - 1]
        reached += step["contacts"] - step.get("in_progress", 0) - step.get("excluded", 0)
        moved += g["steps"][k]["contacts"]
    return reached, moved


def _slow(s: Session, base: Sql, f: FunnelDef, dim: str, cfg: Settings) -> list[dict[str, Any]]:
    """Per segment and transition k→k+1: steps taken within the visit (the next step within
    :data:`VISIT_GAP`) that are slower than the step's usual median (``slow``), and the share
    that took the next step only in a later visit (``later``: came back later, once)."""
    n = len(f.steps)
    findings = []
    gap = VISIT_GAP

    def took(k: int) -> str:
        return f"(t{k + 1} - t{k})"

    def within(k: int) -> str:
        return f"CASE WHEN {took(k)} <= {gap} THEN {took(k)} END"

    medians = ", ".join(
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY {within(k)}) AS m{k}" for k in range(1, n)
    )
    overall = s.dicts(base.text + f" SELECT {medians} FROM reached", base.params)[0]
    counts = ", ".join(
        f"count({within(k)}) AS n{k}, sum(CASE WHEN {took(k)} <= {gap} AND {took(k)} > ? THEN 1 ELSE 0 END) "
        f"AS slow{k}, percentile_cont(0.5) WITHIN GROUP (ORDER BY {within(k)}) AS med{k}, "
        f"count(t{k + 1}) AS all{k}, sum(CASE WHEN {took(k)} > {gap} THEN 1 ELSE 0 END) AS later{k}"
        for k in range(1, n)
    )
    thresholds = [float(overall[f"m{k}"]) if overall[f"m{k}"] is not None else 0.0 for k in range(1, n)]
    rows = s.dicts(
        base.text + f" SELECT bd AS grp, {counts} FROM reached GROUP BY bd", [*base.params, *thresholds]
    )
    for k in range(1, n):
        total_n = sum(int(r[f"n{k}"] or 0) for r in rows)
        total_slow = sum(int(r[f"slow{k}"] or 0) for r in rows)
        total_all = sum(int(r[f"all{k}"] or 0) for r in rows)
        total_later = sum(int(r[f"later{k}"] or 0) for r in rows)
        median_all = overall.get(f"m{k}")
        for r in rows:
            if r["grp"] in ("(none)", "(other)"):
                continue
            segment = {dim: r["grp"]}
            counted = (int(r[f"later{k}"] or 0), int(r[f"all{k}"] or 0))
            later = _against_rest(
                "later", f, k, segment, counted, (total_later, total_all), cfg,
                ("segment_share_later", "baseline_share_later"),
            )  # fmt: skip
            findings += [later] if later else []
            g_n, g_slow = int(r[f"n{k}"] or 0), int(r[f"slow{k}"] or 0)
            rest_n, rest_slow = total_n - g_n, total_slow - g_slow
            if g_n < cfg.min_contacts or rest_n < cfg.min_contacts or not median_all:
                continue
            ratio = float(r[f"med{k}"] or 0) / float(median_all)
            z = tested_z(g_slow, g_n, rest_slow, rest_n)
            if z >= cfg.min_z and ratio >= cfg.min_slow_ratio:
                findings.append(
                    _finding(
                        "slow",
                        f,
                        k,
                        z=z,
                        segment=segment,
                        affected=g_slow - g_n * (rest_slow / rest_n),
                        evidence={
                            "segment_median_seconds": round(float(r[f"med{k}"]), 1),
                            "overall_median_seconds": round(float(median_all), 1),
                            "segment_share_slower_than_median": round(g_slow / g_n, 4),
                            "baseline_share_slower_than_median": round(rest_slow / rest_n, 4),
                            f"segment_{NOUNS[f.unit]}": g_n,
                        },
                        facts={
                            "segment": segment_labels(segment),
                            "step": f.steps[k - 1].label,
                            "next": f.steps[k].label,
                            "ratio": ratio,
                        },
                    )
                )
    return findings


def _effect(p: dict[str, Any]) -> float:
    ev = p["evidence"]
    if p["kind"] == "dropoff":
        return float(ev["segment_dropoff"] - ev["baseline_dropoff"])
    if p["kind"] == "later":
        return float(ev["segment_share_later"] - ev["baseline_share_later"])
    if p["kind"] == "loop":
        return float(ev["share_going_back"] - ev["baseline_share_going_back"])
    return float(ev["segment_median_seconds"] / ev["overall_median_seconds"])


def _one_dimension_each(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segments of two dimensions often describe the same people (channel ``app`` is platforms
    ``ios`` and ``android``): for each step and kind, only the dimension whose segment differs
    most from the rest is reported, so one problem is not listed once per way of naming it."""
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for p in findings:
        if p["kind"] in SEGMENTED and p["segment"]:
            dim = next(iter(p["segment"]))
            where = (p["kind"], p["step_index"])
            if where not in best or _effect(p) > best[where][0]:
                best[where] = (_effect(p), dim)
    return [
        p
        for p in findings
        if p["kind"] not in SEGMENTED
        or not p["segment"]
        or next(iter(p["segment"])) == best[(p["kind"], p["step_index"])][1]
    ]


def funnel_dimensions(s: Session, f: FunnelDef, spec: FunnelSpec, cfg: Settings) -> tuple[str, ...]:
    """The dimensions to compare segments over: the settings', or those found in the data."""
    if cfg.dimensions is not None:
        return cfg.dimensions
    return tuple(candidate_dimensions(s, f.steps, spec.start, spec.end))


def _starved_note(f: FunnelDef, k: int, share: float) -> dict[str, Any]:
    step, nxt = f.steps[k - 1].label, f.steps[k].label
    pct = f"{share:.0%}"
    return {
        "kind": "same_second",
        "funnel": f.key,
        "step_index": k,
        "share": round(share, 4),
        "summaries": {
            "en": f"{f.name}: in {pct} of the visits that went from {step} to {nxt}, {nxt} is stamped in "
            f"the same second as {step} or up to a minute before it, and an ordered funnel does not count "
            "them; `order: any` on this funnel counts them.",
            "it": f"{f.name}: nel {pct} delle visite passate da «{step}» a «{nxt}», «{nxt}» ha lo stesso "
            f"secondo di «{step}» o fino a un minuto prima, e un funnel ordinato non le conta; "
            "con `order: any` su questo funnel vengono contate.",
        },
    }


def _dips(
    s: Session,
    f: FunnelDef,
    spec: FunnelSpec,
    dims: Sequence[str],
    cfg: Settings,
    notes: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Runs of days in which a step converted worse, for everyone or in one segment, counted in
    visits (:mod:`percorso.analytics.incidents`)."""
    subject = spec.journey.subject if spec.journey is not None else "contact"
    as_of = spec.as_of or datetime.now(UTC)
    day0, series, early = daily_series(
        s, subject, f.steps, f.window_seconds, dims, spec.start, spec.end, as_of, contacts=spec.contacts
    )
    found, _ = find_incidents(series, fdr=cfg.fdr, min_effect=cfg.min_effect, min_attempts=cfg.min_contacts)
    if notes is not None and f.order != "any":
        for k, (converted, only_early) in sorted(early.items()):
            if only_early >= cfg.min_contacts and only_early >= 0.05 * converted:
                notes.append(_starved_note(f, k, only_early / converted))
    findings = []
    for sc in found:
        k, (n_in, x_in, n_out, x_out), segment, when = _run(sc, day0)
        low, high = confint_proportions_2indep(x_out, n_out, x_in, n_in, method="newcomb", compare="diff")
        findings.append(
            _finding(
                "dip",
                f,
                k,
                z=_z_of(sc.p),
                p=sc.p,
                segment=segment,
                when=when,
                affected=n_in * (x_out / n_out - x_in / n_in),
                counted_in="visits",
                evidence={
                    "unit": "visits",
                    "conversion_during": round(x_in / n_in, 4),
                    "conversion_otherwise": round(x_out / n_out, 4),
                    "difference": round(x_out / n_out - x_in / n_in, 4),
                    "difference_interval": [round(float(low), 4), round(float(high), 4)],
                    "visits_during": n_in,
                    "visits_otherwise": n_out,
                    "days": sc.last - sc.first + 1,
                    "overdispersion": round(sc.dispersion, 2),
                },
                facts={
                    "segment": segment_labels(segment),
                    "step": f.steps[k - 1].label,
                    "next": f.steps[k].label,
                    "rate": x_in / n_in,
                    "baseline": x_out / n_out,
                    "start": day_of(day0, sc.first),
                    "end": day_of(day0, sc.last),
                },
            )
        )
    return findings


def _run(sc: Scan, day0: int) -> tuple[int, tuple[int, int, int, int], dict[str, Any] | None, dict[str, Any]]:
    """A run of days the scan found: its step, the counts in it and in the rest of the period,
    its segment and its dates (a dip and a dated loop say them alike)."""
    sr = sc.series
    when = {
        "start": day_of(day0, sc.first).isoformat(),
        "end": day_of(day0, sc.last).isoformat(),
        "from_period_start": sc.first == 0,
        "to_period_end": sc.last == len(sr.attempts) - 1,
    }
    return sr.k, run_counts(sr, sc.first, sc.last), ({sr.dim: sr.value} if sr.dim else None), when


def _z_of(p: float) -> float:
    """The one-sided z score of a p-value (for ranking beside the z-tested findings)."""
    return float(norm.isf(max(p, 1e-300)))


def _back_table(s: Session, base: Sql, f: FunnelDef, spec: FunnelSpec, name: str) -> None:
    """Per entry that reached step k+1, whether it went back to step k within an hour
    (``back{k}``), into the temporary table ``name``: read once, counted overall and per segment."""
    backs = ", ".join(
        f"max(CASE WHEN ev.s{k} = 1 AND ev.ts > r.t{k + 1} AND ev.ts <= r.t{k + 1} + {LOOP_HORIZON} "
        f"THEN 1 ELSE 0 END) AS back{k}"
        for k in range(1, len(f.steps))
    )
    s.execute(
        f"CREATE TEMPORARY TABLE {name} AS {base.text} "
        f"SELECT r.cid, r.ent, {backs} FROM reached r JOIN ev ON ev.cid = r.cid"
        f"{within_entry(spec, 'ev', 'r')} GROUP BY r.cid, r.ent",
        base.params,
    )


def _browsing_steps(f: FunnelDef, journey: Journey | None) -> list[int]:
    return [k for k in range(1, len(f.steps)) if is_browsing(f.steps[k - 1].condition, journey)]


def _back_series(
    s: Session, base: Sql, backs: str, f: FunnelDef, spec: FunnelSpec, dim: str | None, cfg: Settings
) -> list[Series]:
    """Per browsing step k, day by day (the day step k+1 was reached): how many reached k+1 and
    how many of them did *not* go back to k within the hour, for everyone (``dim`` None) or per
    segment of ``dim``: a run of days where fewer stayed is a rise of the loop, found by the
    same scan as an incident (:func:`percorso.analytics.incidents.find_incidents`)."""
    steps = _browsing_steps(f, spec.journey)
    if not steps:
        return []
    as_of = spec.as_of or datetime.now(UTC)
    last = min(spec.end, as_of - timedelta(seconds=LOOP_HORIZON))
    day0 = int(spec.start.timestamp() // DAY)
    days = max(0, math.ceil(last.timestamp() / DAY) - day0)
    if days <= 0:
        return []
    out = []
    for k in steps:
        rows = s.rows(
            base.text + f" SELECT CAST(floor(r.t{k + 1} / {DAY}) AS INTEGER) - ? AS day, r.bd, count(*), "
            f"sum(coalesce(b.back{k}, 0)) FROM reached r LEFT JOIN {backs} b ON b.cid = r.cid AND b.ent = r.ent "
            f"WHERE r.t{k + 1} >= ? AND r.t{k + 1} < ? GROUP BY 1, 2",
            [*base.params, day0, spec.start.timestamp(), last.timestamp()],
        )
        groups: dict[str | None, tuple[np.ndarray, np.ndarray]] = {}
        for day, value, moved, back in rows:
            key = None if dim is None else value
            if key in ("(none)", "(other)"):
                continue
            if key not in groups:
                groups[key] = (np.zeros(days, dtype=np.int64), np.zeros(days, dtype=np.int64))
            groups[key][0][int(day)] += int(moved)
            groups[key][1][int(day)] += int(moved) - int(back or 0)
        for key, (moved_by_day, stayed) in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if moved_by_day.sum() >= cfg.min_contacts:
                out.append(Series(k, dim, key, moved_by_day, stayed))
    return out


def _dated_loops(f: FunnelDef, spec: FunnelSpec, series: list[Series], cfg: Settings) -> list[dict[str, Any]]:
    """Runs of days in which going back to a browsing step rose against the rest of the period,
    for everyone or in one segment."""
    if not series:
        return []
    found, _ = find_incidents(series, fdr=cfg.fdr, min_effect=cfg.min_effect, min_attempts=cfg.min_contacts)
    day0 = int(spec.start.timestamp() // DAY)
    findings = []
    for sc in found:
        if _mix_explains(sc, series, cfg.min_effect):
            continue
        k, (n_in, stayed_in, n_out, stayed_out), segment, when = _run(sc, day0)
        back_in, back_out = n_in - stayed_in, n_out - stayed_out  # the series counts who stayed
        low, high = confint_proportions_2indep(
            back_in, n_in, back_out, n_out, method="newcomb", compare="diff"
        )
        share, baseline = back_in / n_in, back_out / n_out
        findings.append(
            _finding(
                "loop",
                f,
                k,
                z=_z_of(sc.p),
                p=sc.p,
                segment=segment,
                when=when,
                affected=n_in * (share - baseline),
                evidence={
                    "share_going_back": round(share, 4),
                    "baseline_share_going_back": round(baseline, 4),
                    "difference": round(share - baseline, 4),
                    "difference_interval": [round(float(low), 4), round(float(high), 4)],
                    f"segment_{NOUNS[f.unit]}": n_in,
                    f"baseline_{NOUNS[f.unit]}": n_out,
                    "days": sc.last - sc.first + 1,
                },
                facts={
                    "segment": segment_labels(segment),
                    "step": f.steps[k - 1].label,
                    "next": f.steps[k].label,
                    "share": share,
                    "baseline": baseline,
                    "start": day_of(day0, sc.first),
                    "end": day_of(day0, sc.last),
                },
            )
        )
    return findings


def _mix_explains(sc: Scan, series: list[Series], min_effect: float) -> bool:
    """Whether everyone's rise in days ``sc.first..sc.last`` is only a change of who came: for
    some dimension whose segments cover the run, the share expected from each segment's own
    rate outside the run (direct standardisation) is within ``min_effect`` of the share seen."""
    whole, a, b = sc.series, sc.first, sc.last
    if whole.dim is not None:
        return False
    n_in, stayed_in, _, _ = run_counts(whole, a, b)
    if not n_in:
        return False
    seen = 1 - stayed_in / n_in
    for dim in sorted({sr.dim for sr in series if sr.dim is not None and sr.k == whole.k}):
        expected = covered = 0.0
        for sr in series:
            if sr.k != whole.k or sr.dim != dim:
                continue
            part_in, _, part_out, stayed_out = run_counts(sr, a, b)
            if not part_in or not part_out:
                continue
            expected += part_in * (1 - stayed_out / part_out)
            covered += part_in
        if covered >= 0.9 * n_in and seen - expected / covered < min_effect:
            return True
    return False


def _browsing_loops(
    s: Session, base: Sql, backs: str, f: FunnelDef, dim: str, cfg: Settings, journey: Journey | None
) -> list[dict[str, Any]]:
    """Going back to a browsing step is how people shop, so it is judged against its own
    baseline: a segment that goes back far more often than everyone else at the same step."""
    steps = _browsing_steps(f, journey)
    if not steps:
        return []
    counts = ", ".join(
        f"count(r.t{k + 1}) AS moved{k}, sum(coalesce(b.back{k}, 0)) AS back{k}" for k in steps
    )
    rows = s.dicts(
        base.text
        + f" SELECT r.bd AS grp, {counts} FROM reached r LEFT JOIN {backs} b ON b.cid = r.cid AND b.ent = r.ent "
        "GROUP BY r.bd",
        base.params,
    )
    findings = []
    for k in steps:
        total_n = sum(int(r[f"moved{k}"] or 0) for r in rows)
        total_x = sum(int(r[f"back{k}"] or 0) for r in rows)
        for r in rows:
            if r["grp"] in ("(none)", "(other)"):
                continue
            counted = (int(r[f"back{k}"] or 0), int(r[f"moved{k}"] or 0))
            loop = _against_rest(
                "loop", f, k, {dim: r["grp"]}, counted, (total_x, total_n), cfg,
                ("share_going_back", "baseline_share_going_back"),
            )  # fmt: skip
            findings += [loop] if loop else []
    return findings


def _trouble_and_loops(
    s: Session, base: Sql, trouble: str, f: FunnelDef, spec: FunnelSpec, cfg: Settings, backs: str
) -> list[dict[str, Any]]:
    n = len(f.steps)
    flags = []
    for k in range(1, n + 1):
        until = f"least(r.t{k + 1}, r.t{k} + {TROUBLE_HORIZON})" if k < n else f"r.t{k} + {TROUBLE_HORIZON}"
        for kind in TROUBLE:
            flags.append(
                f"max(CASE WHEN tr.{kind} = 1 AND tr.ts > r.t{k} AND tr.ts <= {until} THEN 1 ELSE 0 END) AS {kind}{k}"
            )
    horizon_end = datetime.fromtimestamp(spec.end.timestamp() + spec.window_seconds + TROUBLE_HORIZON, UTC)
    text = (
        base.text + f", tr AS (SELECT * FROM {trouble} WHERE ts < ?)"
        f", troubled AS (SELECT r.cid, r.ent, {', '.join(flags)} FROM reached r JOIN tr ON tr.cid = r.cid "
        "GROUP BY r.cid, r.ent)"
    )
    params: list[Any] = [*base.params, horizon_end.timestamp()]
    sums = [f"count(r.t{k}) AS reached{k}" for k in range(1, n + 1)]
    sums += [
        f"(SELECT coalesce(sum({kind}{k}), 0) FROM troubled) AS {kind}{k}"
        for k in range(1, n + 1)
        for kind in TROUBLE
    ]
    sums += [f"(SELECT coalesce(sum(back{k}), 0) FROM {backs}) AS back{k}" for k in range(1, n)]
    row = s.dicts(text + f" SELECT {', '.join(sums)} FROM reached r", params)[0]

    seen: list[Any] = []

    def names() -> list[Any]:  # the evidence, read once and only when a finding shows it
        if not seen:
            seen.append(
                s.rows(
                    text + " SELECT tr.event, tr.channel, count(DISTINCT r.cid) FROM reached r "
                    "JOIN tr ON tr.cid = r.cid WHERE tr.ts > r.t1 AND tr.ts <= r.t1 + ? "
                    "GROUP BY tr.event, tr.channel ORDER BY 3 DESC, 1, 2 LIMIT 5",
                    [*params, spec.window_seconds + TROUBLE_HORIZON],
                )
            )
        return list(seen[0])

    findings = []
    reached = [int(row[f"reached{k}"] or 0) for k in range(1, n + 1)]
    for kind in TROUBLE:
        findings += _trouble(
            f, kind, reached, [int(row[f"{kind}{k}"] or 0) for k in range(1, n + 1)], names, cfg
        )
    findings += _loops(f, reached, [int(row[f"back{k}"] or 0) for k in range(1, n)], cfg, spec.journey)
    return findings


def _trouble(
    f: FunnelDef,
    kind: str,
    reached: list[int],
    trouble: list[int],
    names: Callable[[], list[Any]],
    cfg: Settings,
) -> list[dict[str, Any]]:
    findings = []
    for k in range(1, len(reached) + 1):
        rest_n = sum(reached) - reached[k - 1]
        rest_x = sum(trouble) - trouble[k - 1]
        if reached[k - 1] < cfg.min_contacts or rest_n < cfg.min_contacts:
            continue
        share, base_share = trouble[k - 1] / reached[k - 1], rest_x / rest_n
        z = tested_z(trouble[k - 1], reached[k - 1], rest_x, rest_n)
        if z >= cfg.min_z and share - base_share >= cfg.min_effect / 2 and share >= 1.5 * base_share:
            findings.append(
                _finding(
                    kind,
                    f,
                    k,
                    z=z,
                    affected=reached[k - 1] * (share - base_share),
                    evidence={
                        "share_with_trouble": round(share, 4),
                        "baseline_share": round(base_share, 4),
                        NOUNS[f.unit]: reached[k - 1],
                        "events_seen": [
                            {"event": e, "channel": c, "contacts": int(m)} for e, c, m in names()
                        ],
                    },
                    facts={"share": share, "baseline": base_share, "step": f.steps[k - 1].label},
                )
            )
    return findings


def is_browsing(condition: Condition, journey: Journey | None) -> bool:
    """Whether a step is browsing: the journey's ``signals.browsing``, else page and screen views
    and events named like a view, a search or a list (any case, English or Italian)."""
    declared = journey.signals.browsing if journey is not None and journey.signals is not None else None
    if declared is not None:
        return condition in declared
    kinds = [condition.type] if isinstance(condition.type, str) else list(condition.type or [])
    if kinds and all(k in ("page", "screen") for k in kinds):
        return True
    names = [condition.event] if isinstance(condition.event, str) else list(condition.event or [])
    return bool(names) and all(BROWSING.search(name) for name in names)


BROWSING = re.compile(r"view|visualizz|search|cerca|ricerc|brows|list|catalog", re.IGNORECASE)


def _loops(
    f: FunnelDef, reached: list[int], back: list[int], cfg: Settings, journey: Journey | None = None
) -> list[dict[str, Any]]:
    findings = []
    n = len(reached)
    # Going back to browsing (viewing products, reading pages) is how people shop, not friction:
    # loops back to a browsing step are neither reported nor part of the baseline.
    looked = [k for k in range(1, n) if not is_browsing(f.steps[k - 1].condition, journey)]
    for k in looked:
        moved = reached[k]
        rest_n = sum(reached[j] for j in looked) - moved
        rest_x = sum(back[j - 1] for j in looked) - back[k - 1]
        if moved < cfg.min_contacts:
            continue
        share = back[k - 1] / moved
        base_share = rest_x / rest_n if rest_n else 0.0
        z = (
            tested_z(back[k - 1], moved, rest_x, rest_n)
            if rest_n >= cfg.min_contacts
            else _z_vs(share, moved, 0.01)
        )
        if z >= cfg.min_z and share - base_share >= cfg.min_effect:
            findings.append(
                _finding(
                    "loop",
                    f,
                    k,
                    z=z,
                    affected=moved * (share - base_share),
                    evidence={
                        "share_going_back": round(share, 4),
                        "baseline_share": round(base_share, 4),
                        NOUNS[f.unit]: moved,
                    },
                    facts={"share": share, "step": f.steps[k - 1].label, "next": f.steps[k].label},
                )
            )
    return findings


def _false_discoveries_out(findings: list[dict[str, Any]], tested: int, fdr: float) -> list[dict[str, Any]]:
    """Benjamini-Hochberg over every cell the z-tested detectors compared: the findings whose
    p-value passes at ``fdr``. Cells that were tested but are not findings count as p = 1, which
    can only make the threshold stricter."""
    judged = [p for p in findings if p["kind"] in Z_TESTED]
    if not judged:
        return findings
    m = max(tested, len(judged))
    p_values = [p["p_value"] for p in judged] + [1.0] * (m - len(judged))
    keep, _, _, _ = multipletests(p_values, alpha=fdr, method="fdr_bh")
    passed = {id(p) for p, kept in zip(judged, keep, strict=False) if kept}
    return [p for p in findings if p["kind"] not in Z_TESTED or id(p) in passed]


#: every kind judged by a z against its baseline: one family for Benjamini-Hochberg
Z_TESTED = ("dropoff", "slow", "later", "support", "errors", "loop", "score_drop", "frustration")
#: The findings of one segment against the rest, reported over one dimension per step.
SEGMENTED = ("dropoff", "slow", "later", "loop")


def _z_vs(share: float, n: int, expected: float) -> float:
    return (share - expected) / math.sqrt(expected * (1 - expected) / n)
