"""The period every surface reads by default, and how a day given as a period's end is read.

One convention for the dashboard, its JSON twins, the HTTP API and the CLI, so the same question
gets the same number everywhere: periods are whole UTC days, the last one included; by default
the 182 days before today and today itself (26 weeks and a day).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

DEFAULT_DAYS = 182


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def default_period(now: datetime | None = None) -> tuple[datetime, datetime]:
    """``[start, end)``: from midnight 182 days before today to the midnight after today.

    >>> [d.isoformat() for d in default_period(datetime(2026, 12, 7, 15, 30, tzinfo=UTC))]
    ['2026-06-08T00:00:00+00:00', '2026-12-08T00:00:00+00:00']
    """
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return midnight(today - timedelta(days=DEFAULT_DAYS)), midnight(today + timedelta(days=1))
