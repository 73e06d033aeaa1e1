"""Retention cohorts: of the contacts who started in a period, how many came back in each later one.

Semantics (one SQL text, the same on every engine):

* A contact's **start** is their first event matching the start condition — ever, not only in the
  report's range — after identity resolution (so an anonymous first visit counts as the contact's
  first sighting). With no start condition it is their first event of any kind (**first seen**);
  with ``Order Completed`` it is their **first purchase**.
* Periods are calendar periods in UTC: days, weeks starting on Monday, or months. A contact
  belongs to the **cohort** of the period holding their start; the report covers the cohorts of
  every period that overlaps ``[start, end)``.
* The contact **returned in period N** (N = 0 is the cohort's own period, N = 1 the next, …)
  when they did a return event strictly after their start event during that period. With no
  return condition any event the contact made counts — not the events percorso records for its
  own actions (an automation's ``Email Sent``).
* A period that has not begun yet (as of ``as_of``) has no figure (``null``); the current period
  is still filling up. The average weighs each cohort by its size, over the cohorts where the
  period has begun.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from percorso.analytics.funnel import WEEK_OFFSET, Step
from percorso.analytics.sql import CUSTOMER_EVENT, RESOLVED_EVENTS, Sql, condition_sql
from percorso.store import Store
from percorso.store.base import Session

PERIODS = ("day", "week", "month")
MAX_PERIODS = 100
MAX_COHORTS = 400


class RetentionError(ValueError):
    """A retention question that cannot be answered as asked; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class RetentionSpec:
    start: datetime
    end: datetime
    period: str = "week"  # day | week | month
    periods: int = 8  # later periods reported after the cohort's own (period 0)
    start_event: Step | None = None  # None: first seen (any event)
    return_event: Step | None = None  # None: any event the contact made
    as_of: datetime | None = None  # periods after this have no figure yet; default now

    def check(self) -> None:
        if self.period not in PERIODS:
            raise RetentionError("period", f"{self.period!r} is not one of {', '.join(PERIODS)}")
        if not 1 <= self.periods <= MAX_PERIODS:
            raise RetentionError("periods", f"between 1 and {MAX_PERIODS}, got {self.periods}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise RetentionError("start", "dates need a time zone")
        if self.end <= self.start:
            raise RetentionError("end", "must be after start")
        first, last = (
            bucket(self.start, self.period),
            bucket(self.end - timedelta(microseconds=1), self.period),
        )
        if last - first + 1 > MAX_COHORTS:
            raise RetentionError(
                "start",
                f"{last - first + 1} {self.period} cohorts asked, at most {MAX_COHORTS}: "
                "shorten the range or use a longer period",
            )


def bucket(moment: datetime, period: str) -> int:
    """The index of the calendar period holding ``moment`` (UTC); the SQL twin is :func:`bucket_sql`."""
    moment = moment.astimezone(UTC)
    if period == "month":
        return moment.year * 12 + moment.month - 1
    seconds = moment.timestamp()
    if period == "day":
        return int(seconds // 86_400)
    return int((seconds - WEEK_OFFSET) // (7 * 86_400))


def period_start(index: int, period: str) -> datetime:
    if period == "month":
        return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    if period == "day":
        return datetime.fromtimestamp(index * 86_400, UTC)
    return datetime.fromtimestamp(index * 7 * 86_400 + WEEK_OFFSET, UTC)


def bucket_sql(column: str, period: str) -> str:
    """SQL for the period index of the timestamp ``column`` (sessions run in UTC on both engines)."""
    if period == "month":
        return f"(CAST(extract(year FROM {column}) AS BIGINT) * 12 + CAST(extract(month FROM {column}) AS BIGINT) - 1)"
    epoch = f"CAST(extract(epoch FROM {column}) AS DOUBLE PRECISION)"
    if period == "day":
        return f"CAST(floor({epoch} / 86400) AS BIGINT)"
    return f"CAST(floor(({epoch} - {WEEK_OFFSET}) / {7 * 86_400}) AS BIGINT)"


def default_range(period: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last 30 days, 12 weeks or 12 months, ending now."""
    end = now or datetime.now(UTC)
    span = {"day": timedelta(days=30), "week": timedelta(weeks=12), "month": timedelta(days=365)}
    return end - span.get(period, timedelta(weeks=12)), end


def _event_filter(session: Session, step: Step | None) -> Sql:
    return Sql(CUSTOMER_EVENT) if step is None else condition_sql(session, step.condition)


def retention(store: Store, spec: RetentionSpec) -> dict[str, Any]:
    """Cohorts by start period, each with how many of its contacts came back in periods 0..N.

    >>> retention(store, RetentionSpec(start, end, period="month", periods=6,
    ...                                start_event=parse_step("Order Completed"),
    ...                                return_event=parse_step("Order Completed")))  # doctest: +SKIP
    """
    spec.check()
    as_of = spec.as_of or datetime.now(UTC)
    first = bucket(spec.start, spec.period)
    last = bucket(spec.end - timedelta(microseconds=1), spec.period)
    cohorts_from, cohorts_to = period_start(first, spec.period), period_start(last + 1, spec.period)
    returns_to = period_start(last + spec.periods + 1, spec.period)
    with store.session() as s:
        s.tune_for_analytics()
        starts = _event_filter(s, spec.start_event)
        returns = _event_filter(s, spec.return_event)
        ts_bucket = bucket_sql("e.timestamp", spec.period)
        rows = s.rows(
            f"WITH firsts AS (SELECT i.contact_id AS cid, min(e.timestamp) AS first_at FROM {RESOLVED_EVENTS} "
            f"WHERE ({starts.text}) AND e.timestamp < ? GROUP BY i.contact_id), "
            f"cohort AS (SELECT cid, first_at, {bucket_sql('first_at', spec.period)} AS c FROM firsts "
            "WHERE first_at >= ?), "
            f"back AS (SELECT c.c, {ts_bucket} - c.c AS n, count(DISTINCT c.cid) AS contacts FROM cohort c "
            "JOIN identities i ON i.contact_id = c.cid JOIN events e ON e.identity_id = i.identity_id "
            f"WHERE ({returns.text}) AND e.timestamp > c.first_at AND e.timestamp >= ? AND e.timestamp < ? "
            "GROUP BY 1, 2) "
            "SELECT c, -1 AS n, count(*) FROM cohort GROUP BY c "
            "UNION ALL SELECT c, n, contacts FROM back WHERE n <= ? ORDER BY 1, 2",
            [
                *starts.params,
                cohorts_to,
                cohorts_from,
                *returns.params,
                cohorts_from,
                returns_to,
                spec.periods,
            ],
        )
    sizes: dict[int, int] = {}
    returned: dict[tuple[int, int], int] = {}
    for c, n, count in rows:
        if int(n) < 0:
            sizes[int(c)] = int(count)
        else:
            returned[(int(c), int(n))] = int(count)
    current = bucket(as_of, spec.period)
    cohorts = []
    totals = [[0, 0] for _ in range(spec.periods + 1)]  # [contacts where observable, returned]
    for c in range(first, last + 1):
        size = sizes.get(c, 0)
        counts: list[int | None] = []
        rates: list[float | None] = []
        for n in range(spec.periods + 1):
            if c + n > current:
                counts.append(None)
                rates.append(None)
                continue
            x = returned.get((c, n), 0)
            counts.append(x)
            rates.append(_ratio(x, size))
            totals[n][0] += size
            totals[n][1] += x
        cohorts.append(
            {
                "cohort": period_start(c, spec.period).date().isoformat(),
                "contacts": size,
                "returned": counts,
                "retention": rates,
            }
        )
    return {
        "period": spec.period,
        "periods": spec.periods,
        "start_event": spec.start_event.label if spec.start_event else None,
        "return_event": spec.return_event.label if spec.return_event else None,
        "range": {"start": cohorts_from.isoformat(), "end": cohorts_to.isoformat()},
        "as_of": as_of.isoformat(),
        "counting": "unique contacts after identity resolution; cohort = the calendar period of the "
        "contact's first start event ever; period N = returned (a return event after the start) "
        "in the N-th period after the cohort's, 0 being its own; null = not begun yet",
        "cohorts": cohorts,
        "average": [
            {"period": n, "contacts": eligible, "returned": x, "retention": _ratio(x, eligible)}
            for n, (eligible, x) in enumerate(totals)
        ],
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None
