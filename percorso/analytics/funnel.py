"""Funnels: how many contacts go from step to step within a conversion window.

Semantics (the same on every engine, because it is one SQL text):

* A contact enters the funnel with their **first** step-1 event in the period; each later step
  counts with the first matching event strictly after the previous step, and no later than the
  conversion window after step 1.
* Contacts are counted after identity resolution: an anonymous visitor who identifies between
  steps is one contact and does not drop off.
* A contact who has not reached the next step but whose window is still open (as of ``as_of``)
  is **in progress**, reported apart from those who **dropped**.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from percorso.analytics.sql import EPOCH, RESOLVED_EVENTS, Sql, any_of, condition_sql
from percorso.journey.definition import Condition
from percorso.store import Store
from percorso.store.base import Session

MAX_STEPS = 20
# The platform an event came from, by the tracking library that sent it.
PLATFORM = (
    "CASE WHEN e.library LIKE '%ios%' OR e.library LIKE '%swift%' THEN 'ios' "
    "WHEN e.library LIKE '%android%' OR e.library LIKE '%kotlin%' THEN 'android' "
    "WHEN e.library IN ('analytics.js', 'analytics-next', 'percorso.js') OR e.library LIKE '%browser%' THEN 'web' "
    "ELSE 'other' END"
)
WEEK_OFFSET = 4 * 86_400  # 1970-01-01 was a Thursday; weeks start on Monday
BUCKETS = ((3600, "< 1h"), (6 * 3600, "1-6h"), (86_400, "6-24h"), (3 * 86_400, "1-3d"), (7 * 86_400, "3-7d"))


class FunnelError(ValueError):
    """A funnel that cannot be computed as asked; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Step:
    label: str
    condition: Condition


