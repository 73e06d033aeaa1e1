"""Incidents: a step that converted worse for a run of days, found by a scan over every day.

A funnel's contacts are counted once per period, at their first step-1 event, so trouble that
hits people's later visits is invisible to the contact funnel. This detector counts **visits**
instead: every visit (events of a contact without a gap of :data:`VISIT_GAP`) that reached step
*k* is an attempt at step *k* → *k+1*, on the day it reached step *k*; it converts when step
*k+1* follows within :data:`CONVERT_WITHIN` (or the funnel's window if shorter), or came up to
:data:`OUT_OF_ORDER` seconds before it (an order stamped in the payment's second, or one before).
Attempts too recent to have converted yet are left out.

For every transition, over the whole population and in every segment of every dimension (found
in the data, :func:`candidate_dimensions`), the daily attempts and conversions are scanned for
the run of days whose conversion is lowest against the rest of the period: the maximum binomial
likelihood ratio over every run of :data:`MIN_DAYS` days or more (Kulldorff's temporal scan
statistic with an epidemic alternative: a start and an end). Its significance is the one-sided
likelihood-ratio test, the ratio first divided by the series' overdispersion outside the run
(quasi-binomial: day-to-day noise beyond the binomial's does not count as evidence), times the
number of runs scanned (Bonferroni within the series); the false discovery rate over every series
tested is then controlled with Benjamini-Hochberg (statsmodels). The effect is the difference in
conversion with its 95% interval (Newcombe, statsmodels).

The same run of days found in the whole population and in segments is one incident: it belongs
to a segment when the rest of the population clearly did not share the drop in those days (enough
attempts, and its own drop's 95% interval below half the segment's), and to everyone otherwise.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.special import xlogy
from scipy.stats import chi2
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep

from percorso.analytics.funnel import PLATFORM, Step
from percorso.analytics.sql import CUSTOMER_EVENT, EPOCH, Sql, any_of, condition_sql, subject
from percorso.store.base import Session

VISIT_GAP = 30 * 60
CONVERT_WITHIN = 24 * 3600
OUT_OF_ORDER = 60
MIN_DAYS = 3
MIN_OUTSIDE_DAYS = 7
DAY = 86_400

#: Events read to find the dimensions (the first of the period's funnel events).
SAMPLE = 50_000
#: The dimensions percorso reads itself, beside the properties and traits found in the data.
BUILT_IN = ("platform", "channel", "campaign")


@dataclass(frozen=True)
class Series:
    """Daily attempts and conversions of one transition in one segment (None: everyone)."""

    k: int
    dim: str | None
    value: str | None
    attempts: np.ndarray
    converted: np.ndarray


@dataclass
class Scan:
    series: Series
    llr: float
    first: int  # day offsets, inclusive
    last: int
    p: float
    dispersion: float


def dimension_sql(s: Session, dim: str, traits: str = "c.traits") -> Sql:
    """A segment's value for the event ``e`` (traits from ``traits``, the event's contact's)."""
    if dim == "platform":
        return Sql(PLATFORM)
    if dim == "channel":
        return Sql("e.channel")
    if dim == "campaign":
        return Sql("e.utm_campaign")
    kind, key = dim.split(":", 1)
    column = "e.properties" if kind == "property" else traits
    expr, param = s.json_text(column, key)
    return Sql(expr, [param])


