"""Attribution: which channels and campaigns earn the conversions along the journey.

A **touch** is a visit: a contact's events (after identity resolution) without a pause longer
than ``visit_gap`` (30 minutes); it carries the channel, campaign, source or medium of its first
event. A conversion's **path** is the contact's touches that began within ``lookback`` before it
(30 days) and after the contact's previous conversion; the visit the conversion happened in is
always on it. The contacts' touches after their last conversion in the period form the paths
that did **not** convert, which the Markov model needs.

Models (each splits every conversion, and its revenue, among the touches of its path):

``first_touch``     all to the first touch;
``last_touch``      all to the last;
``linear``          equally among the touches;
``time_decay``      by 2^(-age / half-life), age = time from the touch to the conversion (7 days);
``position_based``  40% to the first, 40% to the last, 20% shared by the ones between (one touch:
                    all of it; two: half each);
``markov``          the removal effect in a first-order Markov chain over every path, converting
                    or not (start → touches → conversion or null): how much the probability of
                    converting falls when the channel is taken out, shared in proportion;
``shapley``         the Shapley value of the game whose coalitions are sets of channels and whose
                    worth is the conversions of the paths whose channels all belong to the set.

The counting is SQL inside the store (the same text on both engines); the models are small
arithmetic over the paths, done here.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations, pairwise
from typing import Any

import numpy as np

from percorso.analytics.sql import CUSTOMER_EVENT, EPOCH, RESOLVED_EVENTS, Sql, condition_sql
from percorso.journey.definition import Condition
from percorso.store import Store

MODELS = ("first_touch", "last_touch", "linear", "time_decay", "position_based", "markov", "shapley")
DIMENSIONS = {
    "channel": "e.channel",
    "campaign": "e.utm_campaign",
    "source": "e.utm_source",
    "medium": "e.utm_medium",
}
NONE = "(none)"
OTHER = "(other)"
START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"
#: At most this many values are told apart (the Shapley game has 2^n coalitions); the rest, by
#: touches, are one value, ``(other)``.
MAX_VALUES = 12


class AttributionError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class AttributionSpec:
    conversion: Condition
    start: datetime
    end: datetime
    by: str = "channel"
    lookback_seconds: int = 30 * 86_400
    visit_gap: int = 30 * 60
    half_life_seconds: int = 7 * 86_400
    #: only these contacts (a SELECT of contact ids: a persona, a saved segment)
    contacts: Sql | None = field(default=None, compare=False)

    def check(self) -> None:
        if self.by not in DIMENSIONS:
            raise AttributionError("by", f"{self.by!r} is not one of {', '.join(DIMENSIONS)}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise AttributionError("start", "dates need a time zone")
        if self.end <= self.start:
            raise AttributionError("end", "must be after start")
        for name, value in (
            ("lookback", self.lookback_seconds),
            ("visit_gap", self.visit_gap),
            ("half_life", self.half_life_seconds),
        ):
            if value <= 0:
                raise AttributionError(name, "must be positive")
        try:
            self.start - timedelta(seconds=self.lookback_seconds + self.visit_gap)
        except OverflowError:
            raise AttributionError("lookback", "reaches back past the calendar") from None


@dataclass(frozen=True)
class Path:
    """One conversion's touches, oldest first: (seconds before the conversion, value)."""

    touches: tuple[tuple[float, str], ...]
    revenue: float = 0.0

    @property
    def values(self) -> list[str]:
        return [v for _, v in self.touches]


# -- the models -------------------------------------------------------------------------------


def first_touch(path: Path) -> list[float]:
    return [1.0] + [0.0] * (len(path.touches) - 1)


def last_touch(path: Path) -> list[float]:
    return [0.0] * (len(path.touches) - 1) + [1.0]


def linear(path: Path) -> list[float]:
    return [1.0 / len(path.touches)] * len(path.touches)


def position_based(path: Path) -> list[float]:
    n = len(path.touches)
    if n == 1:
        return [1.0]
    if n == 2:
        return [0.5, 0.5]
    return [0.4] + [0.2 / (n - 2)] * (n - 2) + [0.4]