@dataclass(frozen=True)
class FunnelSpec:
    steps: list[Step]
    start: datetime
    end: datetime
    window_seconds: int = 14 * 86_400
    breakdown: str | None = None  # channel | campaign | platform | property:KEY | trait:KEY
    top: int = 10
    period: str = "week"  # day | week, for the trend
    as_of: datetime | None = None  # when windows are judged open or closed; default now

    def check(self) -> None:
        if not 2 <= len(self.steps) <= MAX_STEPS:
            raise FunnelError("steps", f"a funnel has 2 to {MAX_STEPS} steps, got {len(self.steps)}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise FunnelError("start", "dates need a time zone")
        if self.end <= self.start:
            raise FunnelError("end", "must be after start")
        if self.window_seconds <= 0:
            raise FunnelError("window", "must be positive")
        if (
            self.breakdown is not None
            and self.breakdown not in ("channel", "campaign", "platform")
            and not (
                self.breakdown.startswith(("property:", "trait:"))
                and len(self.breakdown.split(":", 1)[1]) > 0
            )
        ):
            raise FunnelError("breakdown", "one of channel, campaign, platform, property:KEY, trait:KEY")
        if self.period not in ("day", "week"):
            raise FunnelError("period", "day or week")
        if not 1 <= self.top <= 100:
            raise FunnelError("top", "between 1 and 100")


def parse_step(text: str) -> Step:
    """``Order Completed``, ``event:Product *``, ``page:/checkout/*``, ``type:page``,
    ``channel:store``, ``name:Home``; several joined with `` & `` must all hold."""
    parts = [p.strip() for p in text.split(" & ")]
    fields: dict[str, Any] = {}
    for part in parts:
        kind, sep, value = part.partition(":")
        if sep and kind in ("event", "page", "type", "channel", "name"):
            fields[kind] = value.strip()
        elif sep and kind.startswith("property."):
            fields.setdefault("properties", {})[kind.removeprefix("property.")] = value.strip()
        else:
            fields["event"] = part
        if not (fields.get(kind) if sep and kind in fields else True):
            raise FunnelError("steps", f"{text!r}: {kind} needs a value")
    if any(v == "" for v in fields.values()):
        raise FunnelError("steps", f"{text!r}: empty value")
    return Step(text, Condition(**fields))


def _breakdown_expr(session: Session, breakdown: str | None) -> tuple[str, list[Any], bool]:
    """SQL for the breakdown value, its params, and whether it reads contact traits."""
    if breakdown is None:
        return "''", [], False
    if breakdown == "channel":
        return "e.channel", [], False
    if breakdown == "campaign":
        return "e.utm_campaign", [], False
    if breakdown == "platform":
        return PLATFORM, [], False
    kind, key = breakdown.split(":", 1)
    if kind == "property":
        expr, param = session.json_text("e.properties", key)
        return expr, [param], False
    expr, param = session.json_text("c.traits", key)
    return expr, [param], True


def reached_sql(session: Session, spec: FunnelSpec) -> Sql:
    """One row per contact who entered: breakdown value, step-1 time and the time of each later step."""
    n = len(spec.steps)
    flags = [condition_sql(session, s.condition) for s in spec.steps]
    anything = any_of(session, [s.condition for s in spec.steps])
    bd_expr, bd_params, from_traits = _breakdown_expr(session, spec.breakdown)
    start, end = spec.start.timestamp(), spec.end.timestamp()
    params: list[Any] = []
    select_flags = []
    for k, f in enumerate(flags, 1):
        select_flags.append(f"CASE WHEN {f.text} THEN 1 ELSE 0 END AS s{k}")
        params.extend(f.params)
    event_bd = "NULL" if from_traits else f"CASE WHEN {flags[0].text} THEN {bd_expr} END"
    if not from_traits:
        params.extend(flags[0].params + bd_params)
    text = (
        f"WITH ev AS (SELECT i.contact_id AS cid, {EPOCH} AS ts, e.message_id AS mid, "
        f"{', '.join(select_flags)}, {event_bd} AS bd FROM {RESOLVED_EVENTS} "
        f"WHERE e.timestamp >= ? AND e.timestamp < ? AND ({anything.text}))"
    )
    params += [spec.start, datetime.fromtimestamp(end + spec.window_seconds, UTC), *anything.params]
    first_bd = "x.bd"
    trait_join = ""
    if from_traits:
        first_bd = bd_expr
        trait_join = " JOIN contacts c ON c.contact_id = x.cid"
    text += (
        f", f1 AS (SELECT x.cid, x.ts AS t1, {first_bd} AS bd FROM (SELECT cid, ts, bd, "
        "row_number() OVER (PARTITION BY cid ORDER BY ts, mid) AS rn FROM ev WHERE s1 = 1 AND ts >= ? AND ts < ?) x"
        f"{trait_join} WHERE x.rn = 1)"
    )
    params += [*(bd_params if from_traits else []), start, end]
    for k in range(2, n + 1):
        prev = "f1" if k == 2 else f"f{k - 1}"
        text += (
            f", f{k} AS (SELECT p.cid, p.t1, min(ev.ts) AS t{k} FROM {prev} p "
            f"JOIN ev ON ev.cid = p.cid AND ev.s{k} = 1 AND ev.ts > p.t{k - 1} AND ev.ts <= p.t1 + ? "
            "GROUP BY p.cid, p.t1)"
        )
        params.append(spec.window_seconds)
    joins = " ".join(f"LEFT JOIN f{k} ON f{k}.cid = f1.cid" for k in range(2, n + 1))
    times = ", ".join(f"f{k}.t{k}" for k in range(2, n + 1))
    text += f", reached AS (SELECT f1.cid, coalesce(f1.bd, '(none)') AS bd, f1.t1, {times} FROM f1 {joins})"
    return Sql(text, params)


def _as_of(spec: FunnelSpec) -> float:
    return (spec.as_of or datetime.now(UTC)).timestamp()


def funnel(
    store: Store, spec: FunnelSpec, *, trend: bool = True, distribution: bool = True
) -> dict[str, Any]:
    """Counts, conversion, in-progress and dropped contacts, and times between steps, per
    breakdown group (top N by entries, the rest as ``(other)``), with a trend and the
    time-to-convert distribution."""
    spec.check()
    n = len(spec.steps)
    as_of = _as_of(spec)
    with store.session() as s:
        s.tune_for_analytics()
        base = reached_sql(s, spec)
        grouped = (
            base.text + ", sizes AS (SELECT bd, count(*) AS n FROM reached GROUP BY bd), "
            "top_groups AS (SELECT bd FROM sizes ORDER BY n DESC, bd LIMIT ?), "
            "labelled AS (SELECT r.*, CASE WHEN r.bd IN (SELECT bd FROM top_groups) THEN r.bd ELSE '(other)' END AS grp "
            "FROM reached r)"
        )
        aggregates = ["count(*) AS n1"]
        params: list[Any] = [*base.params, spec.top]
        for k in range(2, n + 1):
            aggregates.append(f"count(t{k}) AS n{k}")
            aggregates.append(
                f"percentile_cont(0.5) WITHIN GROUP (ORDER BY t{k} - t{k - 1}) AS median{k}, "
                f"percentile_cont(0.9) WITHIN GROUP (ORDER BY t{k} - t{k - 1}) AS p90_{k}"
            )
            aggregates.append(
                f"sum(CASE WHEN t{k - 1} IS NOT NULL AND t{k} IS NULL AND t1 + ? > ? THEN 1 ELSE 0 END) AS open{k - 1}"
            )
            params += [spec.window_seconds, as_of]
        rows = s.dicts(
            grouped
            + f" SELECT grp, {', '.join(aggregates)} FROM labelled GROUP BY grp ORDER BY n1 DESC, grp",
            params,
        )
        period = 86_400 if spec.period == "day" else 7 * 86_400
        offset = 0 if spec.period == "day" else WEEK_OFFSET
        step_counts = "".join(f", count(t{k})" for k in range(2, n + 1))
        trend_rows: list[Any] = []
        distribution_rows: list[Any] = []
        if trend:
            trend_rows = s.rows(
                base.text + f" SELECT CAST(floor((t1 - ?) / ?) AS BIGINT) AS bucket, count(*), count(t{n}), "
                f"sum(CASE WHEN t{n} IS NULL AND t1 + ? > ? THEN 1 ELSE 0 END), "
                f"sum(CASE WHEN t1 + ? <= ? THEN 1 ELSE 0 END){step_counts} FROM reached GROUP BY 1 ORDER BY 1",
                [*base.params, offset, period, spec.window_seconds, as_of, spec.window_seconds, as_of],
            )
        if distribution:
            cases = " ".join(f"WHEN t{n} - t1 < {limit} THEN {i}" for i, (limit, _) in enumerate(BUCKETS))
            distribution_rows = s.rows(
                base.text + f" SELECT CASE {cases} ELSE {len(BUCKETS)} END AS b, count(*) FROM reached "
                f"WHERE t{n} IS NOT NULL GROUP BY 1 ORDER BY 1",
                base.params,
            )
    groups = [_group(row, spec, n) for row in rows]
    total = _total(groups, n) if spec.breakdown else (groups[0] if groups else _group({"grp": ""}, spec, n))
    window_label = _duration_label(spec.window_seconds)
    return {
        "steps": [s.label for s in spec.steps],
        "period": {"start": spec.start.isoformat(), "end": spec.end.isoformat()},
        "window": window_label,
        "as_of": datetime.fromtimestamp(as_of, UTC).isoformat(),
        "counting": "unique contacts after identity resolution; first entry in the period",
        "total": total,
        "breakdown": {"by": spec.breakdown, "groups": groups} if spec.breakdown else None,
        "trend": [
            {
                "period_start": datetime.fromtimestamp(int(b) * period + offset, UTC).date().isoformat(),
                "entered": int(entered),
                "converted": int(converted),
                "in_progress": int(open_),
                "conversion": _ratio(converted, entered),
                "closed": int(closed),  # entries whose window has ended
                "steps": [int(entered), *(int(c) for c in counts)],
            }
            for b, entered, converted, open_, closed, *counts in trend_rows
        ],
        "time_to_convert": _distribution(dict(distribution_rows), spec.window_seconds)
        if distribution
        else None,
    }


def _group(row: dict[str, Any], spec: FunnelSpec, n: int) -> dict[str, Any]:
    counts = [int(row.get(f"n{k}") or 0) for k in range(1, n + 1)]
    steps = []
    for k in range(1, n + 1):
        step: dict[str, Any] = {"step": k, "label": spec.steps[k - 1].label, "contacts": counts[k - 1]}
        step["conversion_from_previous"] = None if k == 1 else _ratio(counts[k - 1], counts[k - 2])
        step["conversion_from_first"] = _ratio(counts[k - 1], counts[0])
        if k < n:
            open_ = int(row.get(f"open{k}") or 0)
            step["in_progress"] = open_
            step["dropped"] = counts[k - 1] - counts[k] - open_
        if k > 1:
            median, p90 = row.get(f"median{k}"), row.get(f"p90_{k}")
            step["median_seconds_from_previous"] = None if median is None else round(float(median), 1)
            step["p90_seconds_from_previous"] = None if p90 is None else round(float(p90), 1)
        steps.append(step)
    return {"group": row.get("grp") or None, "entered": counts[0], "converted": counts[-1], "steps": steps}


def _total(groups: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Sums of the groups (medians cannot be summed: those come from the unbroken query)."""
    if not groups:
        return {"group": None, "entered": 0, "converted": 0, "steps": []}
    steps = []
    for k in range(n):
        contacts = sum(g["steps"][k]["contacts"] for g in groups)
        step = {"step": k + 1, "label": groups[0]["steps"][k]["label"], "contacts": contacts}
        if k < n - 1:
            step["in_progress"] = sum(g["steps"][k]["in_progress"] for g in groups)
            step["dropped"] = sum(g["steps"][k]["dropped"] for g in groups)
        steps.append(step)
    for k, step in enumerate(steps):
        step["conversion_from_previous"] = (
            None if k == 0 else _ratio(step["contacts"], steps[k - 1]["contacts"])
        )
        step["conversion_from_first"] = _ratio(step["contacts"], steps[0]["contacts"])
    return {
        "group": None,
        "entered": steps[0]["contacts"],
        "converted": steps[-1]["contacts"],
        "steps": steps,
    }


def _distribution(counts: dict[Any, Any], window: int) -> list[dict[str, Any]]:
    labels = [label for _, label in BUCKETS] + [
        f"7d-{_duration_label(window)}" if window > 7 * 86_400 else "≥ 7d"
    ]
    return [{"bucket": label, "contacts": int(counts.get(i, 0))} for i, label in enumerate(labels)]


def _ratio(a: Any, b: Any) -> float | None:
    return round(int(a) / int(b), 4) if b else None


def _duration_label(seconds: int) -> str:
    for unit, size in (("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def dropped_contacts(store: Store, spec: FunnelSpec, step: int, limit: int = 1000) -> list[dict[str, Any]]:
    """Contacts who reached ``step`` but not the next one and whose window has closed — an
    audience for a follow-up."""
    spec.check()
    n = len(spec.steps)
    if not 1 <= step < n:
        raise FunnelError("step", f"between 1 and {n - 1} (the last step has no drop-off)")
    with store.session() as s:
        s.tune_for_analytics()
        base = reached_sql(s, spec)
        step_time = "t1" if step == 1 else f"t{step}"
        return s.dicts(
            base.text + f" SELECT r.cid AS contact_id, {step_time} AS reached_at_epoch, "
            "(SELECT min(value) FROM identities WHERE contact_id = r.cid AND kind = 'email') AS email "
            f"FROM reached r WHERE {step_time} IS NOT NULL AND t{step + 1} IS NULL AND t1 + ? <= ? "
            "ORDER BY r.cid LIMIT ?",
            [*base.params, spec.window_seconds, _as_of(spec), limit],
        )