def candidate_dimensions(
    s: Session,
    steps: Sequence[Step],
    start: datetime,
    end: datetime,
    *,
    limit: int = 6,
    max_values: int = 12,
) -> list[str]:
    """The dimensions worth comparing segments over, read from the funnel steps' events of the
    period: built-in fields, event properties and contact traits present on at least a third of
    those events, with 2 to ``max_values`` distinct values (an id, a price or a free text has
    more, a constant fewer). The most present first, at most ``limit``."""
    where = any_of(s, [st.condition for st in steps])
    # A sample is enough to tell a segment field from an id: the first events of the period.
    sample = f"percorso_sample_{uuid.uuid4().hex[:12]}"
    s.execute(
        f"CREATE TEMPORARY TABLE {sample} AS SELECT e.properties, e.channel, e.utm_campaign, e.library, "
        "c.traits FROM (SELECT e.properties, e.channel, e.utm_campaign, e.library, e.identity_id "
        f"FROM events e WHERE e.timestamp >= ? AND e.timestamp < ? AND ({where.text}) LIMIT {SAMPLE}) e "
        "JOIN identities i ON i.identity_id = e.identity_id LEFT JOIN contacts c ON c.contact_id = i.contact_id",
        [start, end, *where.params],
    )
    try:
        total = int(s.rows(f"SELECT count(*) FROM {sample}")[0][0] or 0)
        if not total:
            return []
        candidates: list[tuple[str, int]] = []
        for kind, column in (("property", "e.properties"), ("trait", "e.traits")):
            keys = s.rows(
                f"SELECT k, count(*) FROM (SELECT {s.json_keys(column)} AS k FROM {sample} e) x "
                "GROUP BY k ORDER BY 2 DESC, 1 LIMIT 40"
            )
            candidates += [(f"{kind}:{k}", int(n)) for k, n in keys if k and int(n) * 3 >= total]
        dims = [*BUILT_IN, *(d for d, _ in candidates)]
        exprs = [dimension_sql(s, d, traits="e.traits") for d in dims]
        counted = ", ".join(f"count(DISTINCT {x.text}), count({x.text})" for x in exprs)
        row = s.rows(f"SELECT {counted} FROM {sample} e", [p for x in exprs for p in (*x.params, *x.params)])[
            0
        ]
    finally:
        s.execute(f"DROP TABLE {sample}")
    kept = []
    for i, dim in enumerate(dims):
        distinct, present = int(row[2 * i] or 0), int(row[2 * i + 1] or 0)
        if 2 <= distinct <= max_values and present * 3 >= total:
            kept.append((present, i, dim))
    kept.sort(key=lambda t: (-t[0], t[1]))  # the most present; on a tie, built-in fields first
    return [d for _, _, d in kept[:limit]]