def time_decay(half_life: float) -> Callable[[Path], list[float]]:
    def weights(path: Path) -> list[float]:
        raw = [2.0 ** (-age / half_life) for age, _ in path.touches]
        total = sum(raw)
        return [w / total for w in raw]

    return weights


def split(
    paths: Sequence[Path], weights: Callable[[Path], list[float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Conversions and revenue credited to each value by a position rule."""
    conversions: dict[str, float] = defaultdict(float)
    revenue: dict[str, float] = defaultdict(float)
    for path in paths:
        for w, value in zip(weights(path), path.values, strict=True):
            conversions[value] += w
            revenue[value] += w * path.revenue
    return dict(conversions), dict(revenue)


def conversion_probability(transitions: dict[tuple[str, str], float], removed: str | None = None) -> float:
    """The probability of reaching ``(conversion)`` from ``(start)`` in the chain of the counted
    ``transitions``; with ``removed``, every step into that state goes to ``(null)`` instead."""
    totals: dict[str, float] = defaultdict(float)
    for (a, _), n in transitions.items():
        totals[a] += n
    states = sorted({a for a, _ in transitions} - {CONVERSION, NULL})
    if START not in states:
        return 0.0
    index = {s: i for i, s in enumerate(states)}
    q = np.zeros((len(states), len(states)))
    r = np.zeros(len(states))
    for (a, b), n in transitions.items():
        if a not in index or a == removed:
            continue
        p = n / totals[a]
        if b == CONVERSION:
            r[index[a]] += p
        elif b in index and b != removed:
            q[index[a], index[b]] += p
    # x = Q x + r: the chance of converting from each transient state
    x = np.linalg.solve(np.eye(len(states)) - q, r)
    return float(x[index[START]])


def removal_effects(transitions: dict[tuple[str, str], float], values: Sequence[str]) -> dict[str, float]:
    """For each value, ``1 - P(conversion without it) / P(conversion)`` (0 when nothing converts)."""
    base = conversion_probability(transitions)
    if base <= 0:
        return {v: 0.0 for v in values}
    return {v: max(0.0, 1.0 - conversion_probability(transitions, v) / base) for v in values}


def path_transitions(paths: Sequence[Sequence[str]], end: str) -> Counter[tuple[str, str]]:
    """The transitions of paths of values, from ``(start)`` to ``end``."""
    out: Counter[tuple[str, str]] = Counter()
    for values in paths:
        chain = [START, *values, end]
        out.update(pairwise(chain))
    return out


def shapley(players: Sequence[str], worth: Callable[[frozenset[str]], float]) -> dict[str, float]:
    """The Shapley value of each player: the average, over every order in which the coalition
    can form, of what the player adds to the worth of those before it."""
    n = len(players)
    weight = [math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)]
    cache: dict[frozenset[str], float] = {}

    def v(s: frozenset[str]) -> float:
        if s not in cache:
            cache[s] = worth(s)
        return cache[s]

    out = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for k in range(n):
            for coalition in combinations(others, k):
                s = frozenset(coalition)
                total += weight[k] * (v(s | {p}) - v(s))
        out[p] = total
    return out


def coalition_worth(paths: Sequence[Path], of: str = "conversions") -> Callable[[frozenset[str]], float]:
    """The worth of a set of values: the conversions (or revenue) of the paths whose values all
    belong to it."""
    sets: dict[frozenset[str], float] = defaultdict(float)
    for path in paths:
        sets[frozenset(path.values)] += 1.0 if of == "conversions" else path.revenue
    return lambda s: sum(w for members, w in sets.items() if members <= s)


def models(
    paths: Sequence[Path], not_converting: dict[tuple[str, str], float], half_life: float
) -> dict[str, dict[str, dict[str, float]]]:
    """Every model's credit: model → ``conversions``/``revenue`` → value → credit."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, rule in (
        ("first_touch", first_touch),
        ("last_touch", last_touch),
        ("linear", linear),
        ("time_decay", time_decay(half_life)),
        ("position_based", position_based),
    ):
        conversions, revenue = split(paths, rule)
        out[name] = {"conversions": conversions, "revenue": revenue}
    values = sorted(touch_counts(paths, Counter(not_converting)))
    transitions: dict[tuple[str, str], float] = dict(path_transitions([p.values for p in paths], CONVERSION))
    for pair, n in not_converting.items():
        transitions[pair] = transitions.get(pair, 0.0) + n
    effects = removal_effects(transitions, values)
    total_effect = sum(effects.values())
    total_conversions, total_revenue = float(len(paths)), sum(p.revenue for p in paths)
    out["markov"] = {
        "conversions": {
            v: total_conversions * e / total_effect if total_effect else 0.0 for v, e in effects.items()
        },
        "revenue": {v: total_revenue * e / total_effect if total_effect else 0.0 for v, e in effects.items()},
        "removal_effect": effects,
    }
    players = sorted({v for p in paths for v in p.values})
    out["shapley"] = {
        "conversions": shapley(players, coalition_worth(paths)),
        "revenue": shapley(players, coalition_worth(paths, "revenue")),
    }
    return out


# -- reading the paths ----------------------------------------------------------------------------


def attribution(store: Store, spec: AttributionSpec) -> dict[str, Any]:
    """Every model's credit per value of ``spec.by``, for the conversions of the period."""
    spec.check()
    with store.session() as s:
        s.tune_for_analytics()
        conv = condition_sql(s, spec.conversion)
        number, number_params = s.json_number("e.properties", "revenue")
        value = f"coalesce(CAST({DIMENSIONS[spec.by]} AS TEXT), '{NONE}')"
        only = f" AND i.contact_id IN ({spec.contacts.text})" if spec.contacts is not None else ""
        only_params = list(spec.contacts.params) if spec.contacts is not None else []
        read_from = spec.start - timedelta(seconds=spec.lookback_seconds + spec.visit_gap)
        # The conversions and the touches are read once, into temporary tables, for both questions.
        name = f"percorso_attribution_{uuid.uuid4().hex[:12]}"
        s.execute(
            f"CREATE TEMPORARY TABLE {name}_conv AS SELECT cid, ts, revenue, "
            "lag(ts) OVER (PARTITION BY cid ORDER BY ts, mid) AS prev, "
            "row_number() OVER (ORDER BY cid, ts, mid) AS n FROM ("
            f"SELECT i.contact_id AS cid, {EPOCH} AS ts, e.message_id AS mid, {number} AS revenue "
            f"FROM {RESOLVED_EVENTS} WHERE ({conv.text}) AND e.timestamp >= ? AND e.timestamp < ?{only}) c",
            [*number_params, *conv.params, spec.start, spec.end, *only_params],
        )
        s.execute(
            f"CREATE TEMPORARY TABLE {name}_touches AS SELECT cid, ts, v FROM ("
            "SELECT cid, ts, v, lag(ts) OVER (PARTITION BY cid ORDER BY ts, mid) AS before FROM ("
            f"SELECT i.contact_id AS cid, {EPOCH} AS ts, e.message_id AS mid, {value} AS v "
            f"FROM {RESOLVED_EVENTS} WHERE e.timestamp >= ? AND e.timestamp < ? AND {CUSTOMER_EVENT}{only}"
            f") ev) marked WHERE before IS NULL OR ts - before > {int(spec.visit_gap)}",
            [read_from, spec.end, *only_params],
        )
        rows = s.rows(
            f"SELECT c.n, c.ts, c.prev, c.revenue, t.ts, t.v FROM {name}_conv c JOIN {name}_touches t "
            "ON t.cid = c.cid AND t.ts <= c.ts AND t.ts >= c.ts - ? ORDER BY c.n, t.ts, t.v",
            [spec.lookback_seconds],
        )
        # The touches after each contact's last conversion (or all, if none) in the period:
        # the paths that did not convert, as counted transitions of their values.
        free = s.rows(
            f"WITH last AS (SELECT cid, max(ts) AS at FROM {name}_conv GROUP BY cid), "
            f"tail AS (SELECT t.cid, t.ts, t.v FROM {name}_touches t LEFT JOIN last l ON l.cid = t.cid "
            "WHERE t.ts >= ? AND (l.at IS NULL OR t.ts > l.at)), "
            "steps AS (SELECT v, lag(v) OVER (PARTITION BY cid ORDER BY ts, v) AS a, "
            "lead(v) OVER (PARTITION BY cid ORDER BY ts, v) AS b FROM tail) "
            "SELECT a, v, b, count(*) FROM steps GROUP BY a, v, b",
            [spec.start.timestamp()],
        )
        s.execute(f"DROP TABLE {name}_touches")  # (on a failure they go with the transaction)
        s.execute(f"DROP TABLE {name}_conv")
    paths = _paths(rows)
    not_converting: Counter[tuple[str, str]] = Counter()
    for a, v, b, n in free:
        if a is None:
            not_converting[(START, v)] += int(n)
        not_converting[(v, NULL if b is None else b)] += int(n)
    # At most MAX_VALUES values are told apart: the rest, by touches, are one value.
    ranked = sorted(touch_counts(paths, not_converting).items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) > MAX_VALUES:
        kept = {v for v, _ in ranked[: MAX_VALUES - 1]}

        def fold(v: str) -> str:
            return v if v in kept or v in (START, NULL) else OTHER

        paths = [Path(tuple((age, fold(v)) for age, v in p.touches), p.revenue) for p in paths]
        folded: Counter[tuple[str, str]] = Counter()
        for (a, b), n in not_converting.items():
            folded[(fold(a), fold(b))] += n
        not_converting = folded
    credits = models(paths, dict(not_converting), spec.half_life_seconds)
    return _result(spec, paths, not_converting, credits)


def touch_counts(paths: Sequence[Path], not_converting: Counter[tuple[str, str]]) -> Counter[str]:
    """How many touches each value has, on the converting paths and the others (each touch of a
    path that did not convert is the start of one of its counted transitions)."""
    touches: Counter[str] = Counter()
    for p in paths:
        touches.update(p.values)
    for (a, _), n in not_converting.items():
        if a != START:
            touches[a] += n
    return touches


def _paths(rows: Sequence[Sequence[Any]]) -> list[Path]:
    """Rows of (conversion, its time, the contact's previous conversion, revenue, touch time,
    value) as paths: the touches after the previous conversion, or, when there are none, the
    visit the conversion happened in."""
    grouped: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[int(row[0])].append(row)
    out = []
    for n in sorted(grouped):
        group = grouped[n]
        at, prev, revenue = float(group[0][1]), group[0][2], group[0][3]
        touches = [
            (at - float(ts), v) for _, _, _, _, ts, v in group if prev is None or float(ts) > float(prev)
        ]
        if not touches:
            last = max(group, key=lambda r: float(r[4]))
            touches = [(at - float(last[4]), last[5])]
        out.append(Path(tuple(touches), float(revenue) if revenue is not None else 0.0))
    return out


def _result(
    spec: AttributionSpec,
    paths: Sequence[Path],
    not_converting: Counter[tuple[str, str]],
    credits: dict[str, dict[str, dict[str, float]]],
) -> dict[str, Any]:
    touches = touch_counts(paths, not_converting)
    values = sorted(touches, key=lambda v: (-credits["linear"]["conversions"].get(v, 0.0), v))
    has_revenue = any(p.revenue for p in paths)
    rows = []
    for v in values:
        rows.append(
            {
                "value": v,
                "touches": touches[v],
                "conversions": {m: round(credits[m]["conversions"].get(v, 0.0), 4) for m in MODELS},
                "revenue": {m: round(credits[m]["revenue"].get(v, 0.0), 2) for m in MODELS}
                if has_revenue
                else None,
                "removal_effect": round(credits["markov"]["removal_effect"].get(v, 0.0), 4),
            }
        )
    lengths = [len(p.touches) for p in paths]
    return {
        "by": spec.by,
        "period": {"start": spec.start.isoformat(), "end": spec.end.isoformat()},
        "lookback_days": round(spec.lookback_seconds / 86_400, 2),
        "half_life_days": round(spec.half_life_seconds / 86_400, 2),
        "models": list(MODELS),
        "conversions": len(paths),
        "revenue": round(sum(p.revenue for p in paths), 2) if has_revenue else None,
        "touches_per_conversion": round(sum(lengths) / len(lengths), 2) if lengths else None,
        "paths_not_converting": sum(n for (a, _), n in not_converting.items() if a == START),
        "values": rows,
    }