def daily_series(
    s: Session,
    journey_subject: str,
    steps: Sequence[Step],
    window_seconds: int,
    dims: Sequence[str],
    start: datetime,
    end: datetime,
    as_of: datetime,
    contacts: Sql | None = None,
) -> tuple[int, list[Series], dict[int, tuple[int, int]]]:
    """Per transition and segment, the attempts and conversions of each day of ``[start, end)``
    (days too recent for an attempt to have converted are cut); returns the first day's number
    (days since 1970-01-01), the series, and per transition the converted visits and how many of
    them converted only by events stamped in the step's second or before it."""
    within = min(window_seconds, CONVERT_WITHIN)
    last_closed = min(end, as_of - timedelta(seconds=within))
    day0 = int(start.timestamp() // DAY)
    days = max(0, math.ceil(last_closed.timestamp() / DAY) - day0)
    if days <= 0 or len(steps) < 2:
        return day0, [], {}
    who = subject(journey_subject)
    n = len(steps)
    flags = [condition_sql(s, st.condition) for st in steps]
    dim_sql = [dimension_sql(s, d) for d in dims]
    needs_traits = any(d.startswith("trait:") for d in dims)
    step_filter = any_of(s, [st.condition for st in steps])
    columns = ", ".join(
        [f"CASE WHEN {f.text} THEN 1 ELSE 0 END AS s{j + 1}" for j, f in enumerate(flags)]
        # segments are read from the steps' events only
        + [
            f"CASE WHEN {step_filter.text} THEN CAST({d.text} AS TEXT) END AS d{j}"
            for j, d in enumerate(dim_sql)
        ]
    )
    params: list[Any] = [
        *(p for f in flags for p in f.params),
        *(p for d in dim_sql for p in (*step_filter.params, *d.params)),
    ]
    source = who.events + (" LEFT JOIN contacts c ON c.contact_id = i.contact_id" if needs_traits else "")
    # Events of the contacts who took a step, from a visit gap before the period to the last
    # conversion window after it.
    read_from = start - timedelta(seconds=VISIT_GAP)
    read_to = last_closed + timedelta(seconds=within + OUT_OF_ORDER)
    # m: the last time of the next step within the tolerance before or the window after. Taken
    # at all, the attempt converted; later than the step, an ordered funnel counts it too (to tell
    # when same-second and out-of-order events starve an ordered funnel).
    nexts = ", ".join(
        f"max(CASE WHEN s{k + 1} = 1 THEN ts END) OVER (PARTITION BY cid ORDER BY ts RANGE BETWEEN "
        f"{OUT_OF_ORDER} PRECEDING AND {within} FOLLOWING) AS m{k}"
        for k in range(1, n)
    )
    dim_names = "".join(f", d{j}" for j in range(len(dims)))
    # One row per visit: when it first reached each step, whether any of its attempts at the step
    # converted, and the segment its attempts were made in (the least value if they differ).
    per_visit = ", ".join(
        f"min(CASE WHEN s{k} = 1 THEN ts END) AS t{k}, "
        f"max(CASE WHEN s{k} = 1 AND m{k} IS NOT NULL THEN 1 ELSE 0 END) AS c{k}, "
        f"max(CASE WHEN s{k} = 1 AND m{k} > ts THEN 1 ELSE 0 END) AS a{k}"
        + "".join(f", min(CASE WHEN s{k} = 1 THEN d{j} END) AS d{j}_{k}" for j in range(len(dims)))
        for k in range(1, n)
    )
    picks = " UNION ALL ".join(
        f"SELECT {k} AS k, t{k} AS ts, c{k} AS conv, a{k} AS after"
        + "".join(f", d{j}_{k} AS d{j}" for j in range(len(dims)))
        + f" FROM per_visit WHERE t{k} IS NOT NULL"
        for k in range(1, n)
    )
    any_step = " OR ".join(f"s{k} = 1" for k in range(1, n + 1))
    only = f" AND i.contact_id IN ({contacts.text})" if contacts is not None else ""
    name = f"percorso_attempts_{uuid.uuid4().hex[:12]}"
    s.execute(
        f"CREATE TEMPORARY TABLE {name} AS "
        f"WITH ev AS (SELECT {who.key} AS cid, {EPOCH} AS ts, {columns} "
        f"FROM {source} WHERE e.timestamp >= ? AND e.timestamp < ? AND {CUSTOMER_EVENT} "
        f"AND {who.key} IN (SELECT {who.key} FROM {who.events} WHERE e.timestamp >= ? AND e.timestamp < ? "
        f"AND ({step_filter.text})){only}), "
        # One order for every window (events of one second fall in one visit whatever their order).
        "marked AS (SELECT ev.*, CASE WHEN ts - lag(ts) OVER (PARTITION BY cid ORDER BY ts) "
        f"<= {VISIT_GAP} THEN 0 ELSE 1 END AS new_visit FROM ev), "
        "numbered AS (SELECT marked.*, sum(new_visit) OVER (PARTITION BY cid ORDER BY ts "
        "ROWS UNBOUNDED PRECEDING) AS vid FROM marked), "
        # Only the steps' own events matter from here: the next step is looked for among them
        # (every other event only served to cut the visits).
        f"visits AS (SELECT numbered.*, {nexts} FROM numbered WHERE {any_step}), "
        f"per_visit AS (SELECT {per_visit} FROM visits GROUP BY cid, vid) "
        f"SELECT k, CAST(floor(ts / {DAY}) AS INTEGER) - ? AS day, conv, after{dim_names} "
        f"FROM ({picks}) a WHERE ts >= ? AND ts < ?",
        [
            *params,
            read_from,
            read_to,
            start,
            last_closed,
            *step_filter.params,
            *(contacts.params if contacts is not None else []),
            day0,
            start.timestamp(),
            last_closed.timestamp(),
        ],
    )
    try:
        early = {
            int(k): (int(conv or 0), int(only or 0))
            for k, conv, only in s.rows(
                f"SELECT k, sum(conv), sum(CASE WHEN conv = 1 AND coalesce(after, 0) = 0 THEN 1 ELSE 0 END) "
                f"FROM {name} GROUP BY k"
            )
        }
        out: list[Series] = []
        groups = [(None, None)] + [(dims[j], f"d{j}") for j in range(len(dims))]
        for dim, column in groups:
            key = f", {column}" if column else ""
            rows = s.rows(
                f"SELECT k{key}, day, count(*), sum(conv) FROM {name} GROUP BY k{key}, day",
                [],
            )
            cells: dict[tuple[int, str | None], tuple[np.ndarray, np.ndarray]] = {}
            for row in rows:
                k = int(row[0])
                value = str(row[1]) if column else None
                if column and row[1] is None:
                    continue
                day, count, conv = int(row[-3]), int(row[-2]), int(row[-1] or 0)
                if not 0 <= day < days:
                    continue
                a, c = cells.setdefault((k, value), (np.zeros(days), np.zeros(days)))
                a[day] += count
                c[day] += conv
            for (k, value), (a, c) in sorted(cells.items(), key=lambda t: (t[0][0], str(t[0][1]))):
                out.append(Series(k, dim, value, a, c))
    finally:
        s.execute(f"DROP TABLE {name}")
    return day0, out, early


@lru_cache(maxsize=16)
def _runs(days: int, min_days: int) -> tuple[Any, Any]:
    """Every run of days a scan compares with the rest: first and last day offsets (inclusive),
    at least ``min_days`` long and leaving :data:`MIN_OUTSIDE_DAYS` outside."""
    first, last = np.triu_indices(days)
    length = last - first + 1
    keep = (length >= min_days) & (days - length >= MIN_OUTSIDE_DAYS)
    return first[keep], last[keep]


def _ll(k: Any, m: Any, p: Any) -> Any:
    return xlogy(k, p) + xlogy(m - k, 1 - p)


def scan(series: Series, min_days: int = MIN_DAYS) -> Scan | None:
    """The run of days with the lowest conversion against the rest (see the module's text)."""
    n, x = series.attempts, series.converted
    days = len(n)
    if days < min_days + MIN_OUTSIDE_DAYS or n.sum() == 0:
        return None
    first, last = _runs(days, min_days)
    runs = len(first)
    cn = np.concatenate([[0.0], np.cumsum(n)])
    cx = np.concatenate([[0.0], np.cumsum(x)])
    n_in = cn[last + 1] - cn[first]
    x_in = cx[last + 1] - cx[first]
    n_all, x_all = float(cn[-1]), float(cx[-1])
    n_out, x_out = n_all - n_in, x_all - x_in
    # Only runs that converted worse than the rest can be the incident: the likelihood is
    # computed for those alone (usually under half of them).
    lower = (n_in > 0) & (n_out > 0) & (x_in * n_out < x_out * n_in)
    if not lower.any():
        return None
    first, last = first[lower], last[lower]
    n_in, x_in, n_out, x_out = n_in[lower], x_in[lower], n_out[lower], x_out[lower]
    p_in, p_out = x_in / n_in, x_out / n_out
    llr = _ll(x_in, n_in, p_in) + _ll(x_out, n_out, p_out) - _ll(x_all, n_all, x_all / n_all)
    best = int(np.argmax(llr))
    a, b = int(first[best]), int(last[best])
    if llr[best] <= 0:
        return None
    # Overdispersion outside the run: Pearson's chi-square of the days against the outside rate.
    outside = np.ones(days, dtype=bool)
    outside[a : b + 1] = False
    rate = float(p_out[best])
    seen = outside & (n > 0)
    dispersion = 1.0
    if 0 < rate < 1 and seen.sum() > 1:
        pearson = ((x[seen] - n[seen] * rate) ** 2 / (n[seen] * rate * (1 - rate))).sum()
        dispersion = max(1.0, float(pearson) / (int(seen.sum()) - 1))
    statistic = 2 * float(llr[best]) / dispersion
    p = min(1.0, float(chi2.sf(statistic, 1)) / 2 * runs)
    return Scan(series, float(llr[best]), a, b, p, dispersion)


def run_counts(series: Series, a: int, b: int) -> tuple[int, int, int, int]:
    """(attempts, conversions) in days ``a..b``, then in the rest of the series."""
    n, x = series.attempts, series.converted
    n_in, x_in = int(n[a : b + 1].sum()), int(x[a : b + 1].sum())
    return n_in, x_in, int(n.sum()) - n_in, int(x.sum()) - x_in


def _difference(series: Series, a: int, b: int) -> float:
    n_in, x_in, n_out, x_out = run_counts(series, a, b)
    return x_out / n_out - x_in / n_in if n_in and n_out else 0.0


def _spared(rest: Series, a: int, b: int, segment_drop: float, min_attempts: int) -> bool:
    """Whether the rest of the population clearly did not share a segment's drop in days a..b:
    enough attempts, and the upper end of the 95% interval of its own drop under half the
    segment's. A rest too small to tell leaves the incident to everyone."""
    n_in, x_in, n_out, x_out = run_counts(rest, a, b)
    if n_in < min_attempts or n_out < min_attempts:
        return False
    _, high = confint_proportions_2indep(x_out, n_out, x_in, n_in, method="newcomb", compare="diff")
    return bool(high < segment_drop / 2)


def _overlap(a: Scan, b: Scan) -> bool:
    shared = min(a.last, b.last) - max(a.first, b.first) + 1
    return shared * 2 >= min(a.last - a.first + 1, b.last - b.first + 1)


def find_incidents(
    series: list[Series],
    *,
    fdr: float,
    min_effect: float,
    min_attempts: int,
) -> tuple[list[Scan], int]:
    """The incidents among ``series``, one per run of days and step (see the module's text);
    returns them and how many series were tested."""
    # A series with fewer attempts than a run needs cannot hold an incident: not scanned (p = 1).
    scans = [sc for sr in series if sr.attempts.sum() >= min_attempts and (sc := scan(sr)) is not None]
    tested = len(series)
    if not scans:
        return [], tested
    # Benjamini-Hochberg over every series tested (a series with no run has p = 1).
    p_values = [sc.p for sc in scans] + [1.0] * (tested - len(scans))
    keep, _, _, _ = multipletests(p_values, alpha=fdr, method="fdr_bh")
    candidates = []
    for sc, kept in zip(scans, keep[: len(scans)], strict=True):
        n_in, x_in, n_out, x_out = run_counts(sc.series, sc.first, sc.last)
        if kept and n_in >= min_attempts and x_out / n_out - x_in / n_in >= min_effect:
            candidates.append(sc)
    candidates.sort(key=lambda sc: -sc.llr)
    by_key = {(sr.k, sr.dim, sr.value): sr for sr in series}
    accepted: list[Scan] = []
    for sc in candidates:
        if any(o.series.k == sc.series.k and _overlap(o, sc) for o in accepted):
            continue  # the same incident seen in another segment
        chosen = sc
        if sc.series.dim is None:
            # Everyone's dip, or one segment's? A segment's when the rest did not drop.
            for other in candidates:
                sr = other.series
                if sr.k != sc.series.k or sr.dim is None or not _overlap(other, sc):
                    continue
                whole = by_key[(sr.k, None, None)]
                rest = Series(
                    sr.k, sr.dim, None, whole.attempts - sr.attempts, whole.converted - sr.converted
                )
                drop = _difference(sr, other.first, other.last)
                if _spared(rest, other.first, other.last, drop, min_attempts):
                    chosen = other
                    break
        accepted.append(chosen)
    return accepted, tested


def day_of(day0: int, offset: int) -> date:
    return datetime.fromtimestamp((day0 + offset) * DAY, UTC).date()
